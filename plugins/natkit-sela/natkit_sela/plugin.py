"""The natkit entry point of natkit-sela: registers the ``sela`` method."""

from __future__ import annotations

from typing import Any

import natkit


@natkit.hookimpl
def register_methods(register: Any) -> None:
    """Add ``sela`` to natkit's method registry."""
    # imported here so that listing other kinds never pays for importing POT
    from natkit_sela.method import SelfLabelling

    register("sela", SelfLabelling)
