"""metrics.jsonl: a run's step and epoch records, appended by rank 0 and cut back on a resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from natkit import files
from natkit.checkpoint import read_metrics


class MetricsLog:
    """Appends one JSON record a line to ``path``, flushed at once; ``None`` writes nowhere."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: TextIO | None = None

    def __enter__(self) -> MetricsLog:
        if self.path is not None:
            self._file = open(self.path, "a")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``; a reader (or a kill) sees whole lines only, bar the last."""
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint at ``step``: the resumed run writes them again."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    files.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
