"""The auction candidate (benchmarks/candidates/auction.py) reaches scipy's optimum, ties included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from benchmarks.candidates.auction import (
    PRICE_RESOLUTION,
    AuctionSolver,
    auction,
    auction_assignment,
    certify_gap,
    default_eps_final,
)
from natkit.solvers import Solver, assignment_cost, is_permutation

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_GPU)]


def optimum(cost: torch.Tensor) -> float:
    c = cost.detach().cpu().double().numpy()
    rows, cols = linear_sum_assignment(c)
    return float(c[rows, cols].sum())


def nat_cost(b: int, d: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The cost NAT solves: -<f, c> between unit vectors."""
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return -(f @ c.t()).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [2, 3, 17, 64, 256])
def test_nat_costs_reach_the_optimum_within_the_documented_bound(b, dtype):
    cost = nat_cost(b, seed=b, dtype=dtype)
    result = auction(cost)
    assert result.perm.dtype == torch.int64
    assert is_permutation(result.perm, b)
    total, best = assignment_cost(cost, result.perm), optimum(cost)
    # float64 arithmetic on the b summed entries may add a few ulps on top of the b * eps bound
    slack = 1e-12 * b
    assert result.eps <= default_eps_final(cost)
    assert best - slack <= total <= best + b * result.eps + slack
    assert total == pytest.approx(best, rel=1e-6, abs=1e-9)
    gap = certify_gap(cost, result.perm, result.prices)
    assert total - best - slack <= gap <= b * result.eps + slack


def test_the_default_bound_is_one_last_place_unit_of_the_largest_entry():
    cost = nat_cost(64, d=8, seed=5)
    unit = float(cost.abs().max()) * torch.finfo(torch.float32).eps
    assert default_eps_final(cost) == pytest.approx(unit / 64)
    # float64 costs would ask for less than a float64 price can resolve, so the floor takes over
    cost64 = cost.double()
    spread = float(cost64.max() - cost64.min())
    assert default_eps_final(cost64) == pytest.approx(spread * PRICE_RESOLUTION)


def test_a_coarse_eps_is_suboptimal_but_the_certified_gap_bounds_the_loss():
    cost = nat_cost(128, seed=7, dtype=torch.float64)
    spread = float(cost.max() - cost.min())
    result = auction(cost, eps_final=spread / 20)
    assert result.phases == 2  # spread / 5, then spread / 20 reached directly
    assert is_permutation(result.perm, 128)
    loss = assignment_cost(cost, result.perm) - optimum(cost)
    gap = certify_gap(cost, result.perm, result.prices)
    assert 0 < loss <= gap + 1e-12 <= 128 * result.eps


def rank_one(b: int) -> torch.Tensor:
    return torch.outer(torch.arange(b) % 4, torch.arange(b) % 5).float()


TIED = {
    "all equal": lambda b: torch.zeros(b, b),
    "identical rows": lambda b: torch.arange(b, dtype=torch.float32).repeat(b, 1),
    "integer ties": lambda b: torch.randint(0, 3, (b, b), generator=torch.Generator().manual_seed(1)).float(),
    "rank one": rank_one,
}


@pytest.mark.parametrize("b", [2, 5, 64])
@pytest.mark.parametrize("kind", list(TIED))
def test_tied_costs_give_a_permutation_with_the_optimal_cost(kind, b):
    cost = TIED[kind](b)
    perm = auction_assignment(cost)
    assert is_permutation(perm, b)
    assert assignment_cost(cost, perm) == optimum(cost)


def test_integer_costs_are_solved_exactly():
    cost = torch.randint(-1000, 1000, (96, 96), generator=torch.Generator().manual_seed(3)).float()
    assert assignment_cost(cost, auction_assignment(cost)) == optimum(cost)


def integer_matrices(dtype: torch.dtype):
    return st.integers(1, 8).flatmap(
        lambda b: st.lists(st.integers(-5, 5), min_size=b * b, max_size=b * b).map(
            lambda v: torch.tensor(v, dtype=dtype).view(b, b)
        )
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(integer_matrices(torch.float64) | integer_matrices(torch.float32))
@example(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
@example(torch.tensor([[-5.0, -5.0, 5.0], [-5.0, -5.0, 5.0], [5.0, 5.0, -5.0]]))
def test_property_small_integer_costs_reach_the_exact_optimum(cost):
    b = cost.shape[0]
    perm = AuctionSolver()(cost)
    assert perm.dtype == torch.int64
    assert is_permutation(perm, b)
    assert assignment_cost(cost, perm) == optimum(cost)
    # the bare function agrees, b = 1 included, without the Solver wrapper's shortcut
    assert torch.equal(auction_assignment(cost), perm) or b == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_is_int64_on_the_input_device(device, dtype):
    cost = nat_cost(33, seed=1, dtype=dtype).to(device)
    for perm in (auction_assignment(cost), AuctionSolver()(cost)):
        assert perm.dtype == torch.int64
        assert perm.device == cost.device
        assert is_permutation(perm, 33)
        assert assignment_cost(cost, perm) == pytest.approx(optimum(cost), rel=1e-6)
    assert auction_assignment(cost[:1, :1]).device == cost.device


def test_solver_interface_and_bad_inputs():
    solver = AuctionSolver(scale=4.0)
    assert isinstance(solver, Solver)
    assert solver.exact
    assert "scale=4.0" in repr(solver)
    assert torch.equal(solver(torch.zeros(1, 1)), torch.zeros(1, dtype=torch.int64))
    assert solver(torch.zeros(0, 0)).shape == (0,)
    with pytest.raises(FloatingPointError):
        solver(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="square"):
        auction_assignment(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps_final"):
        auction_assignment(torch.eye(3), eps_final=0.0)
    with pytest.raises(ValueError, match="scale"):
        auction_assignment(torch.eye(3), scale=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        auction_assignment(torch.eye(3, dtype=torch.int64))


def test_input_is_left_alone_and_gradients_do_not_matter():
    cost = nat_cost(16, seed=2).requires_grad_()
    before = cost.detach().clone()
    perm = auction_assignment(cost.t())  # non-contiguous too
    assert torch.equal(cost.detach(), before)
    assert assignment_cost(cost.detach().t(), perm) == pytest.approx(optimum(cost.detach().t()), rel=1e-6)


def test_running_out_of_rounds_is_an_error_not_a_silent_suboptimum():
    with pytest.raises(RuntimeError, match="max_rounds=3"):
        auction_assignment(nat_cost(64, seed=4), max_rounds=3)
    with pytest.raises(RuntimeError, match="max_rounds"):
        AuctionSolver(max_rounds=3)(nat_cost(64, seed=4))
