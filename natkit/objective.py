"""Noise As Targets in a training loop of one's own: ``loss = objective(features, indices)``.

:class:`NATObjective` is the loss natkit's NAT method computes, as a
``torch.nn.Module`` for any PyTorch loop. It holds the target bank and the
assignment P, and each call does what the engine does with a batch, through
the same functions (:func:`natkit.methods.nat.nat_step`): L2-normalise the
head's outputs, reassign the batch's targets by the solver (in the epochs that
reassign), then return the squared distance to the new targets. Under an
initialised ``torch.distributed`` process group (torchrun) the assignment
problem is the global batch's: features and indices are gathered over the
ranks, rank 0 solves, every rank applies the same permutation to its P.

Its seed plays the part of a natkit run's ``seed``: the same seed, targets and
number of samples give a run's target bank and initial P.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from natkit.assignment import AssignmentState
from natkit.distributed import CPU, SINGLE, Comm
from natkit.errors import CheckpointError, ConfigError, InputError, clip
from natkit.methods.nat import SolverFn, nat_step, reassigning_epoch, reassignment_stats
from natkit.plugins import registry
from natkit.seeding import generator, seed_for
from natkit.targets import Targets


class NATObjective(nn.Module):
    """Noise As Targets as a loss: ``objective(features, indices)`` reassigns, then returns the loss.

    Example::

        objective = natkit.NATObjective(len(dataset), dim=128, seed=0)
        for epoch in range(epochs):
            objective.start_epoch(epoch)  # reassigns in epochs 0, 3, 6, ...
            for images, indices, _ in loader:
                loss = objective(model(images), indices)
    """

    def __init__(self, num_samples: int, dim: int | None = None, *,
                 targets: str | Targets = "sphere", solver: str | SolverFn = "hungarian",
                 seed: int = 0, permute_every: int = 3,
                 reduction: Literal["mean", "sum"] = "mean", normalize: bool = True,
                 device: torch.device | str = "cpu",
                 cache_targets_mb: float | Literal["auto"] = "auto") -> None:
        """One target per sample of the dataset, and the assignment P between them.

        Args:
            num_samples: samples in the dataset; ``indices`` are 0..num_samples-1.
            dim: width of the features (and of the targets); None: the target
                distribution's default (128 for ``sphere``). A built ``targets`` has its own.
            targets: a registered target distribution's name (built with ``dim`` and a seed
                derived from ``seed``, as a run builds it), or one built already, e.g.
                ``natkit.create_targets("basis", dim=128, k=10)``.
            solver: a registered assignment solver's name (``natkit.list_components("solver")``)
                or a solver: any callable from a ``[b, b]`` cost to a permutation of 0..b-1.
            seed: seed of the target bank and of the initial random P (a run's ``seed``).
            permute_every: :meth:`start_epoch` turns reassignment on in every
                ``permute_every``-th epoch from 0 (the paper: 3); 0: P never changes.
            reduction: the squared distances averaged over the batch, or summed (the
                authors' code); under torchrun, the global batch's sum once DDP averages
                the ranks' gradients.
            normalize: L2-normalise the features first, as natkit's network does (set False
                only for features that are unit vectors already).
            device: where P and the target bank are kept (the loss is on the features'
                device, whatever this is).
            cache_targets_mb: keep the bank in memory up to this size; above it, targets are
                regenerated per batch from (seed, id). auto: half the free memory of a CUDA
                ``device``, 1024 MB elsewhere.
        """
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples: expected an integer >= 1, got {clip(repr(num_samples))}")
        if isinstance(permute_every, bool) or not isinstance(permute_every, int) or permute_every < 0:
            raise ConfigError(f"permute_every: expected an integer >= 0, got "
                              f"{clip(repr(permute_every))}")
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"reduction: expected 'mean' or 'sum', got {clip(repr(reduction))}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"dim: expected an integer >= 1 or None, got {clip(repr(dim))}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed: expected an integer, got {clip(repr(seed))}")
        device = _device(device)
        self.num_samples, self.seed = num_samples, int(seed)
        self.permute_every, self.reduction, self.normalize = permute_every, reduction, normalize
        self.targets = _build_targets(targets, dim, self.seed)
        self.dim = self.targets.dim
        self.solver, self.solver_name = _build_solver(solver)
        self.assignment = AssignmentState(
            self.targets, num_samples, generator=generator(self.seed, "assignment"),
            device=device, cache_limit_mb=cache_targets_mb)
        #: whether a call reassigns the batch's targets (set by :meth:`start_epoch`, or by hand)
        self.reassign = reassigning_epoch(0, permute_every)
        #: the last call's reassignment: changed, cost_before, cost_after (None: it did not reassign)
        self.last_stats: dict[str, float] | None = None

    def start_epoch(self, epoch: int) -> bool:
        """Turn reassignment on for ``epoch`` (0-based) if ``permute_every`` says so; returns it."""
        self.reassign = reassigning_epoch(epoch, self.permute_every)
        return self.reassign

    def forward(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The batch's NAT loss; first reassigns its targets when :attr:`reassign` is on.

        In eval mode (``objective.eval()``) it never reassigns: a validation loss leaves P
        as training left it.

        Args:
            features: the network's outputs ``[b, dim]`` (normalised here, see ``normalize``).
            indices: the dataset indices of the batch's samples ``[b]``, each once.
        """
        features, indices = self._checked(features, indices)
        comm = process_group_comm()
        scale = float(len(indices) * comm.world_size) if self.reduction == "sum" else 1.0
        # float32 whatever the caller's autocast, as the engine takes the method's loss: a
        # bfloat16 cost matrix would let the solver pick another assignment
        with torch.autocast(features.device.type, enabled=False):
            outputs = F.normalize(features, dim=1).float() if self.normalize else features.float()
            loss, update = nat_step(self.assignment, self.solver, outputs, indices,
                                    reassign=self.reassign and self.training, comm=comm,
                                    solver_name=self.solver_name, scale=scale,
                                    check=_distinct_over_ranks if comm.distributed else None)
        self.last_stats = None if update is None else reassignment_stats(update)
        return loss

    def _checked(self, features: Any, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(features, torch.Tensor):
            raise InputError(f"features: expected a tensor [batch, {self.dim}], got "
                             f"{type(features).__name__}")
        if features.ndim != 2 or features.shape[1] != self.dim or features.shape[0] == 0:
            raise InputError(f"features: expected shape [batch, {self.dim}] (dim={self.dim}), "
                             f"got {list(features.shape)}")
        if not features.is_floating_point():
            raise InputError(f"features: expected floating point values, got {features.dtype}")
        if not isinstance(indices, torch.Tensor):
            try:
                indices = torch.as_tensor(indices)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"indices: expected a tensor of dataset indices, got "
                                 f"{type(indices).__name__}") from None
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise InputError(f"indices: expected integers (dataset indices), got {indices.dtype}")
        if indices.ndim != 1 or len(indices) != len(features):
            raise InputError(f"indices: expected one index per row of features, shape "
                             f"[{len(features)}], got {list(indices.shape)}")
        indices = indices.to(torch.int64)
        low, high = torch.stack([indices.min(), indices.max()]).tolist()
        if low < 0 or high >= self.num_samples:
            bad = low if low < 0 else high
            raise InputError(f"indices: {bad} is out of range for num_samples={self.num_samples} "
                             f"(0..{self.num_samples - 1})")
        _check_distinct(indices, "the batch")
        return features, indices

    def get_extra_state(self) -> dict[str, Any]:
        """The assignment P (and the targets' settings): what :meth:`state_dict` saves."""
        return {"assignment": self.assignment.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        """Restore P from :meth:`state_dict` (a NAT method's checkpoint state fits as well)."""
        if not isinstance(state, dict) or not isinstance(state.get("assignment"), dict):
            raise CheckpointError("state_dict: it holds no NAT assignment state")
        try:
            self.assignment.load_state_dict(state["assignment"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"state_dict: {clip(exc, 300)}") from None

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, targets={self.targets!r}, "
                f"solver={self.solver_name!r}, seed={self.seed}, "
                f"permute_every={self.permute_every}, reduction={self.reduction!r}")


def process_group_comm() -> Comm:
    """The default ``torch.distributed`` process group as a :class:`~natkit.distributed.Comm`.

    :data:`~natkit.distributed.SINGLE` when no group is initialised or it has one rank.
    NCCL's collectives take tensors on the current CUDA device, gloo's on the CPU.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return SINGLE
    rank = dist.get_rank()
    nccl = "nccl" in str(dist.get_backend()).lower()
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else CPU
    return Comm(rank=rank, world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", rank)), device=device)


def _device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device that exists here (ConfigError naming ``device`` if not)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: {clip(repr(device))} is not a device; expected cpu, cuda "
                          "or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {clip(repr(device))} requested but CUDA is not available "
                          "here; use cpu")
    return resolved


def _build_targets(targets: str | Targets, dim: int | None, seed: int) -> Targets:
    if isinstance(targets, str):
        reg = registry("targets")
        options: dict[str, Any] = {"dim": dim}
        if "seed" in reg.parameters(targets):  # as a run seeds them (MethodContext.create_targets)
            options["seed"] = seed_for(seed, "targets") % 2**31
        built = reg.create(targets, **options)
    else:
        built = targets
    if not isinstance(built, Targets):
        raise ConfigError(f"targets: expected a target distribution's name or a "
                          f"natkit.targets.Targets, got {type(built).__name__}")
    if dim is not None and built.dim != dim:
        raise ConfigError(f"dim: {dim}, but the targets given have dim={built.dim}")
    return built


def _build_solver(solver: str | SolverFn) -> tuple[SolverFn, str]:
    if isinstance(solver, str):
        return registry("solver").create(solver), solver
    if not callable(solver):
        raise ConfigError(f"solver: expected a solver's name or a callable cost -> permutation, "
                          f"got {type(solver).__name__}")
    name = getattr(solver, "name", None) or getattr(solver, "__name__", None)
    return solver, str(name or type(solver).__name__)


def _check_distinct(indices: torch.Tensor, where: str) -> None:
    unique, counts = torch.unique(indices, return_counts=True)
    if len(unique) != len(indices):
        twice = int(unique[counts > 1][0])
        hint = ("; give each rank its own share of the global batch (a DistributedSampler "
                "with the same seed on every rank)" if where != "the batch" else "")
        raise InputError(f"indices: {twice} appears more than once in {where}; a sample's "
                         f"target is swapped within its batch, so each may appear once{hint}")


def _distinct_over_ranks(indices: torch.Tensor) -> None:
    """Refuse a global batch that holds a sample twice (every rank sees the same and agrees)."""
    _check_distinct(indices, "the global batch (over the ranks)")
