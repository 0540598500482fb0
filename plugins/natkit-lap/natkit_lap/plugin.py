"""The natkit entry point of natkit-lap: registers the ``lapjv`` solver."""

from __future__ import annotations

from typing import Any

import natkit


@natkit.hookimpl
def register_solvers(register: Any) -> None:
    """Add ``lapjv`` to natkit's solver registry."""
    # imported here so that listing other kinds never pays for importing lap
    from natkit_lap import solver

    register("lapjv", solver.create)
