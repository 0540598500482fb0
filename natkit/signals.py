"""Ctrl-C and SIGTERM as requests to stop cleanly, after the current step."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def stop_requests(request_stop: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``request_stop``; a second SIGINT interrupts at once.

    SIGTERM too: torchrun forwards it, and schedulers send it before they kill a
    job. Outside the main thread, where Python cannot handle signals, nothing changes.
    """

    def on_signal(signum: int, frame: Any) -> None:
        request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = signal.signal(signal.SIGINT, on_signal)
    except ValueError:  # not the main thread
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that the same clean-up runs for both."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Work with no checkpoint to save (an evaluation) stops at once on SIGTERM as on
    Ctrl-C: its ``finally`` blocks remove temporary files and its caller says what
    is kept, instead of the process dying silently with them left behind.
    """

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
