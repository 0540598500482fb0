"""The lapjv solver: always a permutation, always as cheap as scipy's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from natkit_lap.solver import LapjvSolver
from scipy.optimize import linear_sum_assignment

import natkit
from natkit.solvers import Solver, assignment_cost, is_permutation


def optimum(cost: torch.Tensor) -> float:
    """scipy's optimal summed cost, the reference."""
    matrix = cost.to(torch.float64).numpy()
    rows, cols = linear_sum_assignment(matrix)
    return float(matrix[rows, cols].sum())


def check_optimal(solver: LapjvSolver, cost: torch.Tensor) -> None:
    perm = solver(cost)
    b = cost.shape[0]
    assert perm.dtype == torch.int64 and perm.device == cost.device
    assert is_permutation(perm, b), f"b={b}: not a permutation: {perm.tolist()}"
    assert assignment_cost(cost, perm) == pytest.approx(optimum(cost), rel=1e-9, abs=1e-9), f"b={b}"


def test_random_costs_are_solved_optimally_for_every_size_up_to_256():
    solver = LapjvSolver()
    gen = torch.Generator().manual_seed(0)
    for b in range(1, 257):
        check_optimal(solver, torch.randn(b, b, generator=gen))


def test_tied_costs_are_solved_optimally_for_every_size_up_to_256():
    solver = LapjvSolver()
    gen = torch.Generator().manual_seed(1)
    for b in range(1, 257):
        # few distinct values: many optimal assignments, the case that trips up JV variants
        check_optimal(solver, torch.randint(0, 3, (b, b), generator=gen).float())


@pytest.mark.parametrize("b", [2, 7, 64])
def test_degenerate_costs(b):
    solver = LapjvSolver()
    check_optimal(solver, torch.zeros(b, b))  # every permutation is optimal
    check_optimal(solver, torch.ones(b, 1).expand(b, b))  # identical columns: a strided view
    row = torch.arange(b, dtype=torch.float32)
    check_optimal(solver, row.expand(b, b) * 1e6)  # identical rows, large values
    check_optimal(solver, -torch.eye(b))  # the identity is the unique optimum
    assert solver(-torch.eye(b)).tolist() == list(range(b))


def test_float32_feature_costs_like_natkit_builds_them():
    # natkit's cost is -<f, c> for unit features f and unit targets c
    gen = torch.Generator().manual_seed(2)
    f = torch.nn.functional.normalize(torch.randn(128, 16, generator=gen), dim=1)
    c = torch.nn.functional.normalize(torch.randn(128, 16, generator=gen), dim=1)
    cost = -(f @ c.t())
    assert cost.dtype == torch.float32
    check_optimal(LapjvSolver(), cost)


def test_the_known_optimum_of_a_small_problem():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    assert LapjvSolver()(cost).tolist() == [1, 0, 2]  # total 1 + 2 + 2 = 5, scipy's doc example


def test_the_cost_is_left_untouched_and_gradients_are_ignored():
    cost = torch.randn(9, 9, requires_grad=True)
    before = cost.detach().clone()
    LapjvSolver()(cost)
    assert torch.equal(cost.detach(), before)


def test_bad_costs_are_refused_by_the_shared_checks():
    solver = LapjvSolver()
    with pytest.raises(ValueError, match="square"):
        solver(torch.zeros(3, 4))
    with pytest.raises(FloatingPointError):
        solver(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_it_is_a_natkit_solver_marked_exact():
    solver = LapjvSolver()
    assert isinstance(solver, Solver) and solver.exact
    assert repr(solver) == "LapjvSolver()"


def test_the_entry_point_registers_lapjv(natkit_host):
    assert "lapjv" in natkit.list_components("solvers")
    assert natkit.list_components("solvers", "lap*") == ["lapjv"]
    solver = natkit.create_solver("lapjv")
    assert isinstance(solver, LapjvSolver)
    entry, _ = natkit_host.registries()["solver"].lookup("lapjv")
    assert entry.plugin == "natkit-lap"
    assert entry.help == "Exact assignment (Jonker-Volgenant, lap.lapjv)."
    info = {p.name: p for p in natkit_host.plugins()}["natkit-lap"]
    assert (info.distribution, info.error) == ("natkit-lap", None)
    check_optimal(solver, torch.from_numpy(np.random.default_rng(3).normal(size=(32, 32))))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cost_on_the_gpu_gets_its_permutation_on_the_gpu():
    cost = torch.randn(100, 100, generator=torch.Generator().manual_seed(4))
    perm = LapjvSolver()(cost.cuda())
    assert perm.device.type == "cuda" and perm.dtype == torch.int64
    assert torch.equal(perm.cpu(), LapjvSolver()(cost))
