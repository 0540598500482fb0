"""The solver interface and the checks every solver shares."""

from __future__ import annotations

import torch


class Solver:
    """Minimise the summed cost of a one-to-one assignment of rows to columns.

    ``solver(cost)`` takes a square ``[b, b]`` tensor and returns a LongTensor
    ``perm`` on the same device: row ``i`` takes column ``perm[i]``. The result
    is always a valid permutation. ``exact`` says whether it is optimal.
    """

    exact: bool = False
    # the device types it is built for, None for any; elsewhere it runs, but only for tests
    native_devices: tuple[str, ...] | None = None

    def __call__(self, cost: torch.Tensor) -> torch.Tensor:
        check_cost(cost)
        if cost.shape[0] <= 1:
            return torch.zeros(cost.shape[0], dtype=torch.int64, device=cost.device)
        return self.solve(cost)

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """Solve a checked cost matrix with b >= 2."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def check_cost(cost: torch.Tensor) -> None:
    """Raise ValueError for a cost that is not square, or FloatingPointError if not finite."""
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square [b, b] matrix, got shape {tuple(cost.shape)}")
    if not torch.isfinite(cost).all():
        raise FloatingPointError("cost matrix holds NaN or infinite values")


class InvalidSolution(ValueError):
    """A solver returned something that is not a permutation of its batch."""


def solution_problem(perm: object, b: int) -> str | None:
    """What makes ``perm`` an invalid answer for a batch of ``b``, judged without a host sync.

    Checks type, dtype and shape only; the values (each of 0..b-1 once) need the
    device and are checked by :func:`is_permutation` or by the caller in one sync.
    """
    if not isinstance(perm, torch.Tensor):
        return f"a {type(perm).__name__}, not a tensor"
    if perm.dtype.is_floating_point or perm.dtype.is_complex or perm.dtype == torch.bool:
        return f"a {str(perm.dtype).removeprefix('torch.')} tensor, not integers"
    if tuple(perm.shape) != (b,):
        return f"shape {tuple(perm.shape)}, not ({b},)"
    return None


def is_permutation(perm: torch.Tensor, b: int) -> bool:
    """Whether ``perm`` holds each of 0..b-1 exactly once."""
    return perm.shape == (b,) and bool((torch.sort(perm).values.cpu() == torch.arange(b)).all())


def assignment_cost(cost: torch.Tensor, perm: torch.Tensor) -> float:
    """The summed cost of assigning row i to column perm[i], in float64."""
    rows = torch.arange(cost.shape[0], device=cost.device)
    return float(cost.to(torch.float64)[rows, perm].sum())


def quantized_costs(costs: torch.Tensor, levels: int) -> torch.Tensor:
    """The integer costs the authors' hungarian.lua (27-31) solves, 0..``levels``, of each
    ``[b, b]`` problem in ``costs[..., b, b]``, on its device, as integer-valued float64.

    ``(cost - min) * (1 / (max - min)) * levels``, in float64 and in that order, then
    truncated toward zero (``:int()``). A constant cost becomes all zeros (hungarian.lua
    would divide by zero). One rule for every solver that takes ``quantize``, so they solve
    the same integers.
    """
    c = costs.detach().to(torch.float64)
    lo = c.amin(dim=(-2, -1), keepdim=True)
    hi = c.amax(dim=(-2, -1), keepdim=True)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    q = ((c - lo) * (1.0 / span) * float(levels)).trunc()
    return torch.where(hi > lo, q, torch.zeros_like(q))
