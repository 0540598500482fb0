"""The step-size schedule: linear warm-up, then the paper's l0 / (1 + gamma (t - t0))."""

from __future__ import annotations


def learning_rate(step: int, base: float, *, warmup: int = 0, t0: int = 0,
                  gamma: float = 0.0) -> float:
    """Step size at (0-based) ``step``: warm-up, constant for t0 steps, then 1/t decay."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = step - warmup
    if t < t0:
        return base
    return base / (1.0 + gamma * (t - t0))
