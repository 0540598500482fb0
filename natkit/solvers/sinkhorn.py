"""Entropic assignment with POT's log-domain Sinkhorn, rounded to a permutation."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from natkit.solvers.base import Solver
from natkit.solvers.greedy import mutual_best_assignment


class SinkhornSolver(Solver):
    """Approximate: an entropic plan (POT, log domain), rounded by greedy matching on it.

    ``reg`` is relative to the spread (standard deviation) of the cost, so one
    value suits any batch size and feature dimension. Row-wise argmax of a plan
    is not a permutation; matching greedily on the plan always is.
    """

    exact = False

    def __init__(self, reg: float = 0.05, num_iter_max: int = 1000, tol: float = 1e-6) -> None:
        if reg <= 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        if num_iter_max < 1:
            raise ValueError(f"num_iter_max must be >= 1, got {num_iter_max}")
        if tol <= 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.reg = reg
        self.num_iter_max = num_iter_max
        self.tol = tol

    def plan(self, cost: torch.Tensor) -> np.ndarray:
        """The entropic transport plan between uniform marginals, float64 ``[b, b]``."""
        m = cost.detach().to("cpu", torch.float64).numpy()
        spread = float(m.std()) or 1.0
        weights = np.full(m.shape[0], 1.0 / m.shape[0])
        with warnings.catch_warnings():
            # not converging within num_iter_max is fine: the plan is rounded anyway
            warnings.simplefilter("ignore", UserWarning)
            return ot.sinkhorn(weights, weights, m - m.min(), self.reg * spread,
                               method="sinkhorn_log", numItermax=self.num_iter_max,
                               stopThr=self.tol)

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        plan = torch.as_tensor(self.plan(cost))
        return mutual_best_assignment(-plan).to(cost.device)


def create(*, reg: float = 0.05, num_iter_max: int = 1000, tol: float = 1e-6) -> SinkhornSolver:
    """Entropic optimal transport (POT log-domain Sinkhorn), rounded to a permutation.

    Args:
        reg: entropic regularisation, relative to the standard deviation of the cost.
        num_iter_max: Sinkhorn iterations at most.
        tol: stopping threshold on the marginals (float32 plans never reach 1e-9).
    """
    return SinkhornSolver(reg, num_iter_max, tol)
