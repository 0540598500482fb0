"""The fused Triton auction against scipy on the same costs, run here through Triton's interpreter."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

pytest.importorskip("triton")

from natkit.errors import ConfigError
from natkit.solvers import assignment_cost, is_permutation
from natkit.solvers.auction import AuctionSolver, create, solve_batch
from natkit.solvers.hungarian import HungarianSolver, quantized_cost


def optimum(cost) -> float:
    values = np.asarray(cost, dtype=np.float64)
    rows, cols = linear_sum_assignment(values)
    return float(values[rows, cols].sum())


def nat_cost(b: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    t = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    return -(f @ t.t())


@pytest.mark.parametrize("b", [2, 3, 5, 7, 16, 33, 64])
def test_float_costs_land_within_the_stated_bound_of_scipys_optimum(b):
    for cost in (nat_cost(b, seed=b), torch.randn(b, b, generator=torch.Generator().manual_seed(b)) * 10):
        perm = AuctionSolver()(cost)
        assert perm.dtype == torch.int64 and is_permutation(perm, b)
        # the default eps_final is max|cost| * eps32 / b, so the gap is at most max|cost| * eps32
        bound = float(cost.abs().max()) * torch.finfo(torch.float32).eps
        gap = assignment_cost(cost, perm) - optimum(cost)
        assert -1e-9 <= gap <= bound


@pytest.mark.parametrize("b", [2, 3, 9, 31])
def test_tie_heavy_integer_costs_reach_the_optimum_exactly(b):
    ints = torch.randint(0, 4, (b, b), generator=torch.Generator().manual_seed(b))
    for cost in (ints, ints.float()):  # the integer mode, and float costs holding integers
        perm = AuctionSolver()(cost)
        assert is_permutation(perm, b)
        assert assignment_cost(cost, perm) == optimum(ints)


@pytest.mark.parametrize("b", [2, 5, 17, 64])
def test_quantize_matches_the_quantized_hungarian_exactly(b):
    cost = nat_cost(b, seed=100 + b)
    integers = quantized_cost(cost.double().numpy(), 100000)
    perm = AuctionSolver(quantize=100000)(cost)
    assert is_permutation(perm, b)
    ours = integers[np.arange(b), perm.numpy()].sum()
    theirs = integers[np.arange(b), HungarianSolver(quantize=100000)(cost).numpy()].sum()
    assert ours == theirs == optimum(integers)
    # quantizing matters: the float answer need not be optimal for the integers, but this one is
    assert AuctionSolver(quantize=0).quantize is None


def test_quantize_can_change_the_answer_as_hungarians_does():
    level = 1e-5
    cost = torch.tensor([[1.9, 3.5, 1e5], [0.25, 1.9, 1e5], [1e5, 1e5, 0.0]], dtype=torch.float64) * level
    assert AuctionSolver()(cost).tolist() == [1, 0, 2]
    assert AuctionSolver(quantize=100000)(cost).tolist() == [0, 1, 2]


@pytest.mark.parametrize("value", [0.0, -2.5, 1e6])
def test_constant_matrices_give_a_permutation(value):
    for b in (2, 3, 40):
        for quantize in (None, 100000):
            assert is_permutation(AuctionSolver(quantize=quantize)(torch.full((b, b), value)), b)


def test_solve_batch_equals_the_solves_one_problem_at_a_time():
    costs = torch.stack([nat_cost(11, seed=s) for s in range(2)] + [torch.zeros(11, 11)])
    for quantize in (None, 100000):
        perms = solve_batch(costs, quantize=quantize)
        assert perms.shape == (3, 11) and perms.dtype == torch.int64
        for cost, perm in zip(costs, perms, strict=True):
            assert torch.equal(perm, solve_batch(cost[None], quantize=quantize)[0])
            assert is_permutation(perm, 11)
        assert assignment_cost(costs[1], perms[1]) == pytest.approx(optimum(costs[1]), abs=1e-6)
    assert solve_batch(torch.zeros(2, 1, 1)).tolist() == [[0], [0]]


def test_running_out_of_rounds_writes_minus_ones_that_validation_refuses():
    stats = torch.zeros(2, 2, dtype=torch.int32)
    perms = solve_batch(torch.stack([nat_cost(9, seed=1), nat_cost(9, seed=2)]), max_rounds=3, stats=stats)
    assert (perms == -1).all()
    assert stats[:, 0].tolist() == [3, 3]
    assert not is_permutation(AuctionSolver(max_rounds=3)(nat_cost(9)), 9)


def test_a_looser_eps_final_does_fewer_rounds_and_keeps_its_bound():
    cost = nat_cost(24, seed=5)
    tight, loose = torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 2, dtype=torch.int32)
    solve_batch(cost[None], stats=tight)
    perm = solve_batch(cost[None], eps_final=1e-2, stats=loose)[0]
    assert int(loose[0, 1]) < int(tight[0, 1])  # fewer phases
    assert assignment_cost(cost, perm) - optimum(cost) <= 24 * 1e-2


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 8).flatmap(
    lambda b: st.lists(st.integers(-5, 5), min_size=b * b, max_size=b * b).map(
        lambda v: torch.tensor(v, dtype=torch.float64).view(b, b))),
    st.sampled_from([2.0, 5.0, 17.0]))
def test_property_small_integer_costs_are_solved_exactly(cost, scale):
    for c in (cost, cost.long()):
        perm = AuctionSolver(scale=scale)(c)
        assert is_permutation(perm, cost.shape[0])
        assert assignment_cost(cost, perm) == optimum(cost.numpy())


def test_missing_triton_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ImportError, match="triton") as info:
        solve_batch(torch.zeros(1, 3, 3))
    assert "\n" not in str(info.value)


def test_a_run_without_triton_is_refused_at_its_start_in_one_line(monkeypatch, tmp_path):
    import subprocess
    import sys as system

    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ConfigError, match="solver 'auction': .*triton") as info:
        create()
    assert "\n" not in str(info.value)
    # and from the command line: exit 2 and one line, before anything trains
    hide = "import sys; sys.modules['triton'] = None; from natkit.cli import main; main()"
    proc = subprocess.run([system.executable, "-c", hide, "run", "--solver", "auction",
                           "--out", str(tmp_path / "run"), "--set", "train.epochs=1"],
                          capture_output=True, text=True, env={**os.environ,
                                                              "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "triton" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_registered_as_the_auction_solver(host):
    import natkit

    solver = natkit.create_solver("auction", quantize=100000)
    assert isinstance(solver, AuctionSolver) and solver.exact and solver.quantize == 100000


@pytest.mark.parametrize("integer, b", [(False, 256), (True, 1000)])
def test_the_kernel_compiles_for_an_h100_class_gpu(integer, b, monkeypatch, tmp_path):
    """Compiled ahead of time for sm_90 with Triton's bundled ptxas: no GPU needed.

    After an interpreted solve and with an empty cache, so the interpreter's patches of
    triton.language must have been undone.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    from natkit.solvers.auction import _kernel, launch_config

    solve_batch(nat_cost(3)[None])
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    block, bidders, rows, num_warps = launch_config(b)
    signature = {"cost_ptr": "*fp64" if integer else "*fp32", "perm_ptr": "*i64", "stats_ptr": "*i32",
                 "b": "i32", "mult": "fp32", "unit": "fp32", "eps_arg": "fp32", "scale": "fp32",
                 "max_rounds": "i32", "INTEGER": "constexpr", "BLOCK": "constexpr", "K": "constexpr",
                 "R": "constexpr"}
    source = triton.compiler.ASTSource(fn=_kernel(), signature=signature, constexprs={
        "INTEGER": integer, "BLOCK": block, "K": bidders, "R": rows})
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    except Exception as error:  # no CUDA backend or ptxas in this install
        if "ptxas" in str(error).lower() or "backend" in str(error).lower():
            pytest.skip(f"cannot compile for CUDA here: {error}")
        raise
    assert len(compiled.asm["cubin"]) > 0 and ".target sm_90" in compiled.asm["ptx"]


@pytest.mark.parametrize("b", [2, 3, 5, 64, 100, 256, 257, 4096])
def test_launch_configs_are_powers_of_two_that_cover_b(b):
    from natkit.solvers.auction import launch_config

    block, bidders, rows, num_warps = launch_config(b)
    assert block >= b and block < 2 * max(b, 2)
    for value in (block, bidders, rows, num_warps):
        assert value & (value - 1) == 0
    assert bidders <= block and bidders <= rows <= block
    with pytest.raises(ValueError, match="power of two"):
        launch_config(b, bidders=3)


def test_the_gpu_benchmark_runs_on_the_cpu_through_the_interpreter(tmp_path):
    from benchmarks import gpu_auction

    gpu_auction.main(["--out", str(tmp_path), "--device", "cpu", "--sizes", "6", "--repeats", "1",
                      "--matrices", "2", "--batch", "2"])
    report = json.loads((tmp_path / "gpu_auction.json").read_text())
    rows = report["rows"]
    assert sorted((r["b"], r["costs"]) for r in rows) == [(6, "float"), (6, "quantized")]
    assert all(r["differing_perms"] >= 0 and 0 <= r["max_gap"] <= r["bound"] for r in rows)
    assert "| b |" in (tmp_path / "gpu_auction.md").read_text()
