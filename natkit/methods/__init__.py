"""Training methods: the Method interface, and NAT and supervised training as built-ins."""

from natkit.methods.base import Batch, Method, MethodContext, StepLoss

__all__ = ["Batch", "Method", "MethodContext", "StepLoss"]
