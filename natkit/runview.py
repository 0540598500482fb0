"""A read-only view of a training run, for plugins' hooks and methods.

:class:`RunView` is defined beside :class:`~natkit.methods.Method`, whose
``start_epoch`` receives one, so that the two need not import each other; this
module is its public address.
"""

from natkit.methods.base import RunView

__all__ = ["RunView"]
