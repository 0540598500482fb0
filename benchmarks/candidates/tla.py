"""Candidate exact assignment solver: torch-linear-assignment's Jonker-Volgenant kernel in Triton.

torch-linear-assignment 0.1.0 (a young, pure-Python package) solves a cost on a CUDA device of
compute capability 8.0 or newer with a Triton kernel of the Jonker-Volgenant shortest augmenting
path algorithm, and with scipy everywhere else. It was evaluated as an optional plugin and lost
to scipy plus the copy on an H200 (see docs/solvers.md), so it stays here, where the speed suite
times it whenever the package is installed, rather than in plugins/.
"""

from __future__ import annotations

import torch

from natkit.solvers import Solver


class TlaSolver(Solver):
    """Exact: ``batch_linear_assignment`` on the cost's own device and dtype, no host copy on CUDA."""

    exact = True

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        from torch_linear_assignment import batch_linear_assignment

        # a batch of one; -1 would mark an unmatched row, impossible for a finite square cost
        return batch_linear_assignment(cost.detach()[None])[0].to(torch.int64)

    @staticmethod
    def backend(device: torch.device | str) -> str:
        """``"triton"`` where a cost on ``device`` is solved by the Triton kernel, else ``"scipy"``."""
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return "scipy"
        from torch_linear_assignment.assignment import _cuda_uses_triton  # the package's own test

        return "triton" if _cuda_uses_triton(torch.empty(0, device=device)) else "scipy"


def available() -> bool:
    """Whether torch-linear-assignment is installed."""
    try:
        import torch_linear_assignment  # noqa: F401
    except ImportError:
        return False
    return True
