"""A read-only view of a training run, for plugins' hooks and methods."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from natkit.config import Config
    from natkit.engine import Run
    from natkit.methods import Method


class RunView:
    """What a plugin may read of a run, and the two things it may ask of it.

    Lifecycle hooks (``on_run_start``, ``on_step_end``, ...) and
    :meth:`natkit.methods.Method.start_epoch` receive one. Its attributes are
    live (``step`` is the run's current step) and a run keeps the same view
    from start to end, so a plugin may key its own state by it. Read the
    network; only a method's loss may change what it learns.
    """

    def __init__(self, run: Run) -> None:
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
        return self._run.outputs()

    def request_stop(self) -> None:
        """Ask the run to stop after the current step and save a checkpoint, as Ctrl-C does."""
        self._run.request_stop()

    def __repr__(self) -> str:
        return f"RunView(dir={str(self.dir)!r}, epoch={self.epoch}, step={self.step})"
