"""User-facing errors: each one is a single line, and the CLI exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NatkitError(Exception):
    """A mistake in what the user asked for (not a bug): one line, exit code 2."""

    exit_code = 2
    prefix = "error: "  # how the CLI starts the line


class ConfigError(NatkitError, ValueError):
    """A configuration key or value is invalid."""


class UnknownComponentError(NatkitError, LookupError):
    """A component name is not in its registry."""


class DataError(NatkitError):
    """A dataset root, file or split is missing or unreadable."""


class CheckpointError(NatkitError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""


class OutputError(NatkitError):
    """A file natkit must write could not be written (full disk, read-only place, bad path)."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option  # the command-line option the message already names, if any


class TrainingDiverged(NatkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


class Interrupted(NatkitError):
    """Ctrl-C stopped the work at once; the message says what was kept and how to go on."""

    exit_code = 130
    prefix = ""  # the line starts with "interrupted:", not "error:"


class InputError(NatkitError, ValueError):
    """Tensors given to a natkit function that do not fit it (e.g. NATObjective's features)."""


class SolverError(NatkitError):
    """An assignment solver returned something that is not a permutation of its batch."""


class PluginError(NatkitError):
    """A plugin broke a rule of the plugin API (e.g. registered a name twice)."""


# Echoed user text is cut to this many characters, so that an error stays one short line.
ECHO_LIMIT = 80
# A message line is cut to this many characters, whatever it echoes.
LINE_LIMIT = 1000


def clip(text: object, limit: int = ECHO_LIMIT) -> str:
    """User text for a one-line message: control characters escaped, cut to ``limit`` characters."""
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit - 20]}... ({len(text):,} characters)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """A message as one line of at most ``limit`` characters (its middle elided if longer)."""
    line = " ".join(message.split())
    if len(line) <= limit:
        return line
    half = (limit - 5) // 2
    return f"{line[:half]} ... {line[-half:]}"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    choices = list(choices)
    if len(name) > 2 * max((len(c) for c in choices), default=0) + 10:
        return ""  # nothing is close to a name far longer than every choice (and difflib is slow)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_choices(choices: Iterable[str], limit: int = 30) -> str:
    """Join choices for a one-line message, eliding the tail of a long list."""
    items = sorted(choices)
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return ", ".join(items)
