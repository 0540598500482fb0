"""Target distributions: pure functions from target ids to unit vectors."""

from natkit.targets.base import Targets, hashed_normal, hashed_uniform

__all__ = ["Targets", "hashed_normal", "hashed_uniform"]
