"""Batches reach the device without making the host wait, and in order."""

from __future__ import annotations

import pytest
import torch

from natkit.transfer import prefetch, to_device

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def batches(count: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(4, 3, 8, 8, generator=g), torch.arange(4) + 4 * i, torch.full((4,), i))
            for i in range(count)]


def test_prefetch_on_the_cpu_yields_every_batch_unchanged_in_order():
    source = batches(5)
    out = list(prefetch(iter(source), torch.device("cpu")))
    assert len(out) == 5
    for got, want in zip(out, source, strict=True):
        assert all(g is w for g, w in zip(got, want, strict=True))


def test_prefetch_of_nothing_yields_nothing():
    assert list(prefetch(iter([]), torch.device("cpu"))) == []


def test_to_device_on_the_cpu_is_the_same_tensor():
    t = torch.arange(3)
    assert to_device(t, torch.device("cpu")) is t


@NO_GPU
def test_prefetch_on_cuda_delivers_equal_batches_on_the_device_in_order():
    source = batches(6)
    device = torch.device("cuda")
    out = []
    for batch in prefetch(iter(source), device):
        # work on the consumer's stream, as a training step would, before the next copy lands
        out.append(tuple((t.float() * 1).cpu() for t in batch))
        assert all(t.device.type == "cuda" for t in batch)
    for got, want in zip(out, source, strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w.float())


@NO_GPU
def test_to_device_on_cuda_copies_through_pinned_memory():
    t = torch.arange(1000, dtype=torch.float32)
    moved = to_device(t, torch.device("cuda"))
    assert moved.device.type == "cuda"
    assert torch.equal(moved.cpu(), t)
