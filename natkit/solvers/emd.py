"""Exact assignment as optimal transport with POT's network simplex (ot.emd)."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from natkit.solvers.base import Solver, is_permutation

_OPTIMAL = 1  # POT's result_code for a plan proven optimal


class EMDSolver(Solver):
    """Exact: POT's ot.emd between two uniform histograms of b unit masses."""

    exact = True

    def __init__(self, num_iter_max: int | None = None) -> None:
        if num_iter_max is not None and num_iter_max < 1:
            raise ValueError(f"num_iter_max must be >= 1, got {num_iter_max}")
        self.num_iter_max = num_iter_max

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        b = cost.shape[0]
        # POT's default of 100000 iterations stops short (with only a warning) from b ~ 4096
        iters = self.num_iter_max or max(100_000, 50 * b * b)
        ones = np.ones(b)  # unit masses: an optimal vertex is then an exact 0/1 matrix
        m = cost.detach().to("cpu", torch.float64).numpy()
        # POT 0.9.7 calls some costs with negative entries "infeasible" (all -2: result_code 0);
        # a constant shift adds b * shift to every permutation, so the optimum is unchanged
        m = m - m.min()
        with warnings.catch_warnings():  # an early stop is raised below, with advice
            warnings.simplefilter("ignore", UserWarning)
            plan, log = ot.emd(ones, ones, m, numItermax=iters, log=True)
        if log["result_code"] != _OPTIMAL:
            raise RuntimeError(
                f"ot.emd stopped before optimality ({log.get('warning')}); raise num_iter_max"
            )
        perm = torch.as_tensor(plan.argmax(axis=1), dtype=torch.int64)
        if not is_permutation(perm, b):
            raise RuntimeError("ot.emd returned a plan that is not a permutation matrix")
        return perm.to(cost.device)


def create(*, num_iter_max: int | None = None) -> EMDSolver:
    """Exact assignment as optimal transport (POT's ot.emd, checked for optimality).

    Args:
        num_iter_max: network-simplex iteration limit; null: max(100000, 50 b^2), enough for b = 4096.
    """
    return EMDSolver(num_iter_max)
