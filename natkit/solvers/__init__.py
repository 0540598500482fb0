"""Assignment solvers: ``solver(cost[b, b]) -> LongTensor[b]``, the column of each row."""

from natkit.solvers.base import Solver, assignment_cost, check_cost, is_permutation

__all__ = ["Solver", "assignment_cost", "check_cost", "is_permutation"]
