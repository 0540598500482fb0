"""Assignment solvers: ``solver(cost[b, b]) -> LongTensor[b]``, the column of each row."""

from natkit.solvers.base import (
    InvalidSolution,
    Solver,
    assignment_cost,
    check_cost,
    is_permutation,
    solution_problem,
)

__all__ = ["InvalidSolution", "Solver", "assignment_cost", "check_cost", "is_permutation",
           "solution_problem"]
