"""A solver's answer is validated before it touches P, whoever wrote the solver."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import natkit
from natkit import lifecycle
from natkit.cli import app
from natkit.errors import SolverError
from natkit.solvers import InvalidSolution, is_permutation, solution_problem
from natkit.testing import TINY

BAD_ANSWERS = {
    "zeros": lambda cost: torch.zeros(cost.shape[0], dtype=torch.int64),
    "short": lambda cost: torch.arange(cost.shape[0] - 1),
    "out of range": lambda cost: torch.arange(cost.shape[0]) + 1,
    "floats": lambda cost: torch.arange(cost.shape[0], dtype=torch.float32),
    "a list": lambda cost: list(range(cost.shape[0])),
    "negative": lambda cost: -torch.arange(cost.shape[0]),
}


def factory_of(answer):
    """A factory without options (its signature is the config's schema)."""

    def create():
        return answer

    return create


class BadSolvers:
    """A plugin registering one solver per kind of wrong answer."""

    @natkit.hookimpl
    def register_solvers(self, register):
        for name, answer in BAD_ANSWERS.items():
            register(name.replace(" ", "-"), factory_of(answer))


@pytest.mark.parametrize("name", list(BAD_ANSWERS))
def test_a_bad_answer_stops_the_run_with_one_line_naming_the_solver(name, host, tmp_path):
    host.register(BadSolvers(), name="bad-solvers")
    solver = name.replace(" ", "-")
    args = ["run", "--no-eval", "--out", str(tmp_path / "run")]
    for text in (*TINY, f"solver.name={solver}"):
        args += ["--set", text]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert f"solver '{solver}'" in lines[-1]
    assert "a solver must return a permutation of 0..15" in lines[-1]
    assert "Traceback" not in result.stderr


def test_p_is_untouched_when_the_answer_is_refused(tiny_config, tmp_path, host):
    host.register(BadSolvers(), name="bad-solvers")
    run = lifecycle.start(tiny_config("solver.name=zeros"), tmp_path / "run")
    before = run.method.assignment.perm.clone()
    with pytest.raises(SolverError, match="not each of 0..15 once"):
        run.train()
    assert torch.equal(run.method.assignment.perm, before)
    assert is_permutation(run.method.assignment.perm, len(before))


def test_solution_problem_names_type_dtype_and_shape_without_reading_values():
    assert solution_problem([0, 1], 2) == "a list, not a tensor"
    assert solution_problem(torch.tensor([0.0, 1.0]), 2) == "a float32 tensor, not integers"
    assert solution_problem(torch.tensor([True, False]), 2) == "a bool tensor, not integers"
    assert solution_problem(torch.tensor([0, 1, 2]), 2) == "shape (3,), not (2,)"
    assert solution_problem(torch.tensor([[0, 1]]), 2) == "shape (1, 2), not (2,)"
    assert solution_problem(torch.tensor([1, 0], dtype=torch.int32), 2) is None


def test_an_integer_answer_of_another_width_or_device_is_accepted(tiny_config, tmp_path, host):
    class Int32Reverse:
        @natkit.hookimpl
        def register_solvers(self, register):
            register("rev32", lambda: lambda cost: torch.arange(cost.shape[0] - 1, -1, -1,
                                                                 dtype=torch.int32))

    host.register(Int32Reverse(), name="rev32")
    run = lifecycle.start(tiny_config("solver.name=rev32", "train.epochs=1"), tmp_path / "r")
    assert run.train()
    assert run.method.assignment.perm.dtype == torch.int64
    assert is_permutation(run.method.assignment.perm, 64)


def test_invalid_solution_is_a_value_error_for_library_users():
    assert issubclass(InvalidSolution, ValueError)
