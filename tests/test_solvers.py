"""Every registered solver returns a valid permutation; exact ones reach scipy's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import natkit
from natkit.solvers import assignment_cost, is_permutation
from natkit.solvers.auction import AuctionSolver
from natkit.solvers.greedy import mutual_best_assignment
from natkit.solvers.sinkhorn import SinkhornSolver

SOLVERS = natkit.list_components("solver")
SIZES = [1, 2, 3, 7, 64, 256]


def optimum(cost: torch.Tensor) -> float:
    rows, cols = linear_sum_assignment(cost.double().numpy())
    return float(cost.double().numpy()[rows, cols].sum())


def nat_cost(b: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    """The cost NAT solves: -<f, c> between unit vectors."""
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    return -(f @ c.t())


@pytest.fixture(params=SOLVERS)
def solver(request, host):
    return natkit.create_solver(request.param)


def skip_if_interpreted(solver, b: int) -> None:
    """The auction's CPU path is Triton's interpreter: minutes at b = 256, so small b only here
    (tests/test_auction_solver.py checks it further, and on CUDA it runs at every size)."""
    if isinstance(solver, AuctionSolver) and b > 64:
        pytest.skip("the auction runs on the CPU only through Triton's interpreter")


@pytest.mark.parametrize("b", SIZES)
def test_random_costs_give_a_permutation_at_or_above_the_optimum(solver, b):
    skip_if_interpreted(solver, b)
    cost = nat_cost(b, seed=b)
    perm = solver(cost)
    assert perm.dtype == torch.int64
    assert is_permutation(perm, b)
    total, best = assignment_cost(cost, perm), optimum(cost)
    assert total >= best - 1e-9
    if solver.exact:
        assert total == pytest.approx(best, abs=1e-9)
    elif b >= 64:
        # approximate solvers still land far below the cost of doing nothing
        assert total < assignment_cost(cost, torch.arange(b)) - 0.5 * abs(best)


TIED = {
    "all equal": lambda b: torch.zeros(b, b),
    "identical rows": lambda b: torch.arange(b, dtype=torch.float32).repeat(b, 1),
    "integer ties": lambda b: torch.randint(0, 3, (b, b), generator=torch.Generator().manual_seed(1))
    .float(),
    "rank one": lambda b: torch.outer(torch.arange(b).float() % 4, torch.ones(b)),
}


@pytest.mark.parametrize("b", [2, 5, 64, 256])
@pytest.mark.parametrize("kind", list(TIED))
def test_tied_costs_still_give_a_permutation(solver, kind, b):
    skip_if_interpreted(solver, b)
    cost = TIED[kind](b)
    perm = solver(cost)
    assert is_permutation(perm, b)
    if solver.exact:
        assert assignment_cost(cost, perm) == pytest.approx(optimum(cost), abs=1e-9)


@settings(max_examples=60, deadline=None)
# found by hypothesis: POT's ot.emd called these infeasible before natkit shifted the cost
@example(torch.full((2, 2), -2.0, dtype=torch.float64))
@example(torch.tensor([[-2.0, -2.0], [-2.0, -3.0]], dtype=torch.float64))
@given(st.integers(1, 9).flatmap(
    lambda b: st.lists(st.integers(-5, 5), min_size=b * b, max_size=b * b).map(
        lambda v: torch.tensor(v, dtype=torch.float64).view(b, b))))
def test_property_every_solver_on_small_integer_costs(cost):
    from natkit.plugins import PluginHost

    host = PluginHost(autoload=False)
    for name in host.registries()["solver"].names():
        solver = host.registries()["solver"].create(name)
        perm = solver(cost)
        assert is_permutation(perm, cost.shape[0]), name
        if solver.exact:
            assert assignment_cost(cost, perm) == pytest.approx(optimum(cost)), name


def test_non_finite_and_non_square_costs_are_refused(solver):
    with pytest.raises(FloatingPointError):
        solver(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="square"):
        solver(torch.zeros(2, 3))


def test_greedy_pairs_mutual_best_and_is_exact_on_a_diagonal_optimum():
    cost = torch.full((6, 6), 1.0)
    cost.fill_diagonal_(0.0)
    assert torch.equal(mutual_best_assignment(cost), torch.arange(6))
    shuffled = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mutual_best_assignment(cost[:, shuffled]), torch.argsort(shuffled))


@pytest.mark.parametrize("value", [-2.0, -1e6, 0.0, 3.5])
def test_emd_solves_constant_costs_of_any_sign(host, value):
    for b in (2, 5, 64):
        perm = natkit.create_solver("emd")(torch.full((b, b), value, dtype=torch.float64))
        assert is_permutation(perm, b)


def test_emd_reports_an_iteration_limit_instead_of_a_silent_suboptimum(host):
    solver = natkit.create_solver("emd", num_iter_max=5)
    with pytest.raises(RuntimeError, match="raise num_iter_max"):
        solver(nat_cost(64))


def test_sinkhorn_plan_is_doubly_stochastic_and_rounds_close_to_the_optimum():
    cost = nat_cost(128, d=16, seed=3)
    solver = SinkhornSolver(reg=0.02, num_iter_max=3000)
    plan = solver.plan(cost)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 128, rtol=1e-3)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 128, rtol=1e-3)
    perm = solver(cost)
    assert is_permutation(perm, 128)
    gap = (assignment_cost(cost, perm) - optimum(cost)) / abs(optimum(cost))
    assert 0 <= gap < 0.05


def test_row_argmax_of_a_sinkhorn_plan_would_not_be_a_permutation():
    """Why the rounding exists: with ties, argmax per row collides."""
    cost = torch.zeros(8, 8)
    plan = SinkhornSolver().plan(cost)
    assert not is_permutation(torch.as_tensor(plan.argmax(axis=1)), 8)
    assert is_permutation(SinkhornSolver()(cost), 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("b", [2, 64, 256])
def test_every_solver_answers_on_the_costs_device(solver, b):
    cost = nat_cost(b, seed=b).cuda()
    perm = solver(cost)
    assert perm.device == cost.device and perm.dtype == torch.int64
    assert is_permutation(perm, b)
    if solver.exact:
        assert assignment_cost(cost, perm) == pytest.approx(optimum(cost.cpu()), abs=1e-4)


def test_sinkhorn_keeps_the_plan_on_the_costs_device_and_dtype():
    cost = nat_cost(32, seed=1).double()
    plan = SinkhornSolver().plan(cost)
    assert plan.dtype == torch.float64 and plan.device == cost.device
    assert torch.isfinite(plan).all()


def test_sinkhorn_stays_close_to_the_optimum_where_plain_kernels_would_underflow():
    """A small reg over a wide cost: exp(-cost / reg) of the raw cost would empty whole rows."""
    cost = nat_cost(256, d=2048, seed=4) * 50
    perm = SinkhornSolver(reg=0.01, num_iter_max=200)(cost)
    assert is_permutation(perm, 256)
    assert (assignment_cost(cost, perm) - optimum(cost)) / abs(optimum(cost)) < 0.02


# ------------------------------------------- hungarian.lua's integer costs (the paper preset)


def test_quantized_costs_are_hungarian_luas_formula():
    from natkit.solvers.hungarian import quantized_cost

    # hungarian.lua 27-31: icost = ((cost - cmin) * (1 / (cmax - cmin)) * 100000):int()
    cost = np.array([[0.0, 1.0, 0.5], [0.25, 1 / 3, 0.999999]])
    assert quantized_cost(cost, 100000).tolist() == [[0, 100000, 50000], [25000, 33333, 99999]]
    shifted = cost * 7 - 3  # only the spread counts
    assert np.array_equal(quantized_cost(shifted, 100000), quantized_cost(cost, 100000))
    assert quantized_cost(np.full((3, 3), -0.2), 100000).tolist() == [[0] * 3] * 3


def test_quantizing_can_change_the_answer_as_the_authors_solver_would():
    """Raw costs prefer the swap (3.75 < 3.8 levels); truncated, the diagonal (2 < 3)."""
    level = 1e-5
    cost = torch.tensor([[1.9, 3.5, 1e5], [0.25, 1.9, 1e5], [1e5, 1e5, 0.0]],
                        dtype=torch.float64) * level
    assert natkit.create_solver("hungarian")(cost).tolist() == [1, 0, 2]
    assert natkit.create_solver("hungarian", quantize=100000)(cost).tolist() == [0, 1, 2]
    assert natkit.create_solver("hungarian", quantize=0)(cost).tolist() == [1, 0, 2]  # 0: off


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1), st.sampled_from([7, 1000, 100000]))
def test_property_quantized_hungarian_is_optimal_for_the_quantized_costs(b, seed, levels):
    from natkit.solvers.hungarian import HungarianSolver, quantized_cost

    cost = nat_cost(b, d=4, seed=seed).double()
    integers = torch.as_tensor(quantized_cost(cost.numpy(), levels), dtype=torch.float64)
    assert int(integers.min()) == 0 and int(integers.max()) in (levels - 1, levels)
    perm = HungarianSolver(quantize=levels)(cost)
    assert is_permutation(perm, b)
    assert assignment_cost(integers, perm) == optimum(integers)  # integers: exactly
    # off (None or 0), the cost itself is solved, as before
    for off in (None, 0):
        assert torch.equal(HungarianSolver(quantize=off)(cost), HungarianSolver()(cost))
    assert assignment_cost(cost, HungarianSolver()(cost)) == pytest.approx(optimum(cost), abs=1e-12)


def test_quantize_is_checked_as_an_option(tiny_config):
    from natkit.errors import ConfigError

    assert tiny_config("solver.quantize=100000").solver["quantize"] == 100000
    with pytest.raises(ConfigError, match="solver.quantize"):
        tiny_config("solver.quantize=-1")
