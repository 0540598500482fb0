"""Exact assignment with scipy's linear_sum_assignment (the reference solver)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from natkit.solvers.base import Solver, quantized_costs
from natkit.values import Bounds

INT32_MAX = 2**31 - 1  # hungarian.c solves int costs


def quantized_cost(cost: np.ndarray, levels: int) -> np.ndarray:
    """:func:`~natkit.solvers.base.quantized_costs` of one numpy cost, as int64."""
    return quantized_costs(torch.from_numpy(np.asarray(cost, dtype=np.float64)), levels).to(
        torch.int64).numpy()


class HungarianSolver(Solver):
    """Exact: scipy's shortest-augmenting-path LAP solver on a float64 copy, on the CPU.

    ``quantize`` (a positive number of levels) first turns the cost into integers as the
    authors' hungarian.lua does (:func:`quantized_cost`), and the answer is optimal for
    those: assignments whose costs differ by less than a level may tie. None or 0 solves
    the cost itself.
    """

    exact = True

    def __init__(self, quantize: int | None = None) -> None:
        if quantize is not None and not 0 <= quantize <= INT32_MAX:
            raise ValueError(f"quantize must be between 0 and {INT32_MAX}, got {quantize}")
        self.quantize = quantize or None

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        values = cost.detach().to("cpu", torch.float64).numpy()
        if self.quantize:
            values = quantized_cost(values, self.quantize)
        _, cols = linear_sum_assignment(values)
        return torch.as_tensor(cols, dtype=torch.int64).to(cost.device)


def create(*, quantize: Annotated[int | None, Bounds(ge=0, le=INT32_MAX)] = None) -> HungarianSolver:
    """Exact assignment (scipy.optimize.linear_sum_assignment).

    Args:
        quantize: solve integer costs 0..quantize, the cost rescaled by its minimum and
            maximum and truncated, as the authors' hungarian.lua does with 100000; null or 0
            solves the cost as it is.
    """
    return HungarianSolver(quantize)
