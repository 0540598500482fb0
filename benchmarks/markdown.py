"""Numbers and tables as the benchmark reports print them."""

from __future__ import annotations


def ms(seconds: float) -> str:
    """Milliseconds with about three significant digits."""
    value = seconds * 1e3
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def size(n: float) -> str:
    """Bytes in decimal units, as DESIGN.md quotes them (10.5 GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:,.0f} {unit}"
    return f"{n:.0f} B"


def ratio(value: float | None) -> str:
    """A time ratio such as 0.44× or 2,634×."""
    if value is None:
        return "-"
    return f"{value:.2g}×" if value < 10 else f"{value:,.0f}×"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]
