"""The step-size schedule: linear warm-up, then the paper's l0 / (1 + gamma (t - t0))."""

from __future__ import annotations

from typing import Any


def learning_rate(step: int, base: float, *, warmup: int = 0, t0: int = 0,
                  gamma: float = 0.0) -> float:
    """Step size at (0-based) ``step``: warm-up, constant for t0 steps, then 1/t decay."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = step - warmup
    if t < t0:
        return base
    return base / (1.0 + gamma * (t - t0))


def scheduled_rate(step: int, train: Any) -> float:
    """Step size at ``step`` under a config's ``train`` section (lr, warmup_steps, lr_t0, lr_gamma)."""
    return learning_rate(step, train.lr, warmup=train.warmup_steps, t0=train.lr_t0,
                         gamma=train.lr_gamma)
