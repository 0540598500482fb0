"""Exact linear assignment with the Jonker-Volgenant algorithm of the ``lap`` library."""

from __future__ import annotations

import lap
import numpy as np
import torch

from natkit.solvers import Solver, is_permutation


class LapjvSolver(Solver):
    """Exact: ``lap.lapjv`` (Jonker-Volgenant) on a float64 copy of the cost, on the CPU."""

    exact = True

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """Row ``i`` takes column ``perm[i]``, minimising the summed cost; on ``cost``'s device."""
        # lapjv reads a C-contiguous float64 buffer; float64 also keeps float32 ties from
        # being broken by rounding differently than scipy's reference solver would
        matrix = np.ascontiguousarray(cost.detach().to("cpu", torch.float64).numpy())
        _, cols, _ = lap.lapjv(matrix, extend_cost=True)
        perm = torch.as_tensor(cols, dtype=torch.int64)
        # lap marks unmatched rows with -1; on a finite square cost that would be a lap bug,
        # and a non-permutation would silently corrupt natkit's assignment state
        if not is_permutation(perm, cost.shape[0]):
            raise RuntimeError(f"lap.lapjv returned an invalid assignment for a {cost.shape[0]}-square cost")
        return perm.to(cost.device)


def create() -> LapjvSolver:
    """Exact assignment (Jonker-Volgenant, lap.lapjv)."""
    return LapjvSolver()
