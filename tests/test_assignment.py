"""The assignment state: reassignment only permutes targets within the batch, never worsens it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import natkit
from natkit.assignment import AssignmentState
from natkit.targets.sphere import SphereTargets


def make_state(n=50, dim=8, cache=1024.0, seed=0):
    return AssignmentState(SphereTargets(dim, seed=1), n,
                           generator=torch.Generator().manual_seed(seed), cache_limit_mb=cache)


def features(b, dim=8, seed=0):
    return F.normalize(torch.randn(b, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_the_initial_assignment_is_a_seeded_random_permutation():
    a, b = make_state(seed=0), make_state(seed=0)
    assert torch.equal(a.perm, b.perm)
    assert torch.equal(torch.sort(a.perm).values, torch.arange(50))
    assert not torch.equal(a.perm, torch.arange(50))
    assert not torch.equal(make_state(seed=1).perm, a.perm)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 49), min_size=2, max_size=20, unique=True),
       st.integers(0, 1000), st.sampled_from(["hungarian", "emd", "greedy", "sinkhorn"]))
def test_property_reassignment_permutes_p_within_the_batch_only(batch, seed, solver_name):
    from natkit.plugins import PluginHost

    solver = PluginHost(autoload=False).registries()["solver"].create(solver_name)
    state = make_state()
    before = state.perm.clone()
    idx = torch.tensor(batch)
    update = state.reassign(idx, features(len(batch), seed=seed), solver)
    outside = torch.ones(50, dtype=torch.bool)
    outside[idx] = False
    assert torch.equal(state.perm[outside], before[outside])  # no other image moved
    assert sorted(state.perm[idx].tolist()) == sorted(before[idx].tolist())  # same ids, permuted
    assert torch.equal(torch.sort(state.perm).values, torch.arange(50))  # still a permutation
    if solver.exact:
        assert update.cost_after <= update.cost_before + 1e-6


def test_an_exact_solver_finds_the_best_targets_held_by_the_batch(host):
    state = make_state(n=6)
    idx = torch.arange(6)
    held = state.targets_of(idx)
    order = torch.tensor([2, 0, 5, 1, 3, 4])
    # each image's features equal the target currently held by another image
    update = state.reassign(idx, held[order], natkit.create_solver("hungarian"))
    torch.testing.assert_close(state.targets_of(idx), held[order])
    assert update.changed == 1.0
    assert update.cost_after == pytest.approx(-6.0, abs=1e-5)


def test_the_cache_limit_is_in_mebibytes_of_float32():
    assert AssignmentState.fits_cache(2**20, 256, 1024.0)  # exactly 1 GiB
    assert not AssignmentState.fits_cache(2**20 + 1, 256, 1024.0)
    assert not AssignmentState.fits_cache(1, 1, 0.0)


def test_regenerated_targets_equal_the_cached_bank():
    cached, regenerated = make_state(cache=1024.0), make_state(cache=0.0)
    assert cached.cached and not regenerated.cached
    idx = torch.tensor([3, 1, 4, 1, 5])
    torch.testing.assert_close(cached.targets_of(idx), regenerated.targets_of(idx))


def test_state_dict_round_trip_and_refusals():
    state = make_state()
    state.reassign(torch.arange(10), features(10), natkit.create_solver("greedy"))
    saved = state.state_dict()
    fresh = make_state(seed=5)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.perm, state.perm)
    broken = dict(saved, perm=torch.zeros(50, dtype=torch.int64))
    with pytest.raises(ValueError, match="not a permutation"):
        fresh.load_state_dict(broken)
    with pytest.raises(ValueError, match="has 49 entries"):
        fresh.load_state_dict(dict(saved, perm=saved["perm"][:49]))
    other = AssignmentState(SphereTargets(8, seed=2), 50)
    with pytest.raises(ValueError, match="targets .* differ"):
        other.load_state_dict(saved)
