"""Preprocessors: frozen first layers that run on the device, declaring ``out_channels``."""

from natkit.preprocess.base import Preprocessor, to_channels

__all__ = ["Preprocessor", "to_channels"]
