"""Backbones: networks that map images to pooled features ``[batch, num_features]``."""

from natkit.backbones.base import Backbone

__all__ = ["Backbone"]
