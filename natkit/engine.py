"""The training engine: one plain PyTorch loop, whatever the method.

A :class:`Run` owns everything a run's result depends on: the network, the
optimizer, the method's state, the step counters and the random generators.
All of it goes into one checkpoint, so a resumed run continues exactly where
the checkpoint left off. The engine keeps the loop, checkpoints, signals and
hooks; what the network is trained towards is the method's
(:mod:`natkit.methods`). It asks the registries for components and never
imports a concrete one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import natkit
from natkit import config as cfg
from natkit.augment import random_crop, random_resized_crop
from natkit.builders import build_method, initial_network, load_dataset, pick_device, read_run_config
from natkit.checkpoint import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    atomic_write_text,
    first_non_finite,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    snapshot_path,
)
from natkit.datasets.loader import BatchLoader
from natkit.distributed import SINGLE, Comm, state_fingerprint
from natkit.errors import CheckpointError, ConfigError, NatkitError, TrainingDiverged
from natkit.methods import Batch
from natkit.plugins import get_host
from natkit.progress import TrainingProgress
from natkit.rundir import RunLock, check_new_run_dir
from natkit.runview import RunView
from natkit.schedule import learning_rate
from natkit.seeding import generator, seed_for
from natkit.transfer import prefetch, to_device, to_float

CHECKPOINT_FORMAT = 2  # 2: the method's state replaces format 1's NAT-only assignment
# Settings a resumed run may change: how it runs, not what it trains (world_size and
# train.sync_bn change BatchNorm statistics and dropout pairing, see docs/scaling.md).
RESUMABLE_CHANGES = ("device", "world_size", "train.epochs", "train.num_workers",
                     "train.log_every", "train.checkpoint_every", "train.keep_every",
                     "train.channels_last",
                     "train.compile", "train.sync_bn")


class Run:
    """A training run: its directory, config, network, optimizer and method."""

    def __init__(self, config: cfg.Config, run_dir: Path, *, console: Console | None = None,
                 lock: RunLock | None = None, comm: Comm = SINGLE) -> None:
        self.config = config
        self.dir = Path(run_dir)
        self.comm = comm
        # held by rank 0 (the only writer) from start/resume to the end of train()
        self.lock = lock or RunLock(self.dir)
        self.console = console or Console(stderr=True)
        if not comm.is_main:  # one rank speaks for the run
            self.console = Console(stderr=True, quiet=True)
        if config.world_size != comm.world_size:
            raise ConfigError(f"world_size: the config says {config.world_size} but this run has "
                              f"{comm.world_size} process(es); launch it with torchrun "
                              f"--nproc_per_node={config.world_size}, or drop world_size")
        if config.train.batch_size % comm.world_size:
            raise ConfigError(f"train.batch_size: {config.train.batch_size} is the global batch, "
                              f"split over {comm.world_size} ranks; it must be a multiple of "
                              f"{comm.world_size}")
        self.device = pick_device(config.device)
        if comm.distributed:
            self.device = comm.device  # each rank on its LOCAL_RANK's GPU, or the CPU
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
        self.dataset = load_dataset(config, config.train.split)
        n = len(self.dataset)
        if config.train.batch_size > n:
            raise ConfigError(f"train.batch_size: {config.train.batch_size} is larger than the "
                              f"{n} training images")
        classes = len(torch.unique(self.dataset.labels[self.dataset.labels >= 0]))
        if config.eval.enabled and classes < 2:
            raise ConfigError(f"data: the '{config.train.split}' split of {config.data['name']} has "
                              f"{classes} labelled class(es); the probes need at least 2 (add class "
                              f"folders, or set eval.enabled=false to train without evaluating)")
        self.method = build_method(config, self.dataset, self.device, comm)
        self.memory_format = (torch.channels_last if config.train.channels_last
                              else torch.contiguous_format)
        self.model, self.forward = self._network()
        taps = self.model.backbone.tap_names
        if config.eval.enabled and config.eval.layer not in taps:  # fail now, not after training
            raise ConfigError(f"eval.layer: '{config.eval.layer}' is not a tap of backbone "
                              f"'{config.backbone['name']}'; valid: {', '.join(taps)}")
        self.method_modules = self.method.modules()
        parameters = list(self.model.parameters())
        if self.method_modules is not None:
            self.method_modules.to(self.device)
            parameters += list(self.method_modules.parameters())
        self.optimizer = torch.optim.SGD(
            parameters, lr=config.train.lr, momentum=config.train.momentum,
            weight_decay=config.train.weight_decay)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the current epoch already done
        self.augment_generator = generator(config.seed, "augment")
        torch.manual_seed(seed_for(config.seed, "train"))  # dropout
        self.hook = get_host().hook if comm.is_main else _SILENT  # hooks run where files are written
        self._stop_requested = False
        self._in_method = False  # inside the method's start_epoch: collectives are allowed
        self._saved_epoch = 0
        self._sums = self._fresh_sums()  # the current epoch's loss and reassignment totals
        self._view = RunView(self)

    def _network(self) -> tuple[torch.nn.Module, Any]:
        """The network on its device, and the callable that trains it (DDP, compiled)."""
        config, comm = self.config, self.comm
        model = initial_network(config, self.dataset, self.method)
        sync_bn = config.train.sync_bn
        if comm.distributed and sync_bn and self.device.type != "cuda":
            raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm needs CUDA; on the CPU "
                              "set it to false or null (BatchNorm statistics per rank)")
        if comm.distributed and (sync_bn or (sync_bn is None and self.device.type == "cuda")):
            # same parameters and buffers, so the same checkpoint keys
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device).to(memory_format=self.memory_format)
        # the wrapped and compiled callables share the module's parameters; checkpoints keep
        # the plain module's keys
        forward: Any = model
        if comm.distributed:  # gradients averaged over the ranks
            forward = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[comm.local_rank] if self.device.type == "cuda" else None)
        if config.train.compile:
            forward = torch.compile(forward)
        return model, forward

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on, as tensors and plain data."""
        return {
            "format": CHECKPOINT_FORMAT,
            "natkit_version": natkit.__version__,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "method_modules": (self.method_modules.state_dict()
                               if self.method_modules is not None else None),
            "rng": {
                "torch": torch.get_rng_state(),
                # this rank's own GPU: every rank draws alike, so rank 0's state suits them all
                "cuda": ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda"
                         else []),
                "augment": self.augment_generator.get_state(),
            },
        }

    def _fresh_sums(self, loss: float = 0.0, changed: float = 0.0, reassigned: int = 0,
                    method: dict[str, float] | None = None) -> dict[str, Any]:
        # method: the statistics the method's start_epoch returned for this epoch
        return {"loss": torch.tensor(loss, device=self.device), "changed": changed,
                "reassigned": reassigned, "method": dict(method or {})}

    def save(self, *, checkpoint: bool = True, snapshot: bool = False) -> None:
        """Write checkpoint.pt (and/or this epoch's snapshot) atomically; never a non-finite network."""
        bad = first_non_finite(self.model.state_dict())
        if bad is None and self.method_modules is not None:
            bad = first_non_finite(self.method_modules.state_dict())
        # per-rank BatchNorm statistics may differ: every rank stops if any rank would
        if self.comm.any(bad is not None, "checking the checkpoint is finite"):
            raise self._diverged(f"the network ({bad[0]})" if bad is not None
                                 else "the network on another rank")
        state = self.state_dict()
        # a run stopped mid-epoch: the epoch's record, once resumed, covers all its batches
        state["epoch_sums"] = {
            "loss": float(self.comm.mean(self._sums["loss"], "averaging the epoch's loss")),
            "changed": self._sums["changed"], "reassigned": self._sums["reassigned"],
            "method": self._sums["method"]}
        self.comm.check_same(state_fingerprint([state["method"], state["method_modules"]]),
                             "the method's state (NAT: the assignment P; its modules) at a checkpoint")
        if not self.comm.is_main:
            return
        paths = [self.checkpoint_path] if checkpoint else []
        if snapshot:
            paths.append(snapshot_path(self.dir, self.epoch))
            paths[-1].parent.mkdir(exist_ok=True)
        save_checkpoint(state, *paths)

    def load(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state into this run."""
        path = self.checkpoint_path
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint '{path}' has format {state.get('format')!r}; "
                                  f"this natkit reads format {CHECKPOINT_FORMAT}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
            if self.method_modules is not None:
                self.method_modules.load_state_dict(state["method_modules"])
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and rng.get("cuda"):
                torch.cuda.set_rng_state(rng["cuda"][0], self.device)
            self.augment_generator.set_state(rng["augment"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.batch_in_epoch = int(state["batch_in_epoch"])
            self._sums = self._fresh_sums(**state.get("epoch_sums", {}))
            per_epoch = len(self.dataset) // self.config.train.batch_size
            # batch_in_epoch == per_epoch: stopped after the last batch, before the epoch closed
            if not (0 <= self.batch_in_epoch <= per_epoch and self.epoch >= 0
                    and self.step == self.epoch * per_epoch + self.batch_in_epoch):
                raise ValueError(f"its counters do not add up (epoch {self.epoch}, batch "
                                 f"{self.batch_in_epoch}, step {self.step}, with {per_epoch} "
                                 f"batches an epoch)")
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
                lines = lines[1:]  # torch's header says nothing about what differs
            detail = lines[0] if lines else type(exc).__name__
            raise CheckpointError(
                f"checkpoint '{path}' does not fit this run's config: {detail[:200]}"
            ) from None

    # ------------------------------------------------------------ training

    def _lr(self) -> float:
        t = self.config.train
        return learning_rate(self.step, t.lr, warmup=t.warmup_steps, t0=t.lr_t0, gamma=t.lr_gamma)

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """This epoch's batches of dataset indices (full batches only: BatchNorm needs b > 1)."""
        n, b = len(self.dataset), self.config.train.batch_size
        order = torch.randperm(n, generator=generator(self.config.seed, f"order/{epoch}"))
        return order[: n - n % b].view(-1, b)

    def _diverged(self, what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint (epoch {self._saved_epoch}) is kept in "
                f"{self.checkpoint_path}" if self.checkpoint_path.exists() else "no checkpoint yet")
        return TrainingDiverged(f"{what} became NaN or infinite by step {self.step} (epoch "
                                f"{self.epoch + 1}); {kept}; try a lower train.lr")

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

    @torch.no_grad()
    def outputs(self) -> torch.Tensor:
        """The network's outputs for every training image, in index order (eval mode, no augmentation).

        Under torchrun every rank computes a share and the shares are gathered, so it is a
        collective: a method may call it from ``start_epoch`` (every rank does), a hook may not
        (hooks run on rank 0 only).
        """
        if self.comm.distributed and not self._in_method:
            raise NatkitError("outputs() gathers over the ranks under torchrun: call it from a "
                              "method's start_epoch (every rank runs it), not from a hook")
        if self.comm.distributed:  # per-rank BatchNorm statistics: use rank 0's, as DDP will
            for buffer in self.model.buffers():
                buffer.copy_(self.comm.broadcast(buffer, "sharing rank 0's BatchNorm statistics"))
        n, ranks = len(self.dataset), self.comm.world_size
        share = -(-n // ranks)  # each rank computes one share; the last is padded, then cut
        mine = torch.arange(self.comm.rank * share, (self.comm.rank + 1) * share).clamp(max=n - 1)
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = [self.model(to_device(self.dataset.get_batch(idx), self.device)
                                 .contiguous(memory_format=self.memory_format)).float()
                      for idx in mine.split(self.config.eval.batch_size)]
        finally:
            self.model.train(was_training)
        return self.comm.all_gather(torch.cat(chunks), "gathering the outputs of every image")[:n]

    def start_epoch(self) -> dict[str, float] | None:
        """Let the method prepare the current epoch (on start, and again on a resume inside it)."""
        self._in_method = True
        try:
            return self.method.start_epoch(self.epoch, self.view())
        except FloatingPointError:
            raise self._diverged("the outputs") from None
        finally:
            self._in_method = False

    def train_step(self, images: torch.Tensor, indices: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float] | None]:
        """Augment, forward, let the method compute the loss, and take one SGD step.

        The host never waits for the device here, except for what the method
        itself reads (NAT's solve when it reassigns): the returned loss stays
        on the device, and the caller checks it is finite when it reads it
        (every ``train.log_every`` steps and at the end of each epoch), before
        any checkpoint is written.
        """
        a = self.config.augment
        b = self.config.train.batch_size
        # loaders hand over uint8 where the images are stored so: floats are made on the device
        x = to_device(images, self.device)
        part = (self.comm.rank * (b // self.comm.world_size), b)
        if a.crop_size is not None:  # the authors' fixed-size crops, cut before the floats
            x = to_float(random_crop(x, self.augment_generator, a.crop_size, a.flip, part=part))
        else:
            x = random_resized_crop(to_float(x), self.augment_generator, a.crop_scale,
                                    a.crop_ratio, a.flip, part=part)
        x = x.contiguous(memory_format=self.memory_format)
        amp = self.config.train.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = self.forward(x)
        batch = Batch(indices=indices, labels=labels, epoch=self.epoch, step=self.step)
        try:
            result = self.method.loss(out.float(), batch)
        except FloatingPointError:
            raise self._diverged("the features") from None
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if self.method_modules is not None:  # outside DDP: average their gradients here
            self.comm.average_gradients(self.method_modules, "averaging the method's gradients")
        self.optimizer.step()
        self.step += 1
        return result.loss.detach(), result.reassigned

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C is immediate

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        # SIGTERM too: torchrun forwards it, and schedulers send it before they kill a job
        previous_term = signal.signal(signal.SIGTERM, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)

    def train(self) -> bool:
        """Train to ``train.epochs``; returns False if interrupted (a checkpoint is saved)."""
        if not self.comm.is_main:
            return self._train()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            return self._train()
        finally:
            self.lock.release()

    @contextlib.contextmanager
    def _data_loader(self) -> Iterator[BatchLoader]:
        """The run's one loader: its workers start once, serve every epoch, and stop at the end.

        Their base seed comes from the run's seed alone, so a resumed run's workers start
        as the first run's did (natkit's datasets draw no random numbers in workers).
        """
        loader = BatchLoader(self.dataset, self.config.train.num_workers,
                             generator(self.config.seed, "loader"), self.device)
        try:
            yield loader
        finally:
            loader.close()

    def _train(self) -> bool:
        self._saved_epoch = self.epoch if self.checkpoint_path.exists() else 0
        self.hook.on_run_start(run=self.view())
        total = self.config.train.epochs
        # only rank 0 writes the run directory
        metrics_path = self.dir / METRICS if self.comm.is_main else Path(os.devnull)
        with self._interruptible(), open(metrics_path, "a") as metrics, \
                TrainingProgress(self.console, total) as progress, \
                self._data_loader() as loader:
            while self.epoch < total:
                if not self._train_epoch(metrics, progress, loader):
                    self.save()
                    progress.log(f"interrupted: checkpoint saved at step {self.step}; "
                                 f"resume with: natkit run --resume {self.dir}")
                    return False
        return True

    def _train_epoch(self, metrics: Any, progress: TrainingProgress,
                     loader: BatchLoader) -> bool:
        epoch, t, comm = self.epoch, self.config.train, self.comm
        # every rank derives the same global batches and takes its slice of each
        share = t.batch_size // comm.world_size
        batches = self.epoch_batches(epoch)[:, comm.rank * share:(comm.rank + 1) * share]
        progress.start_epoch(epoch, len(batches), self.batch_in_epoch)
        sums = self._sums
        resumed_inside = self.batch_in_epoch > 0
        prepared = self.start_epoch()
        if prepared is not None and not resumed_inside:  # else counted before the interruption
            self._reassigned(prepared, sums)
            sums["method"] = {k: float(v) for k, v in prepared.items()}
        started = window_start = time.perf_counter()
        window_images = 0
        done_here = 0
        stream = prefetch(loader.epoch(batches[self.batch_in_epoch:]), self.device)
        for images, indices, labels in stream:
            loss, reassigned = self.train_step(images, indices, labels)
            self.batch_in_epoch += 1
            done_here += 1
            window_images += t.batch_size
            sums["loss"] += loss
            if reassigned is not None:
                self._reassigned(reassigned, sums)
            record = None
            if self.step % t.log_every == 0:
                # the step's one host synchronisation, every log_every steps
                value = float(comm.mean(loss, "averaging the loss over the ranks"))
                if not math.isfinite(value):
                    raise self._diverged("the loss")
                now = time.perf_counter()
                speed = window_images / max(now - window_start, 1e-9)
                record = {"kind": "step", "epoch": epoch, "step": self.step,
                          "loss": value, "lr": self._lr(), "images_per_s": speed,
                          "world_size": comm.world_size}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                window_start, window_images = now, 0
            self.hook.on_step_end(run=self.view(),
                                  metrics=record or {"epoch": epoch, "step": self.step})
            progress.advance(record["loss"] if record else None, self._lr(),
                             record["images_per_s"] if record else None)
            if self._agree_to_stop():
                return False
        mean_loss = float(comm.mean(sums["loss"], "averaging the epoch's loss")) / max(
            self.batch_in_epoch, 1)
        if not math.isfinite(mean_loss):
            raise self._diverged("the loss")
        seconds = time.perf_counter() - started
        self.epoch += 1
        self.batch_in_epoch = 0
        self._sums = self._fresh_sums()
        summary = {
            "kind": "epoch", "epoch": epoch, "step": self.step,
            "loss": mean_loss,
            "changed": sums["changed"] / sums["reassigned"] if sums["reassigned"] else None,
            "lr": self._lr(), "seconds": seconds,
            "images_per_s": done_here * t.batch_size / max(seconds, 1e-9),
            "world_size": comm.world_size,
        }
        if sums["method"]:  # all of start_epoch's statistics, not only the share changed
            summary["method"] = sums["method"]
        metrics.write(json.dumps(summary) + "\n")  # before the checkpoint: see _truncate_metrics
        metrics.flush()
        checkpoint = self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs
        snapshot = t.keep_every > 0 and self.epoch % t.keep_every == 0
        if checkpoint or snapshot:
            self.save(checkpoint=checkpoint, snapshot=snapshot)
        if checkpoint:
            self._saved_epoch = self.epoch
        changed = (f"  changed {summary['changed']:.1%}" if summary["changed"] is not None else "")
        progress.log(f"epoch {self.epoch}/{t.epochs}  loss {summary['loss']:.4f}{changed}  "
                     f"lr {summary['lr']:.4g}  {summary['images_per_s']:,.0f} img/s  "
                     f"{seconds:.1f} s")
        self.hook.on_epoch_end(run=self.view(), metrics=summary)
        return not self._agree_to_stop()

    def _agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop: all ranks stop after the same step."""
        agreed = self.comm.any(self._stop_requested, "agreeing whether to stop")
        # a signal that lands during the vote sets the flag meanwhile: keep it for the next vote
        self._stop_requested = agreed or self._stop_requested
        return agreed

    def _reassigned(self, stats: dict[str, float], sums: dict[str, Any]) -> None:
        if "changed" in stats:
            sums["changed"] += stats["changed"]
            sums["reassigned"] += 1
        self.hook.on_reassign(run=self.view(), metrics={"epoch": self.epoch, "step": self.step,
                                                        **stats})


class _Silent:
    """The hook relay of a rank other than 0: every hook is a no-op there."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


_SILENT = _Silent()


# ---------------------------------------------------------------- starting and resuming


def start(config: cfg.Config, run_dir: Path, *, console: Console | None = None,
          comm: Comm = SINGLE) -> Run:
    """Create a run directory (refusing one that already holds a run) and a fresh run.

    Under torchrun every rank checks the directory and builds the run; rank 0 alone
    writes it.
    """
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir)
    run = Run(config, run_dir, console=console, comm=comm)
    comm.barrier("checking the run directory")  # before rank 0 writes into it
    if not comm.is_main:
        comm.barrier("writing config.yaml")
        return run
    run_dir.mkdir(parents=True, exist_ok=True)
    run.lock.acquire()
    try:
        check_new_run_dir(run_dir)  # again under the lock: another start may have won the race
        atomic_write_text(run_dir / CONFIG, cfg.dump(config))
    except BaseException:
        run.lock.release()
        raise
    (run_dir / METRICS).unlink(missing_ok=True)
    comm.barrier("writing config.yaml")
    return run


def resume(run_dir: Path, changes: cfg.Config | None = None, *,
           console: Console | None = None, comm: Comm = SINGLE) -> Run:
    """Reopen a run from its checkpoint; ``changes`` may alter only RESUMABLE_CHANGES.

    A checkpoint does not depend on the number of ranks: a run trained under
    torchrun resumes in one process, or on another number of ranks, and back.
    """
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    # the number of ranks is how this resume runs, not part of what it computes
    changes = dataclasses.replace(changes or saved, world_size=comm.world_size)
    lock = RunLock(run_dir)
    if comm.is_main:
        lock.acquire()  # before anything is truncated or rewritten
    try:
        run = _reopen(run_dir, saved, changes, lock, console, comm)
    except BaseException:
        lock.release()
        raise
    comm.barrier("resuming")  # rank 0 has rewritten config.yaml and metrics.jsonl
    return run


def _reopen(run_dir: Path, saved: cfg.Config, changes: cfg.Config | None, lock: RunLock,
            console: Console | None, comm: Comm) -> Run:
    if comm.is_main:
        for stale in run_dir.glob(".*.tmp-*"):  # a write cut short by a kill; the old is intact
            stale.unlink()
    state = load_checkpoint(run_dir / CHECKPOINT) if (run_dir / CHECKPOINT).exists() else None
    if state is not None and state.get("config") is not None:
        # a resume may have changed a resumable setting in config.yaml since the checkpoint
        edited = [key for key in cfg.difference(state["config"], saved.to_dict())
                  if key not in RESUMABLE_CHANGES]
        if edited:
            raise CheckpointError(f"'{run_dir / CONFIG}' no longer matches its checkpoint "
                                  f"({edited[0]} differs); restore it or start a new run")
    config = saved
    if changes is not None:
        changed = cfg.difference(saved.to_dict(), changes.to_dict())
        fixed = [k for k in changed if k not in RESUMABLE_CHANGES]
        if fixed:
            raise ConfigError(f"--resume: {fixed[0]} differs from the run's config.yaml; a resumed "
                              f"run may only change {', '.join(RESUMABLE_CHANGES)}")
        config = changes
    run = Run(config, run_dir, console=console, lock=lock, comm=comm)
    if state is not None:
        run.load(state)
    if comm.is_main:
        _truncate_metrics(run_dir / METRICS, run.step)
        if changes is not None:
            atomic_write_text(run_dir / CONFIG, cfg.dump(config))
    return run


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint, which the resumed run will write again."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

