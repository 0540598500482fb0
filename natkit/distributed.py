"""Training on several processes with torch.distributed, as launched by torchrun.

A :class:`Comm` is the process group a run trains in. A plain ``natkit run`` has
one process and gets :data:`SINGLE`, whose operations are the identity, so the
single-process path never touches torch.distributed. Under ``torchrun`` (which
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), :func:`from_environment`
starts the process group: NCCL when the run is on CUDA, gloo on the CPU.

Every collective names what it is for. On gloo, a run that a dead rank leaves
waiting fails within :data:`TIMEOUT_ENV` seconds with a message naming it; on
NCCL, PyTorch's watchdog aborts the process after that timeout instead. Under
torchrun, a rank that dies makes torchrun stop the others and name it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from natkit.errors import ConfigError, NatkitError

TIMEOUT_ENV = "NATKIT_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 300
CPU = torch.device("cpu")


class RankError(NatkitError):
    """Another rank failed, died or disagrees; this one stops too."""

    exit_code = 1


@dataclass(frozen=True)
class Comm:
    """The processes a run trains in: their number, this one's rank, and collectives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU  # where the backend's tensors live
    # a gloo group for the small votes on NCCL runs: a CPU all-reduce that does not make the
    # host wait for the GPU's queued work (None: the default group, already on the CPU)
    cpu_group: Any = None

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes the run directory."""
        return self.rank == 0

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise RankError(f"rank {self.rank}: {what} failed: another rank stopped, died or "
                            f"timed out ({first.strip()[:160]})") from None

    def guarded(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; under torchrun, a failure of the collectives it runs inside
        (DDP's all-reduce in ``backward``) becomes one RankError line naming ``what``."""
        return self._call(what, fn, *args, **kwargs) if self.distributed else fn(*args, **kwargs)

    def all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on each), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self._call(what, dist.all_gather, parts, local)
        return torch.cat(parts).to(tensor.device)

    def broadcast(self, tensor: torch.Tensor, what: str, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``tensor`` on every rank (same shape and dtype on each)."""
        if not self.distributed:
            return tensor
        buffer = tensor.detach().to(self.device).contiguous()
        self._call(what, dist.broadcast, buffer, src)
        return buffer.to(tensor.device)

    def mean(self, value: torch.Tensor, what: str) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if not self.distributed:
            return value
        buffer = value.detach().float().reshape(1).to(self.device)
        self._call(what, dist.all_reduce, buffer, dist.ReduceOp.SUM)
        return (buffer / self.world_size).reshape(()).to(value.device)

    def average_gradients(self, module: torch.nn.Module, what: str) -> None:
        """Replace each parameter's gradient by its mean over the ranks (what DDP does)."""
        if not self.distributed:
            return
        params = list(module.parameters())
        for p in params:  # a parameter unused on one rank must still join the same all-reduce
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.detach().reshape(-1) for p in params]).to(self.device)
        self._call(what, dist.all_reduce, flat, dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def any(self, flag: bool, what: str) -> bool:
        """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        buffer = torch.tensor([1.0 if flag else 0.0],
                              device=CPU if self.cpu_group is not None else self.device)
        self._call(what, dist.all_reduce, buffer, dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(buffer.item() > 0)

    def barrier(self, what: str) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            self._call(what, dist.barrier)

    def check_same(self, text: str, what: str) -> None:
        """Stop with a RankError naming the first rank whose ``text`` differs from rank 0's."""
        if not self.distributed:
            return
        digest = hashlib.sha256(text.encode()).digest()[:8]
        mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], dtype=torch.int64)
        every = self.all_gather(mine.to(self.device), what).cpu().tolist()
        differ = [r for r, value in enumerate(every) if value != every[0]]
        if differ:
            raise RankError(f"{what}: rank {differ[0]} differs from rank 0; the ranks no longer "
                            "train the same run")


SINGLE = Comm()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) set this process's rank and world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def from_environment(device_spec: str) -> Comm:
    """The process group torchrun describes, started (or :data:`SINGLE` for one process)."""
    if not launched_by_torchrun():
        return SINGLE
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") \
            from None
    if world <= 1:
        return SINGLE
    cuda = device_spec != "cpu" and torch.cuda.is_available()
    if cuda and device_spec.startswith("cuda:"):
        raise ConfigError(f"device: '{device_spec}' names one GPU, but under torchrun each rank "
                          "takes its LOCAL_RANK's GPU; use device=cuda (or auto)")
    if cuda and local >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local} has no GPU: this machine has "
                          f"{torch.cuda.device_count()}; start at most that many ranks per node "
                          "(torchrun --nproc_per_node)")
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}: expected a number of seconds, got "
                          f"'{os.environ[TIMEOUT_ENV]}'") from None
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=seconds),
                                    **({"device_id": device} if cuda else {}))
        except (RuntimeError, dist.DistError) as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise RankError(f"rank {rank}: could not join the other {world - 1} rank(s): "
                            f"{first.strip()[:160]}") from None
    cpu_group = dist.new_group(backend="gloo") if cuda else None
    return Comm(rank=rank, world_size=world, local_rank=local, device=device,
                cpu_group=cpu_group)


def shutdown(comm: Comm) -> None:
    """Leave the process group (a no-op for one process)."""
    if comm.distributed and dist.is_initialized():
        dist.destroy_process_group()


def state_fingerprint(state: Any) -> str:
    """A text that changes with any tensor or value in a (nested) state dict: its checksum input."""
    parts: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
            digest = hashlib.sha256(raw).hexdigest()[:16]
            parts.append(f"{path}:{data.dtype}:{tuple(data.shape)}:{digest}")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{path}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            parts.append(f"{path}={value!r}")

    walk(state, "")
    return "\n".join(parts)
