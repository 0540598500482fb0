"""The reassignment.csv file: its columns, and reading and atomically rewriting its rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from natkit import files

FILENAME = "reassignment.csv"
COLUMNS = ("epoch", "batches", "changed", "cost_before", "cost_after", "loss")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a reassignment.csv as dicts of strings; [] when the file does not exist."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        # a row cut short (a file written by something else, or edited) is dropped, not fatal
        if all(row.get(column) not in (None, "") for column in COLUMNS):
            rows.append({column: row[column] for column in COLUMNS})
    return rows


def write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    """Replace ``path`` with a header and ``rows``, atomically: readers see the old or the new file."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # natkit's writer: its temporary file, orphaned by a kill, is one natkit's resume deletes
    files.write_text(path, buffer.getvalue())
