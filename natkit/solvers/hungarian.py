"""Exact assignment with scipy's linear_sum_assignment (the reference solver)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from natkit.solvers.base import Solver


class HungarianSolver(Solver):
    """Exact: scipy's shortest-augmenting-path LAP solver on a float64 copy, on the CPU."""

    exact = True

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        _, cols = linear_sum_assignment(cost.detach().to("cpu", torch.float64).numpy())
        return torch.as_tensor(cols, dtype=torch.int64).to(cost.device)


def create() -> HungarianSolver:
    """Exact assignment (scipy.optimize.linear_sum_assignment)."""
    return HungarianSolver()
