"""The Method interface: what an alignment-to-targets objective gives the training loop.

The engine owns the loop, the optimizer, checkpoints and signals; a method owns
what it pulls the network's outputs towards. NAT, supervised training and any
plugin's method (SeLa in ``plugins/natkit-sela``) implement the same small
interface and are registered through the ``register_methods`` hook.

A method is built once per run from a :class:`MethodContext` and its own
options (checked against its factory's signature, like any component's). The
engine then:

1. sizes the network's head to :attr:`Method.head_dim` and L2-normalises its
   outputs when :attr:`Method.normalize` is set;
2. adds :meth:`Method.modules` (if any) to the optimizer and the checkpoint;
3. calls :meth:`Method.start_epoch` each time an epoch starts *or resumes*;
4. calls :meth:`Method.loss` on every batch, then steps the optimizer;
5. saves :meth:`Method.state_dict` in every checkpoint and restores it with
   :meth:`Method.load_state_dict`.

Under torchrun, each rank calls :meth:`Method.loss` with its slice of the global
batch, and DistributedDataParallel averages the gradients, so a loss that is a
mean over the batch means the same on any number of ranks. A method that needs
the whole batch (NAT's assignment) or the whole dataset gathers it through
``context.comm``. Its state must stay identical on every rank: the engine
compares a checksum of :meth:`Method.state_dict` across ranks at every
checkpoint and stops if they differ.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from natkit.distributed import SINGLE, Comm
from natkit.errors import NatkitError
from natkit.inference import dataset_outputs
from natkit.schema import Config, component_options
from natkit.seeding import generator, seed_for

#: ``create(kind, name, **options)``: builds a registered component (natkit passes the registry's)
ComponentFactory = Callable[..., Any]


@dataclass(frozen=True)
class MethodContext:
    """What natkit knows when it builds a method for a run: the config and the training data."""

    config: Config
    num_images: int  # images in the training split; dataset indices are 0..num_images-1
    labels: torch.Tensor  # int64 [num_images], -1 for an unlabelled image
    num_classes: int
    device: torch.device
    #: builds the components the method asks for; the registries' ``create``, passed in so that
    #: methods, which the plugin host loads, never import the host
    create: ComponentFactory
    #: the ranks the run trains on (one process: a Comm whose collectives are the identity)
    comm: Comm = SINGLE

    def seed_for(self, purpose: str) -> int:
        """A seed for ``purpose``, a pure function of (run seed, purpose)."""
        return seed_for(self.config.seed, purpose)

    def generator(self, purpose: str) -> torch.Generator:
        """A CPU generator seeded for ``purpose``: each source of randomness apart, repeatable."""
        return generator(self.config.seed, purpose)

    def create_targets(self) -> Any:
        """The run's configured target distribution (section ``targets``); seeded from the run."""
        spec = self.config.targets
        options = component_options(spec)
        if options.get("seed") is None:
            options["seed"] = self.seed_for("targets") % 2**31
        return self.create("targets", spec["name"], **options)

    def create_solver(self) -> Any:
        """The run's configured assignment solver (section ``solver``)."""
        spec = self.config.solver
        return self.create("solver", spec["name"], **component_options(spec))


@dataclass(frozen=True)
class Batch:
    """One training batch as a method sees it (the images have gone through the network)."""

    indices: torch.Tensor  # dataset indices (int64, on the host)
    labels: torch.Tensor  # their labels (int64, on the host; -1 when unlabelled)
    epoch: int  # 0-based epoch of this batch
    step: int  # optimizer steps taken before this batch


@dataclass
class StepLoss:
    """A batch's loss, and what the method reassigned while computing it."""

    loss: torch.Tensor  # a scalar on the device, to be minimised; the engine never waits for it
    reassigned: dict[str, float] | None = field(default=None)  # e.g. {"changed": 0.12}


class Method(abc.ABC):
    """An objective for the training loop; subclasses set :attr:`head_dim` in ``__init__``."""

    #: width of the network's output (the head's last layer)
    head_dim: int
    #: L2-normalise the network's outputs (NAT's targets lie on the unit sphere)
    normalize: bool = False
    #: the outputs are logits over the dataset's classes: evaluation reports their accuracy
    classifier: bool = False

    def modules(self) -> nn.Module | None:
        """Trainable modules the method adds; they join the optimizer and the checkpoint."""
        return None

    def start_epoch(self, epoch: int, run: RunView) -> dict[str, float] | None:
        """Prepare ``epoch`` (0-based); called when it starts and again when a run resumes in it.

        Must depend only on the method's state and ``epoch``, so that a resumed run
        does what the uninterrupted one did. Returns statistics when it reassigned
        targets (fired as ``on_reassign``), else None.
        """
        return None

    @abc.abstractmethod
    def loss(self, outputs: torch.Tensor, batch: Batch) -> StepLoss:
        """The batch's loss given the network's float32 outputs ``[b, head_dim]``."""

    def state_dict(self) -> dict[str, Any]:
        """The method's state for the checkpoint: tensors and plain data."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raise ValueError when it does not fit this method."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds "
                             f"{', '.join(sorted(state))}")

    def describe(self) -> str:
        """One line for the run's banner, e.g. 'targets sphere (d=32) | solver hungarian'."""
        return ""


class RunView:
    """What a plugin may read of a run, and the two things it may ask of it.

    Lifecycle hooks (``on_run_start``, ``on_step_end``, ...) and
    :meth:`natkit.methods.Method.start_epoch` receive one. Its attributes are
    live (``step`` is the run's current step) and a run keeps the same view
    from start to end, so a plugin may key its own state by it. Read the
    network; only a method's loss may change what it learns.
    """

    def __init__(self, run: Any) -> None:
        # the engine's Run, typed loosely: the engine sits above the methods and imports them
        self._run = run

    @property
    def dir(self) -> Path:
        """The run directory (it exists)."""
        return self._run.dir

    @property
    def config(self) -> Config:
        """The resolved config."""
        return self._run.config

    @property
    def device(self) -> torch.device:
        """Where the network and the method's tensors live."""
        return self._run.device

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._run.epoch

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self._run.step

    @property
    def batch_in_epoch(self) -> int:
        """Batches of the current epoch already done."""
        return self._run.batch_in_epoch

    @property
    def num_images(self) -> int:
        """Training images; dataset indices are 0..num_images-1."""
        return len(self._run.dataset)

    @property
    def method(self) -> Method:
        """The run's training method."""
        return self._run.method

    @property
    def network(self) -> nn.Module:
        """The network being trained (preprocess, backbone, head)."""
        return self._run.model

    def outputs(self) -> torch.Tensor:
        """The network's outputs for every training image in index order, ``[num_images, head_dim]``.

        Computed on the device in eval mode without augmentation: what a method
        such as SeLa labels the whole dataset from. Under torchrun it gathers every
        rank's share, so only a method's ``start_epoch`` (which every rank runs) may
        call it; a hook calling it there gets a one-line error.
        """
        run = self._run
        if run.comm.distributed and not run.in_method:
            raise NatkitError("outputs() gathers over the ranks under torchrun: call it from a "
                              "method's start_epoch (every rank runs it), not from a hook")
        return dataset_outputs(run.model, run.dataset, run.comm, run.device,
                               run.config.eval.batch_size, run.memory_format)

    def request_stop(self) -> None:
        """Ask the run to stop after the current step and save a checkpoint, as Ctrl-C does."""
        self._run.request_stop()

    def __repr__(self) -> str:
        return f"RunView(dir={str(self.dir)!r}, epoch={self.epoch}, step={self.step})"
