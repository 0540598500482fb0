"""Training methods: the Method interface, and NAT and supervised training as built-ins."""

from natkit.methods.base import Batch, ComponentFactory, Method, MethodContext, RunView, StepLoss

__all__ = ["Batch", "ComponentFactory", "Method", "MethodContext", "RunView", "StepLoss"]
