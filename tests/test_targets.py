"""Target distributions: unit rows, pure functions of (seed, id), the right distribution."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import natkit
from natkit.targets import hashed_normal

TARGETS = natkit.list_components("targets")


@pytest.fixture(params=TARGETS)
def targets(request, host):
    return natkit.create_targets(request.param, dim=16, seed=3)


def test_rows_are_unit_vectors_of_the_right_shape(targets):
    ids = torch.arange(1000)
    bank = targets(ids)
    assert bank.shape == (1000, 16)
    assert bank.dtype == torch.float32
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(1000))


def test_a_target_depends_only_on_seed_and_id(targets):
    ids = torch.tensor([5, 123456789012, 7, 5])
    bank = targets(ids)
    torch.testing.assert_close(bank[0], bank[3])
    torch.testing.assert_close(targets(ids[1:2])[0], bank[1])
    torch.testing.assert_close(targets(ids.flip(0)), bank.flip(0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=20), st.integers(0, 2**31))
def test_property_sphere_targets_are_pure_unit_vectors(ids, seed):
    from natkit.targets.sphere import SphereTargets

    t = SphereTargets(dim=8, seed=seed)
    ids = torch.tensor(ids)
    bank = t(ids)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(len(ids)))
    torch.testing.assert_close(SphereTargets(dim=8, seed=seed)(ids), bank)


def test_hashed_normal_is_standard_normal_and_seeds_differ():
    z = hashed_normal(0, torch.arange(5000), 8)
    flat = z.flatten().double().numpy()
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    assert abs(flat.mean()) < 0.02 and abs(flat.std() - 1) < 0.02
    # neighbouring ids and columns are uncorrelated
    assert abs(torch.corrcoef(z.t()).fill_diagonal_(0)).max() < 0.06
    assert abs(torch.corrcoef(torch.stack([z[:-1, 0], z[1:, 0]]))[0, 1]) < 0.05
    assert not torch.allclose(hashed_normal(1, torch.arange(10), 8), z[:10])


def test_sphere_targets_are_uniform_on_the_sphere(host):
    d = 32
    bank = natkit.create_targets("sphere", dim=d, seed=0)(torch.arange(20000))
    # uniform on the sphere: zero mean, isotropic covariance I/d
    assert bank.mean(0).abs().max() < 0.02
    cov = bank.t() @ bank / len(bank)
    torch.testing.assert_close(cov, torch.eye(d) / d, atol=4e-3, rtol=0)
    # inner products of independent points: mean 0, variance 1/d
    dots = (bank[:10000] * bank[10000:]).sum(1)
    assert abs(float(dots.mean())) < 0.01
    assert float(dots.var()) == pytest.approx(1 / d, rel=0.05)


def test_basis_targets_are_balanced_one_hot_vectors(host):
    t = natkit.create_targets("basis", dim=16, k=10)
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    bank = t(perm)
    assert set(bank.sum(1).tolist()) == {1.0}
    counts = bank.sum(0)
    assert counts[:10].tolist() == [100.0] * 10 and counts[10:].sum() == 0
    assert natkit.create_targets("basis", dim=16).k == 16


def test_invalid_settings_are_refused(host):
    from natkit.errors import ConfigError

    with pytest.raises(ConfigError, match="dim must be >= 1"):
        natkit.create_targets("sphere", dim=0)
    with pytest.raises(ConfigError, match="k must be between 1 and dim=8"):
        natkit.create_targets("basis", dim=8, k=9)
