"""Entropic assignment with POT's Sinkhorn on torch tensors, rounded to a permutation on the device."""

from __future__ import annotations

import warnings
from typing import Literal

import ot
import torch

from natkit.solvers.base import Solver
from natkit.solvers.greedy import mutual_best_assignment

Method = Literal["sinkhorn", "sinkhorn_log"]


class SinkhornSolver(Solver):
    """Approximate: an entropic plan (POT's torch backend), rounded by greedy matching on it.

    Everything stays on the cost's device and in its dtype. ``reg`` is relative
    to the spread (standard deviation) of the cost, so one value suits any batch
    size and feature dimension. The cost is first reduced so that every row and
    column holds a zero (an optimal plan does not change when a constant is
    taken from a row or a column): the kernel exp(-cost / reg) then has a 1 in
    every row and column, and the fast multiplicative iterations cannot
    underflow to an empty row. A plan that is not finite anyway is recomputed in
    the log domain. Row-wise argmax of a plan is not a permutation; matching
    greedily on the plan always is.
    """

    exact = False

    def __init__(self, reg: float = 0.03, num_iter_max: int = 30, tol: float = 1e-6,
                 method: Method = "sinkhorn") -> None:
        if reg <= 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        if num_iter_max < 1:
            raise ValueError(f"num_iter_max must be >= 1, got {num_iter_max}")
        if tol <= 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if method not in ("sinkhorn", "sinkhorn_log"):
            raise ValueError(f"method must be 'sinkhorn' or 'sinkhorn_log', got {method!r}")
        self.reg = reg
        self.num_iter_max = num_iter_max
        self.tol = tol
        self.method = method

    def plan(self, cost: torch.Tensor) -> torch.Tensor:
        """The entropic transport plan between uniform marginals, ``[b, b]`` on the cost's device."""
        m = cost.detach()
        if not m.is_floating_point():
            m = m.double()
        m = m - m.min(dim=1, keepdim=True).values
        m = m - m.min(dim=0, keepdim=True).values
        spread = float(cost.double().std()) or 1.0  # a constant cost has no scale of its own
        weights = torch.full((m.shape[0],), 1.0 / m.shape[0], dtype=m.dtype, device=m.device)
        plan = self._sinkhorn(weights, m, self.reg * spread, self.method)
        if self.method == "sinkhorn" and not bool(torch.isfinite(plan).all()):
            plan = self._sinkhorn(weights, m, self.reg * spread, "sinkhorn_log")
        return plan

    def _sinkhorn(self, weights: torch.Tensor, m: torch.Tensor, reg: float,
                  method: Method) -> torch.Tensor:
        with warnings.catch_warnings():
            # not converging within num_iter_max is fine: the plan is rounded anyway
            warnings.simplefilter("ignore", UserWarning)
            return ot.sinkhorn(weights, weights, m, reg, method=method,
                               numItermax=self.num_iter_max, stopThr=self.tol)

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        return mutual_best_assignment(-self.plan(cost))


def create(*, reg: float = 0.03, num_iter_max: int = 30, tol: float = 1e-6,
           method: Method = "sinkhorn") -> SinkhornSolver:
    """Entropic optimal transport (POT's Sinkhorn on the cost's device), rounded to a permutation.

    Args:
        reg: entropic regularisation, relative to the standard deviation of the cost.
        num_iter_max: Sinkhorn iterations at most. Chosen with benchmarks/sinkhorn_grid.py:
            iterations beyond 30 cost time and barely move the gap, and at 30 reg 0.03 gave
            the lowest gaps at b = 256 and 1024 (worst 1.7% and 1.1% above the optimum over
            4 seeds), in 1.6x and 0.7x scipy's time on 2 CPU cores.
        tol: stopping threshold on the marginals (float32 plans never reach 1e-9).
        method: 'sinkhorn' (multiplicative, fast; falls back to the log domain if it overflows)
            or 'sinkhorn_log' (log domain throughout, slower).
    """
    return SinkhornSolver(reg, num_iter_max, tol, method)
