"""The natkit entry point of natkit-vmf: registers the ``vmf`` targets."""

from __future__ import annotations

from typing import Any

import natkit


@natkit.hookimpl
def register_targets(register: Any) -> None:
    """Add ``vmf`` to natkit's target registry."""
    # imported here so that listing other kinds never pays for importing scipy
    from natkit_vmf import targets

    register("vmf", targets.create)
