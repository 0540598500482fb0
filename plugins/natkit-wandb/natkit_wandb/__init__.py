"""natkit-wandb: a natkit callback that logs a run to Weights & Biases, offline unless logged in."""

__version__ = "0.1.0"
