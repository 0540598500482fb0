"""Seeds derived per purpose, so that each source of randomness is independent and repeatable."""

from __future__ import annotations

import zlib

import torch


def seed_for(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (e.g. 'order/3'), a pure function of (seed, purpose)."""
    return (seed * 0x9E3779B97F4A7C15 + zlib.crc32(purpose.encode())) % (2**63 - 1)


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded for ``purpose``."""
    return torch.Generator().manual_seed(seed_for(seed, purpose))
