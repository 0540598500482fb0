"""The assignment state of Noise As Targets: which target each image is pulled towards.

``perm[i]`` is the target id of image ``i`` (a dataset index). It starts as a
random permutation and only ever changes by permuting the ids held by one
batch, so it stays a permutation of ``0..n-1``: every target is used once.
The state lives in the training process (never in DataLoader workers) and is
saved in the checkpoint. A distributed run needs only :meth:`propose` on each
rank, a gather of ``(indices, new_ids)``, and :meth:`apply` everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from natkit.solvers import InvalidSolution, solution_problem
from natkit.targets import Targets

# torch.profiler ranges of a reassignment (cheap when no profiler runs); the speed
# suite's profile attributes a step's time by these names, so keep them stable
RANGE_TARGETS = "natkit.reassign.targets"
RANGE_COST = "natkit.reassign.cost"
RANGE_SOLVE = "natkit.reassign.solve"
RANGE_VALIDATE_SYNC = "natkit.reassign.validate_sync"
RANGE_UPDATE_P = "natkit.reassign.update_P"


# "auto" off CUDA: the fixed limit that was the default before "auto"
CPU_CACHE_LIMIT_MB = 1024.0
# "auto" on CUDA: the bank may take this share of the device's free memory at start,
# leaving the rest to activations (sphere d=2048 at ImageNet's n is 10.5 GB)
DEVICE_FREE_SHARE = 0.5


def auto_cache_limit_mb(device: torch.device | str) -> float:
    """The cache limit that ``cache_targets_mb: auto`` means on ``device``, in MB."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_CACHE_LIMIT_MB
    free, _total = torch.cuda.mem_get_info(device)
    return DEVICE_FREE_SHARE * free / 2**20


@dataclass(frozen=True)
class Reassignment:
    """What one batch's reassignment did."""

    indices: torch.Tensor  # dataset indices of the batch
    new_ids: torch.Tensor  # their target ids after the solve
    changed: float  # fraction of the batch whose target changed
    cost_before: float  # summed -<f, c> with the old targets
    cost_after: float  # and with the new ones (never higher with an exact solver)


class AssignmentState:
    """The permutation P (image -> target id) and the target distribution it indexes."""

    def __init__(self, targets: Targets, num_images: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu",
                 cache_limit_mb: float | Literal["auto"] = 1024.0) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.targets = targets
        self.num_images = num_images
        self.device = torch.device(device)
        self.perm = torch.randperm(num_images, generator=generator).to(self.device)
        self._bank: torch.Tensor | None = None
        if cache_limit_mb == "auto":
            cache_limit_mb = auto_cache_limit_mb(self.device)
        if self.fits_cache(num_images, targets.dim, cache_limit_mb):
            self._bank = targets(torch.arange(num_images, device=self.device))

    @staticmethod
    def fits_cache(num_images: int, dim: int, cache_limit_mb: float) -> bool:
        """Whether a float32 bank of ``num_images`` targets is kept in memory under the limit."""
        return num_images * dim * 4 <= cache_limit_mb * 2**20

    @property
    def cached(self) -> bool:
        """Whether the whole bank is held in memory (else targets are regenerated per batch)."""
        return self._bank is not None

    def _by_id(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function(RANGE_TARGETS):
            return self._bank[ids] if self._bank is not None else self.targets(ids)

    def targets_of(self, indices: torch.Tensor) -> torch.Tensor:
        """The current targets of the images ``indices``, ``[b, dim]``."""
        return self._by_id(self.perm[indices.to(self.device)])

    def propose(self, indices: torch.Tensor, features: torch.Tensor,
                solver: Callable[[torch.Tensor], torch.Tensor]) -> Reassignment:
        """Solve the batch's assignment problem; P itself is left unchanged.

        The solver's answer is validated (raising :class:`InvalidSolution`), in the
        same single device-to-host transfer that reads the batch's statistics.
        """
        indices = indices.to(self.device)
        ids = self.perm[indices]
        held = self._by_id(ids)
        with torch.profiler.record_function(RANGE_COST):
            # unit vectors: ||f - c||^2 = 2 - 2 <f, c>, so the inner product is the whole cost
            cost = -(features.detach().float() @ held.to(features.device, torch.float32).t())
        b = len(indices)
        with torch.profiler.record_function(RANGE_SOLVE):
            cols = solver(cost)
        problem = solution_problem(cols, b)
        if problem is not None:
            raise InvalidSolution(f"returned {problem}")
        with torch.profiler.record_function(RANGE_VALIDATE_SYNC):
            rows = torch.arange(b, device=cost.device)
            # clamped so that a bad answer cannot index out of bounds before it is refused
            safe = cols.to(cost.device, torch.int64).clamp(0, max(b - 1, 0))
            stats = torch.stack([
                (torch.sort(cols.to(cost.device)).values == rows).all().float(),
                (safe != rows).float().mean(),
                cost.diagonal().sum(),
                cost[rows, safe].sum(),
            ]).tolist()  # the one host synchronisation of a reassignment
        if stats[0] != 1.0:
            raise InvalidSolution(f"returned values that are not each of 0..{b - 1} once")
        cols = safe.to(self.device)
        return Reassignment(indices=indices, new_ids=ids[cols], changed=stats[1],
                            cost_before=stats[2], cost_after=stats[3])

    def apply(self, update: Reassignment) -> None:
        """Write a batch's new target ids into P."""
        with torch.profiler.record_function(RANGE_UPDATE_P):
            self.perm[update.indices] = update.new_ids

    def reassign(self, indices: torch.Tensor, features: torch.Tensor,
                 solver: Callable[[torch.Tensor], torch.Tensor]) -> Reassignment:
        """Propose and apply in one go (the single-process path)."""
        update = self.propose(indices, features, solver)
        self.apply(update)
        return update

    def state_dict(self) -> dict[str, Any]:
        """The permutation and the arguments that rebuild the targets."""
        return {
            "perm": self.perm.cpu(),
            "targets": {"class": type(self.targets).__name__, **self.targets.options()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore P; the target settings must match this state's distribution."""
        perm = torch.as_tensor(state["perm"], dtype=torch.int64)
        if perm.shape != (self.num_images,):
            raise ValueError(f"checkpoint permutation has {perm.numel()} entries, "
                             f"the dataset {self.num_images} images")
        if not torch.equal(torch.sort(perm).values, torch.arange(self.num_images)):
            raise ValueError("checkpoint permutation is not a permutation")
        saved = {k: v for k, v in state.get("targets", {}).items() if k != "class"}
        if saved and saved != self.targets.options():
            raise ValueError(f"checkpoint targets {saved} differ from {self.targets.options()}")
        self.perm = perm.to(self.device)
