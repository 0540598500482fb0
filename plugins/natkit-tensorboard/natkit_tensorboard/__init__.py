"""natkit-tensorboard: a natkit callback that logs a run to TensorBoard in RUN_DIR/tensorboard."""

__version__ = "0.1.0"
