"""The training loop: one plain PyTorch loop, whatever the method.

A :class:`Run` holds everything a run's result depends on: the network, the
optimizer, the method's state, the step counters and the random generators;
:mod:`natkit.checkpoint` saves and restores all of it, so a resumed run
continues exactly where its checkpoint left off. The loop fires the step,
reassignment and epoch hooks; starting, resuming and ending a run (and its
``on_run_start`` / ``on_run_end`` hooks) belong to :mod:`natkit.lifecycle`.
What the network is trained towards is the method's (:mod:`natkit.methods`).
"""

from __future__ import annotations

import contextlib
import gc
import math
from pathlib import Path

import torch
from rich.console import Console

from natkit import builders
from natkit import checkpoint as ckpt
from natkit import config as cfg
from natkit.augment import augment_batch
from natkit.datasets.loader import BatchLoader
from natkit.distributed import SINGLE, Comm, state_fingerprint
from natkit.errors import TrainingDiverged, clip
from natkit.methods import Batch, RunView
from natkit.metrics import MetricsLog
from natkit.plugins import hooks
from natkit.progress import TrainingProgress
from natkit.rundir import RunLock
from natkit.schedule import scheduled_rate
from natkit.seeding import generator, seed_for
from natkit.signals import stop_requests
from natkit.tally import EpochTally, Throughput
from natkit.transfer import prefetch, to_device


class Run:
    """A training run: its directory, config, network, optimizer and method."""

    def __init__(self, config: cfg.Config, run_dir: Path, *, console: Console | None = None,
                 lock: RunLock | None = None, comm: Comm = SINGLE) -> None:
        self.config, self.dir, self.comm = config, Path(run_dir), comm
        # held by rank 0 (the only writer) from start or resume to the end of train()
        self.lock = lock or RunLock(self.dir)
        # one rank speaks for the run
        self.console = (console or Console(stderr=True)) if comm.is_main else Console(quiet=True)
        self.device = builders.run_device(config, comm)
        self.dataset = builders.load_training_set(config)
        self.method = builders.build_method(config, self.dataset, self.device, comm)
        self.memory_format = builders.memory_format(config)
        network = builders.initial_network(config, self.dataset, self.method)
        self.model, self.forward = builders.training_network(config, network, self.device, comm)
        self.method_modules = self.method.modules()
        if self.method_modules is not None:
            self.method_modules.to(self.device)
        self.optimizer = builders.build_optimizer(config, self.model, self.method_modules)
        # completed epochs, optimizer steps taken, batches of the current epoch already done
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.augment_generator = generator(config.seed, "augment")
        torch.manual_seed(seed_for(config.seed, "train"))  # dropout
        self.hook = hooks(active=comm.is_main)  # hooks run where the files are written
        self._stop_requested = False
        self.in_method = False  # inside the method's start_epoch: collectives are allowed
        self._saved_epoch = 0
        self.tally = EpochTally.fresh(self.device)  # the current epoch's totals
        self._view = RunView(self)

    @property
    def checkpoint_path(self) -> Path:
        """Where the run's latest checkpoint lives."""
        return self.dir / ckpt.CHECKPOINT

    def save(self, *, checkpoint: bool = True, snapshot: bool = False) -> None:
        """Write checkpoint.pt (and/or this epoch's snapshot) atomically; never a non-finite network."""
        bad = ckpt.non_finite_tensor(self.model, self.method_modules)
        # per-rank BatchNorm statistics may differ: every rank stops if any rank would
        if self.comm.any(bad is not None, "checking the checkpoint is finite"):
            raise self._diverged(f"the network ({bad})" if bad else "the network on another rank")
        state = {**ckpt.run_state(self), "epoch_sums": self.tally.saved(self.comm)}
        self.comm.check_same(state_fingerprint([state["method"], state["method_modules"]]),
                             "the method's state (NAT: the assignment P; its modules) at a checkpoint")
        if self.comm.is_main:
            ckpt.save_checkpoint(state, *ckpt.checkpoint_paths(self.dir, self.epoch, checkpoint, snapshot))

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """This epoch's batches of dataset indices (full batches only: BatchNorm needs b > 1)."""
        n, b = len(self.dataset), self.config.train.batch_size
        order = torch.randperm(n, generator=generator(self.config.seed, f"order/{epoch}"))
        return order[: n - n % b].view(-1, b)

    def _diverged(self, what: str, hint: str = "try a lower train.lr") -> TrainingDiverged:
        kept = (f"the last good checkpoint (epoch {self._saved_epoch}) is kept in "
                f"{self.checkpoint_path}" if self.checkpoint_path.exists() else "no checkpoint yet")
        return TrainingDiverged(f"{what} became NaN or infinite by step {self.step} (epoch "
                                f"{self.epoch + 1}); {kept}; {hint}")

    def view(self) -> RunView:
        """The run's read-only view for hooks and methods (the same object every time)."""
        return self._view

    def release_ranks(self) -> None:
        """Drop the DDP wrapper, whose reducer holds the process group, before the group goes."""
        self.forward = self.model
        gc.collect()

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint (what Ctrl-C asks for)."""
        self._stop_requested = True

    def start_epoch(self) -> dict[str, float] | None:
        """Let the method prepare the current epoch (on start, and again on a resume inside it)."""
        self.in_method = True
        try:
            return self.method.start_epoch(self.epoch, self.view())
        except FloatingPointError:
            if ckpt.non_finite_tensor(self.model, self.method_modules) is None:  # not train.lr
                options = [f"method.{k}={v}" for k, v in self.config.method.items() if k != "name"]
                raise self._diverged(f"what method '{self.config.method['name']}' computed from a "
                                     "finite network", "check the method's options "
                                     f"({clip(', '.join(options) or 'its defaults', 200)})") from None
            raise self._diverged("the outputs") from None
        finally:
            self.in_method = False

    def train_step(self, images: torch.Tensor, indices: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float] | None]:
        """Augment, forward, let the method compute the loss, and take one SGD step.

        The host waits for the device only where the method reads (NAT's solve): the
        loss stays on the device, and is checked finite whenever the loop reads it.
        """
        b = self.config.train.batch_size
        # loaders hand over uint8 where the images are stored so: floats are made on the device
        x = augment_batch(to_device(images, self.device), self.config.augment,
                          self.augment_generator, part=(self.comm.rank * (b // self.comm.world_size), b))
        x = x.contiguous(memory_format=self.memory_format)
        amp = self.config.train.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = self.forward(x)
        batch = Batch(indices=indices, labels=labels, epoch=self.epoch, step=self.step)
        try:
            result = self.method.loss(out.float(), batch)
        except FloatingPointError:
            raise self._diverged("the features") from None
        lr = scheduled_rate(self.step, self.config.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.comm.guarded("averaging the gradients (DDP's all-reduce in backward)",
                          result.loss.backward)
        if self.method_modules is not None:  # outside DDP: average their gradients here
            self.comm.average_gradients(self.method_modules, "averaging the method's gradients")
        self.optimizer.step()
        self.step += 1
        return result.loss.detach(), result.reassigned

    def train(self, *, release_lock: bool = True) -> bool:
        """Train to ``train.epochs``; returns False if interrupted (a checkpoint is saved)."""
        if self.comm.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        self._saved_epoch = self.epoch if self.checkpoint_path.exists() else 0
        metrics_path = self.dir / ckpt.METRICS if self.comm.is_main else None  # rank 0 writes
        try:
            with stop_requests(self.request_stop), MetricsLog(metrics_path) as metrics, \
                    TrainingProgress(self.console, self.config.train.epochs) as progress, \
                    contextlib.closing(BatchLoader(  # one loader for every epoch, seeded by the run
                        self.dataset, self.config.train.num_workers,
                        generator(self.config.seed, "loader"), self.device)) as loader:
                while self.epoch < self.config.train.epochs:
                    if not self._train_epoch(metrics, progress, loader):
                        self.save()
                        progress.log(f"interrupted: checkpoint saved at step {self.step}; "
                                     f"resume with: natkit run --resume {self.dir}")
                        return False
            return True
        finally:
            if release_lock:  # natkit.lifecycle keeps it to the end of the run's life
                self.lock.release()

    def _train_epoch(self, metrics: MetricsLog, progress: TrainingProgress,
                     loader: BatchLoader) -> bool:
        epoch, t, comm, tally = self.epoch, self.config.train, self.comm, self.tally
        # every rank derives the same global batches and takes its slice of each
        share = t.batch_size // comm.world_size
        batches = self.epoch_batches(epoch)[:, comm.rank * share:(comm.rank + 1) * share]
        progress.start_epoch(epoch, len(batches), self.batch_in_epoch)
        resumed_inside = self.batch_in_epoch > 0
        prepared = self.start_epoch()
        if prepared is not None and not resumed_inside:  # else counted before the interruption
            self._reassigned(prepared)
            tally.method = {k: float(v) for k, v in prepared.items()}
        tally.restart_clock()
        window = Throughput()
        for images, indices, labels in prefetch(loader.epoch(batches[self.batch_in_epoch:]),
                                                self.device):
            loss, reassigned = self.train_step(images, indices, labels)
            self.batch_in_epoch += 1
            tally.batches_here += 1
            tally.loss += loss
            window.add(t.batch_size)
            if reassigned is not None:
                self._reassigned(reassigned)
            record = None
            if self.step % t.log_every == 0:  # the step's one host synchronisation
                value = float(comm.mean(loss, "averaging the loss over the ranks"))
                if not math.isfinite(value):
                    raise self._diverged("the loss")
                record = {"kind": "step", "epoch": epoch, "step": self.step, "loss": value,
                          "lr": scheduled_rate(self.step, t), "images_per_s": window.take(),
                          "world_size": comm.world_size}
                metrics.write(record)
            self.hook.on_step_end(run=self.view(),
                                  metrics=record or {"epoch": epoch, "step": self.step})
            progress.advance(record["loss"] if record else None, scheduled_rate(self.step, t),
                             record["images_per_s"] if record else None)
            if self._agree_to_stop():
                return False
        summary = tally.summary(comm, epoch=epoch, step=self.step, batches=self.batch_in_epoch,
                                batch_size=t.batch_size, lr=scheduled_rate(self.step, t))
        if not math.isfinite(summary["loss"]):
            raise self._diverged("the loss")
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.tally = EpochTally.fresh(self.device)
        metrics.write(summary)  # before the checkpoint: a resume truncates what follows it
        checkpoint = self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs
        snapshot = t.keep_every > 0 and self.epoch % t.keep_every == 0
        if checkpoint or snapshot:
            self.save(checkpoint=checkpoint, snapshot=snapshot)
        if checkpoint:
            self._saved_epoch = self.epoch
        progress.log_epoch(summary, t.epochs)
        self.hook.on_epoch_end(run=self.view(), metrics=summary)
        return not self._agree_to_stop()

    def _agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop: all ranks stop after the same step."""
        agreed = self.comm.any(self._stop_requested, "agreeing whether to stop")
        # a signal that lands during the vote sets the flag meanwhile: keep it for the next vote
        self._stop_requested = agreed or self._stop_requested
        return agreed

    def _reassigned(self, stats: dict[str, float]) -> None:
        self.tally.count(stats)
        self.hook.on_reassign(run=self.view(), metrics={"epoch": self.epoch, "step": self.step,
                                                        **stats})
