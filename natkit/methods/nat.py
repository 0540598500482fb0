"""Noise As Targets (Bojanowski & Joulin, 2017): pull each image towards its own noise vector.

Every image holds one target of a fixed random bank (``targets``); in each
batch of every ``permute_every``-th epoch, the batch's targets are permuted
among its images by the assignment ``solver`` to fit the current features
better. The loss is the squared distance between an image's L2-normalised
output and its target.

Under torchrun the assignment problem is still the global batch's: the ranks
all-gather their features and indices, rank 0 solves the problem once, and
every rank applies the same permutation to its copy of P.

A batch's step is the function :func:`nat_step` (with :func:`reassign_batch`),
which :class:`natkit.objective.NATObjective`, NAT in a loop of one's own, calls too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch

from natkit.assignment import AssignmentState, Reassignment
from natkit.distributed import SINGLE, Comm
from natkit.errors import SolverError
from natkit.methods.base import Batch, Method, MethodContext, RunView, StepLoss
from natkit.solvers import InvalidSolution
from natkit.values import Bounds

# what the method calls to solve a batch: a Solver, or a wrapper around one
SolverFn = Callable[[torch.Tensor], torch.Tensor]
# refuses a (global) batch's indices by raising; called with them on every rank
IndexCheck = Callable[[torch.Tensor], None]


class NoiseAsTargets(Method):
    """Noise As Targets: fixed random targets, reassigned by a solver within each batch."""

    normalize = True

    def __init__(self, *, context: MethodContext,
                 permute_every: Annotated[int, Bounds(ge=0)] = 3,
                 cache_targets_mb: Annotated[float, Bounds(ge=0.0)] | Literal["auto"] = "auto",
                 loss_reduction: Literal["mean", "sum"] = "mean") -> None:
        """Noise As Targets (the paper's method; uses the ``targets`` and ``solver`` sections).

        Args:
            permute_every: reassign targets in every batch of each k-th epoch (the paper: 3);
                0 keeps the initial random assignment.
            cache_targets_mb: keep the target bank in memory when it takes at most this many
                MB; larger banks are regenerated per batch from (seed, id). auto: on a GPU,
                half the device's free memory at start (ImageNet's sphere of R^2048, 10.5 GB,
                stays on an H200); elsewhere 1024 MB.
            loss_reduction: the squared distances averaged over the batch, or summed as in the
                authors' code (MSECriterion with sizeAverage = false: at the same lr, steps
                batch_size times larger).
        """
        self.permute_every = permute_every
        # a sum over the global batch, whatever the ranks: each rank's mean times the global
        # batch, which DDP's average over the ranks turns into the global sum
        self.loss_scale = float(context.config.train.batch_size) if loss_reduction == "sum" else 1.0
        self.targets = context.create_targets()
        self.solver = context.create_solver()
        self.solver_name = context.config.solver["name"]
        self.assignment = AssignmentState(
            self.targets, context.num_images, generator=context.generator("assignment"),
            device=context.device, cache_limit_mb=cache_targets_mb)
        self.head_dim = self.targets.dim
        self._reassigning = False
        self._forced: bool | None = None
        self.comm = context.comm

    @property
    def reassigning(self) -> bool:
        """Whether the current batches reassign their targets."""
        return self._reassigning if self._forced is None else self._forced

    def reassigns_in(self, epoch: int) -> bool:
        """Whether targets are reassigned during ``epoch`` (0-based)."""
        return reassigning_epoch(epoch, self.permute_every)

    def force_reassignment(self, on: bool | None) -> None:
        """Reassign in every batch (True), in none (False), or as ``permute_every`` says (None).

        For measurements that time a reassigning step against a plain one; a
        training run never calls it.
        """
        self._forced = on

    def wrap_solver(self, wrap: Callable[[SolverFn], SolverFn]) -> SolverFn:
        """Replace the solver by ``wrap(solver)`` (e.g. a timer around it); returns the new one."""
        self.solver = wrap(self.solver)
        return self.solver

    def start_epoch(self, epoch: int, run: RunView) -> None:
        self._reassigning = self.reassigns_in(epoch)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> StepLoss:
        loss, update = nat_step(self.assignment, self.solver, outputs, batch.indices,
                                reassign=self.reassigning, comm=self.comm,
                                solver_name=self.solver_name, scale=self.loss_scale)
        return StepLoss(loss, None if update is None else reassignment_stats(update))

    def state_dict(self) -> dict[str, Any]:
        return {"assignment": self.assignment.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("assignment") is None:
            raise ValueError("it holds no assignment state")
        self.assignment.load_state_dict(state["assignment"])

    def describe(self) -> str:
        return (f"targets {self.targets.name} (d={self.targets.dim}) | solver {self.solver_name}"
                f" | reassign every {self.permute_every} epochs")


def reassigning_epoch(epoch: int, permute_every: int) -> bool:
    """Whether targets are reassigned during ``epoch`` (0-based): every ``permute_every``-th from 0."""
    return permute_every > 0 and epoch % permute_every == 0


def reassignment_stats(update: Reassignment) -> dict[str, float]:
    """What a batch's reassignment is logged as (the engine's ``on_reassign`` metrics)."""
    return {"changed": update.changed, "cost_before": update.cost_before,
            "cost_after": update.cost_after}


def nat_step(assignment: AssignmentState, solver: SolverFn, outputs: torch.Tensor,
             indices: torch.Tensor, *, reassign: bool, comm: Comm = SINGLE,
             solver_name: str = "solver", scale: float = 1.0,
             check: IndexCheck | None = None) -> tuple[torch.Tensor, Reassignment | None]:
    """One batch of NAT in the paper's order: reassign its targets (if ``reassign``), then the loss.

    Args:
        assignment: P and the targets; updated in place when the batch reassigns.
        solver: ``cost[b, b] -> permutation[b]``.
        outputs: the network's L2-normalised float32 outputs ``[b, d]`` (this rank's share).
        indices: their dataset indices ``[b]``.
        reassign: solve the batch's assignment on the detached outputs first.
        comm: the ranks; under torchrun the global batch is solved (see :func:`reassign_batch`).
        solver_name: names the solver in errors.
        scale: the loss is the batch's mean squared distance times this.
        check: called with the (gathered) indices before a solve; raises to refuse them.

    Returns:
        The loss (a scalar on the outputs' device) and the reassignment, None if none.
    """
    update = None
    if reassign:
        update = reassign_batch(assignment, solver, indices, outputs.detach(), comm=comm,
                                solver_name=solver_name, check=check)
    targets = assignment.targets_of(indices).to(outputs)
    loss = (outputs - targets).pow(2).sum(dim=1).mean() * scale
    return loss, update


def _propose(assignment: AssignmentState, solver: SolverFn, solver_name: str,
             indices: torch.Tensor, features: torch.Tensor) -> Reassignment:
    try:
        return assignment.propose(indices, features, solver)
    except InvalidSolution as exc:
        b = len(indices)
        raise SolverError(f"solver '{solver_name}' {exc}; a solver must return a "
                          f"permutation of 0..{b - 1} as an integer tensor of shape "
                          f"({b},)") from None


def reassign_batch(assignment: AssignmentState, solver: SolverFn, indices: torch.Tensor,
                   features: torch.Tensor, *, comm: Comm = SINGLE, solver_name: str = "solver",
                   check: IndexCheck | None = None) -> Reassignment:
    """Solve the (global) batch's assignment on ``features`` and apply it to P.

    Under torchrun every rank gathers the ranks' indices and features, rank 0
    solves once and broadcasts the new target ids, and every rank applies them,
    so P stays identical on every rank.
    """
    if not comm.distributed:
        if check is not None:
            check(indices)
        update = _propose(assignment, solver, solver_name, indices, features)
        assignment.apply(update)
        return update
    indices = comm.all_gather(indices, "gathering the batch's indices")
    if check is not None:  # the same indices on every rank: every rank refuses them alike
        check(indices)
    features = comm.all_gather(features, "gathering the batch's features")
    b = len(indices)
    # rank 0 solves once; [status, changed, cost_before, cost_after, new ids...] to every
    # rank, status 1 = solved, 2 = non-finite features, 3 = the solver failed
    message = torch.zeros(4 + b, dtype=torch.float64)
    failure: BaseException | None = None
    if comm.is_main:
        try:
            update = _propose(assignment, solver, solver_name, indices, features)
            message[:4] = torch.tensor([1.0, update.changed, update.cost_before,
                                        update.cost_after], dtype=torch.float64)
            message[4:] = update.new_ids.cpu().to(torch.float64)
        except FloatingPointError as exc:
            failure, message[0] = exc, 2.0
        except SolverError as exc:
            failure, message[0] = exc, 3.0
    message = comm.broadcast(message, "sharing the batch's new assignment")
    if failure is not None:
        raise failure
    if message[0] == 2.0:  # every rank reports the divergence as rank 0 does
        raise FloatingPointError("non-finite features in the batch")
    if message[0] != 1.0:
        raise SolverError(f"solver '{solver_name}' failed on rank 0 (see its message)")
    update = Reassignment(indices=indices.to(assignment.device),
                          new_ids=message[4:].to(torch.int64).to(assignment.device),
                          changed=float(message[1]), cost_before=float(message[2]),
                          cost_after=float(message[3]))
    assignment.apply(update)
    return update
