"""The network's outputs for a whole dataset, shared out over the ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from natkit.distributed import Comm
from natkit.transfer import to_device


@torch.no_grad()
def dataset_outputs(model: nn.Module, dataset: Any, comm: Comm, device: torch.device,
                    batch_size: int, memory_format: torch.memory_format) -> torch.Tensor:
    """``model``'s outputs for every image of ``dataset`` in index order (eval mode, no augmentation).

    Under torchrun every rank computes a share and the shares are gathered: every
    rank must call it. Per-rank BatchNorm statistics are replaced by rank 0's first,
    as DDP would.
    """
    if comm.distributed:
        for buffer in model.buffers():
            buffer.copy_(comm.broadcast(buffer, "sharing rank 0's BatchNorm statistics"))
    n, ranks = len(dataset), comm.world_size
    share = -(-n // ranks)  # each rank computes one share; the last is padded, then cut
    mine = torch.arange(comm.rank * share, (comm.rank + 1) * share).clamp(max=n - 1)
    was_training = model.training
    model.eval()
    try:
        chunks = [model(to_device(dataset.get_batch(idx), device)
                        .contiguous(memory_format=memory_format)).float()
                  for idx in mine.split(batch_size)]
    finally:
        model.train(was_training)
    return comm.all_gather(torch.cat(chunks), "gathering the outputs of every image")[:n]
