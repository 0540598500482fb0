"""Solvers under evaluation: timed by the speed suite beside the registered ones, never registered."""

from __future__ import annotations

from natkit.solvers import Solver


def candidate_solvers() -> dict[str, Solver]:
    """Every candidate whose dependencies are installed, by the name the speed suite reports."""
    from benchmarks.candidates import auction, tla

    found: dict[str, Solver] = {"auction (candidate)": auction.AuctionSolver()}
    if tla.available():
        found["tla (candidate)"] = tla.TlaSolver()
    return found
