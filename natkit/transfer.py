"""Host-to-device copies that never make the host wait for the GPU.

A plain ``tensor.to("cuda")`` from pageable memory synchronises the stream: the
host stops until every queued kernel has run, so the next step cannot be
queued behind the current one. Pinned memory and ``non_blocking`` copies keep
the queue full; :func:`prefetch` also starts the next batch's copy on a side
stream while the current step computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

Batch = TypeVar("Batch", bound=tuple)  # of tensors


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from the CPU to CUDA through pinned memory, without waiting."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1], where they are (after the copy: 4x fewer bytes moved)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)  # the same rounding on every device: bit-exact
    return images


def prefetch(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Yield each tuple of tensors from ``batches`` on ``device``, copying the next one ahead.

    On CUDA the copies run on a side stream, and the consumer's stream waits
    for them (and keeps their memory alive) only when the batch is handed over.
    On the CPU it moves nothing and yields the batches unchanged, in order.
    """
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)
    source = iter(batches)

    def start(batch: Batch) -> tuple[Batch, torch.cuda.Event]:
        with torch.cuda.stream(stream):
            moved = tuple(to_device(t, device) for t in batch)
            ready = torch.cuda.Event()
            ready.record(stream)
        return moved, ready

    pending = None
    for batch in source:
        upcoming = start(batch)  # queued before the consumer's step, so the two overlap
        if pending is not None:
            yield _hand_over(*pending, device)
        pending = upcoming
    if pending is not None:
        yield _hand_over(*pending, device)


def _hand_over(batch: Batch, ready: torch.cuda.Event, device: torch.device) -> Batch:
    """Make the current stream wait for ``batch``'s copies and own its memory from now on."""
    current = torch.cuda.current_stream(device)
    current.wait_event(ready)
    for t in batch:
        t.record_stream(current)  # freed memory is reused only after the current stream's work
    return batch
