"""The reassignment step: one device-to-host read per solve, and profiler ranges per part."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natkit import assignment as asg
from natkit.assignment import AssignmentState
from natkit.methods.nat import nat_step
from natkit.targets.sphere import SphereTargets

# every way a tensor's value reaches the host (each is a sync on CUDA)
READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


def make_state(n=64, dim=8, cache=1024.0):
    return AssignmentState(SphereTargets(dim, seed=1), n,
                           generator=torch.Generator().manual_seed(0), cache_limit_mb=cache)


def device_solver(cost):
    """A valid answer computed without leaving the device: sort by the first column."""
    return torch.argsort(cost[:, 0])


@pytest.fixture
def count_reads(monkeypatch):
    """Counts host reads of tensor values outside the solver."""
    counts = {"n": 0, "names": [], "in_solver": False}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if not counts["in_solver"]:
                counts["n"] += 1
                counts["names"].append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def solver(cost):
        counts["in_solver"] = True
        try:
            return device_solver(cost)
        finally:
            counts["in_solver"] = False
    return counts, solver


@pytest.mark.parametrize("cache", [1024.0, 0.0])
def test_a_reassigning_step_reads_the_device_once(count_reads, cache):
    counts, solver = count_reads
    state = make_state(cache=cache)
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(3))[:16]
    out = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    _, update = nat_step(state, solver, out, idx, reassign=True)
    assert counts["n"] == 1, counts["names"]
    assert counts["names"] == ["tolist"]
    assert update is not None and 0.0 <= update.changed <= 1.0


def test_a_plain_step_reads_nothing(count_reads):
    counts, solver = count_reads
    state = make_state(cache=0.0)
    idx = torch.arange(16)
    out = F.normalize(torch.randn(16, 8), dim=1)
    nat_step(state, solver, out, idx, reassign=False)
    assert counts["n"] == 0, counts["names"]


def test_the_reassignment_parts_are_named_profiler_ranges():
    state = make_state(cache=0.0)
    idx = torch.arange(16)
    out = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(5)), dim=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        nat_step(state, device_solver, out, idx, reassign=True)
    names = {e.name for e in prof.events()}
    for name in (asg.RANGE_TARGETS, asg.RANGE_COST, asg.RANGE_SOLVE,
                 asg.RANGE_VALIDATE_SYNC, asg.RANGE_UPDATE_P):
        assert name in names
    # the solver's own ops run inside the solve range, not the cost range
    solve = [e for e in prof.events() if e.name == asg.RANGE_SOLVE]
    sorts = [e for e in prof.events() if e.name == "aten::argsort"]
    assert sorts and solve
    s = solve[0].time_range
    assert any(s.start <= e.time_range.start and e.time_range.end <= s.end for e in sorts)
    # two target regenerations: once for the cost, once for the loss
    assert sum(e.name == asg.RANGE_TARGETS for e in prof.events()) == 2


def test_the_ranges_leave_results_unchanged():
    a, b = make_state(), make_state()
    out = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(6)), dim=1)
    idx = torch.arange(16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        ua = a.reassign(idx, out, device_solver)
    ub = b.reassign(idx, out, device_solver)
    assert torch.equal(a.perm, b.perm) and ua.cost_after == ub.cost_after


def test_auto_cache_keeps_the_fixed_limit_off_cuda():
    assert asg.auto_cache_limit_mb("cpu") == asg.CPU_CACHE_LIMIT_MB == 1024.0
    assert AssignmentState(SphereTargets(4, seed=1), 16, cache_limit_mb="auto").cached


def test_auto_cache_on_cuda_takes_half_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * 2**30, 141 * 2**30))
    assert asg.auto_cache_limit_mb("cuda") == 10 * 1024
    # sphere d=2048 at ImageNet's n is 10.5 GB (10,009 MB): it fits in half of 20 GiB free
    assert AssignmentState.fits_cache(1_281_167, 2048, asg.auto_cache_limit_mb("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (16 * 2**30, 141 * 2**30))
    assert not AssignmentState.fits_cache(1_281_167, 2048, asg.auto_cache_limit_mb("cuda"))


def test_the_profile_attributes_a_slow_solve_to_the_solve():
    import time

    from benchmarks.speed.profile import CATEGORIES, profile_markdown, profile_step
    from benchmarks.speed.steps import QUICK_STEP_OVERRIDES

    def slow(solve):
        def go(cost):
            time.sleep(0.3)  # host time that only the solve category may claim
            return solve(cost)
        return go

    p = profile_step(("device=cpu", *QUICK_STEP_OVERRIDES), steps=2, warmup=1, label="tiny",
                     wrap_solver=slow)
    rows = {r.category: r for r in p.rows}
    assert tuple(rows) == CATEGORIES
    assert sum(r.host_ms for r in p.rows) == pytest.approx(p.wall_ms, rel=1e-6)
    assert all(r.host_ms >= 0 for r in p.rows)
    assert 300 <= rows["solve"].host_ms < p.wall_ms
    # the sleep is in no other category (each stays far below it, even on a loaded machine)
    assert all(r.host_ms < 150 for c, r in rows.items() if c != "solve")
    assert rows["cost matrix"].host_ms > 0 and rows["targets (regenerate / gather)"].host_ms > 0
    assert rows["P update"].host_ms > 0
    assert rows["synchronisation"].host_ms == 0  # no CUDA: nothing blocks on a device
    assert p.gpu_idle_ms is None and all(r.device_ms is None for r in p.rows)
    assert "| solve |" in profile_markdown([p])


def test_the_gpu_session_builds_valid_configurations():
    from benchmarks.speed.suite import session_cases, session_solvers
    from natkit import config as cfg

    assert {"hungarian", "greedy", "sinkhorn"} <= set(session_solvers())
    cases = session_cases(torch.device("cuda"))
    labels = [label for label, _ in cases]
    assert "paper configuration, amp + channels_last, hungarian" in labels
    assert "embedded default, amp + channels_last, hungarian" in labels
    assert "paper configuration, amp + channels_last, auction" in labels
    for label, overrides in cases:
        c = cfg.build(overrides=[*overrides, "method=nat"])
        assert c.train.amp and c.train.channels_last
        # both solvers of a configuration solve the same problem: the paper preset's integer
        # costs at the paper's configuration, the float cost at the default
        quantize = 100000 if label.startswith("paper") else None
        assert c.solver.get("quantize") == quantize, label
