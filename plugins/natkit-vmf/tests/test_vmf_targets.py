"""vmf targets: unit rows, pure functions of (seed, id), balanced, and truly von Mises-Fisher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from natkit_vmf import targets as vmf_targets
from natkit_vmf.targets import VMFTargets, stream_seed
from natkit_vmf.wood import CANDIDATES, acceptance_probability, wood_cosines
from scipy import special, stats

import natkit
from natkit.errors import ConfigError
from natkit.targets import Targets, hashed_normal, hashed_uniform


def mean_resultant_length(dim: int, kappa: float) -> float:
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa): the mean of <x, mu> under vMF."""
    return float(special.ive(dim / 2, kappa) / special.ive(dim / 2 - 1, kappa))


def cosines(t: VMFTargets, ids: torch.Tensor) -> torch.Tensor:
    """<x_i, centre of i's cluster> in float64."""
    x = t(ids).to(torch.float64)
    mu = t.centres(t.clusters(ids)).to(torch.float64)
    return (x * mu).sum(1)


def test_rows_are_unit_float32_vectors_of_the_right_shape():
    t = VMFTargets(16, seed=3, k=10, kappa=50.0)
    bank = t(torch.arange(1000))
    assert isinstance(t, Targets)
    assert bank.shape == (1000, 16) and bank.dtype == torch.float32
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(1000))
    assert t(torch.zeros(0, dtype=torch.int64)).shape == (0, 16)
    centres = t.centres()
    assert centres.shape == (10, 16)
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(10))


def test_a_target_depends_only_on_seed_and_id():
    t = VMFTargets(8, seed=5, k=7, kappa=20.0)
    ids = torch.tensor([5, 123456789012, 7, 5, 0, 2**40 + 3])
    bank = t(ids)
    assert torch.equal(bank[0], bank[3])
    assert torch.equal(t(ids[1:2])[0], bank[1])
    assert torch.equal(t(ids.flip(0)), bank.flip(0))
    assert torch.equal(VMFTargets(8, seed=5, k=7, kappa=20.0)(ids), bank)
    # a slice of a large bank is bit-identical to the same ids asked for on their own
    big = t(torch.arange(5000))
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t(perm), big[perm])
    assert torch.equal(t(perm[:17]), big[perm[:17]])
    # and every setting changes the draws
    for other in (VMFTargets(8, seed=6, k=7, kappa=20.0), VMFTargets(8, seed=5, k=8, kappa=20.0),
                  VMFTargets(8, seed=5, k=7, kappa=21.0)):
        assert not torch.allclose(other(ids), bank)


def test_distinct_ids_get_distinct_targets_even_in_one_cluster():
    t = VMFTargets(8, seed=0, k=1, kappa=1000.0)
    bank = t(torch.arange(500))
    assert torch.unique(bank, dim=0).shape[0] == 500


def test_the_random_streams_are_distinct_and_independent_of_the_centres():
    assert len({stream_seed(0, 1), stream_seed(0, 2), stream_seed(1, 1), 0, 1}) == 5
    assert stream_seed(7, 1) == stream_seed(7, 1) and stream_seed(7, 1) < 2**64
    # with k = n, target id c is drawn around centre c: had the draw reused the centre's
    # uniforms, its tangent direction would be the centre itself and w would be +-1. At
    # kappa = 0 the cosine must instead be uniform on [-1, 1] (on S^2)
    t = VMFTargets(3, seed=0, k=4000, kappa=0.0)
    w = cosines(t, torch.arange(4000)).numpy()
    assert stats.kstest(w, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_clusters_are_balanced_and_targets_sit_near_their_own_centre():
    k, n = 10, 1000
    t = VMFTargets(16, seed=1, k=k, kappa=200.0)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t.clusters(ids), ids % k)
    expected = torch.nn.functional.normalize(hashed_normal(1, torch.arange(k), 16).double(), dim=1)
    torch.testing.assert_close(t.centres(), expected.float())
    assert torch.bincount(t.clusters(ids), minlength=k).tolist() == [n // k] * k
    nearest = (t(ids) @ t.centres().t()).argmax(dim=1)
    assert torch.equal(nearest, ids % k)
    assert torch.bincount(nearest, minlength=k).tolist() == [n // k] * k


@pytest.mark.parametrize(("dim", "kappa"), [(3, 2.0), (16, 50.0), (64, 10.0)])
def test_mean_cosine_is_the_vmf_mean_resultant_length(dim, kappa):
    n = 20000
    t = VMFTargets(dim, seed=2, k=5, kappa=kappa)
    ids = torch.arange(n)
    x = t(ids).to(torch.float64)
    mu = t.centres(t.clusters(ids)).to(torch.float64)
    w = (x * mu).sum(1)
    a = mean_resultant_length(dim, kappa)
    se = float(w.std()) / math.sqrt(n)
    assert abs(float(w.mean()) - a) < 5 * se, (float(w.mean()), a, se)
    # the part orthogonal to the centre averages out: E[x] = A_d(kappa) mu
    r = x - w.unsqueeze(1) * mu
    typical = math.sqrt(float((r * r).sum(1).mean()) / n)
    assert float(r.mean(0).norm()) < 4 * typical


def test_the_cosine_has_the_exact_vmf_distribution_on_the_2_sphere():
    # on S^2 the cosine w has CDF (e^{kappa w} - e^{-kappa}) / (e^{kappa} - e^{-kappa})
    kappa = 4.0
    t = VMFTargets(3, seed=4, k=3, kappa=kappa)
    w = cosines(t, torch.arange(20000)).numpy()

    def cdf(v: np.ndarray) -> np.ndarray:
        return np.expm1(kappa * (v + 1)) / np.expm1(2 * kappa)

    assert stats.kstest(w, cdf).pvalue > 1e-3
    # a wrong concentration is detected by the same test
    assert stats.kstest(w, lambda v: np.expm1(4.4 * (v + 1)) / np.expm1(8.8)).pvalue < 1e-6


def test_directions_around_the_centre_are_isotropic():
    t = VMFTargets(3, seed=5, k=1, kappa=3.0)
    x = t(torch.arange(20000)).to(torch.float64)
    mu = t.centres()[0].to(torch.float64)
    r = x - (x @ mu).unsqueeze(1) * mu
    r = r / r.norm(dim=1, keepdim=True)
    # unit tangent directions uniform on the circle orthogonal to mu: covariance (I - mu mu^T) / 2
    cov = r.t() @ r / len(r)
    expected = (torch.eye(3, dtype=torch.float64) - torch.outer(mu, mu)) / 2
    torch.testing.assert_close(cov, expected, atol=0.015, rtol=0)
    assert float(r.mean(0).norm()) < 0.03


def test_large_kappa_concentrates_and_small_kappa_spreads_out():
    ids = torch.arange(20000)
    means = [float(cosines(VMFTargets(16, seed=6, k=4, kappa=kappa), ids).mean())
             for kappa in (0.1, 1.0, 10.0, 100.0, 1e4)]
    assert means == sorted(means)
    tight = cosines(VMFTargets(16, seed=6, k=4, kappa=1e4), ids)
    assert float(tight.min()) > 0.99 and float(tight.mean()) > 0.999
    # kappa -> 0 is uniform on the sphere: on S^2 the cosine is then uniform on [-1, 1]
    loose = cosines(VMFTargets(3, seed=6, k=4, kappa=1e-6), ids).numpy()
    assert abs(loose.mean()) < 0.02
    assert stats.kstest(loose, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_huge_kappa_stays_accurate():
    # E[1 - w] = 1 - A_3(kappa) = 1/kappa for large kappa on S^2; computing w itself and
    # subtracting from 1 would lose every digit here
    kappa = 1e8
    omw, accepted = wood_cosines(3, kappa, 11, torch.arange(20000))
    assert bool(accepted.all()) and bool((omw > 0).all())
    assert float(omw.mean()) * kappa == pytest.approx(1.0, rel=0.05)
    x = VMFTargets(3, seed=0, k=2, kappa=kappa)(torch.arange(100))
    assert torch.isfinite(x).all()


def reference_wood(dim: int, kappa: float, seed: int, ids: torch.Tensor, candidates: int) -> np.ndarray:
    """Wood's algorithm as printed, all candidates at once: the first accepted one's 1 - w."""
    m = dim - 1
    u = hashed_uniform(seed, ids, 2 * candidates).numpy()
    b = (-2 * kappa + math.sqrt(4 * kappa**2 + m**2)) / m
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m * math.log(1 - x0**2)
    z = special.betaincinv(m / 2, m / 2, u[:, 0::2])
    w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
    ok = kappa * w + m * np.log(1 - x0 * w) - c >= np.log(u[:, 1::2])
    first = ok.argmax(axis=1)
    chosen = w[np.arange(len(w)), first]
    return np.where(ok.any(axis=1), 1 - chosen, 0.0)


@pytest.mark.parametrize(("dim", "kappa"), [(2, 3.0), (5, 20.0), (32, 40.0)])
def test_the_sampler_matches_wood_as_printed(dim, kappa):
    ids = torch.arange(3000)
    omw, _ = wood_cosines(dim, kappa, 9, ids)
    expected = reference_wood(dim, kappa, 9, ids, CANDIDATES)
    np.testing.assert_allclose(omw.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_one_candidate_is_accepted_with_the_documented_probability():
    dim, kappa, n = 2, 1e4, 20000
    p = acceptance_probability(dim, kappa)
    omw, accepted = wood_cosines(dim, kappa, 3, torch.arange(n), candidates=1)
    assert float(accepted.double().mean()) == pytest.approx(p, abs=0.015)
    # a rejected draw falls back to the mode exactly; an accepted one is never the mode
    assert bool((omw[~accepted] == 0).all()) and bool((omw[accepted] > 0).all())


def test_falling_back_to_the_mode_is_negligible_with_32_candidates():
    assert CANDIDATES == 32
    worst = 1.0
    for dim in (2, 3, 8, 64, 512):
        for kappa in (0.0, 1e-3, 1.0, 10.0, 100.0, 1e4, 1e6):
            p = acceptance_probability(dim, kappa)
            assert 0.657 <= p <= 1.0 + 1e-9, (dim, kappa, p)
            worst = min(worst, p)
    assert (1 - worst) ** CANDIDATES < 1.5e-15  # the bound the documentation states
    # the worst case of the grid (d = 2, huge kappa) in practice: nobody falls back
    _, accepted = wood_cosines(2, 1e6, 0, torch.arange(20000))
    assert bool(accepted.all())


def test_targets_fall_back_to_their_cluster_centre(monkeypatch):
    monkeypatch.setattr(vmf_targets, "CANDIDATES", 1)
    t = VMFTargets(2, seed=0, k=3, kappa=1e4)
    ids = torch.arange(3000)
    x = t(ids)
    centre = t.centres(t.clusters(ids))
    at_mode = (x - centre).norm(dim=1) < 1e-6
    _, accepted = wood_cosines(2, 1e4, t._wood_seed, ids, candidates=1)
    assert torch.equal(at_mode, ~accepted)
    assert 0.2 < float(at_mode.double().mean()) < 0.5  # 1 - 0.658: the fallback really ran


def test_options_rebuild_the_distribution_and_bad_values_are_refused():
    t = VMFTargets(8, seed=3, k=4, kappa=12.5)
    assert t.options() == {"dim": 8, "seed": 3, "k": 4, "kappa": 12.5}
    assert repr(t) == "VMFTargets(dim=8, seed=3, k=4, kappa=12.5)"
    rebuilt = VMFTargets(**t.options())
    assert torch.equal(rebuilt(torch.arange(50)), t(torch.arange(50)))
    for bad in ({"dim": 1}, {"k": 0}, {"kappa": -1.0}, {"kappa": math.inf}, {"kappa": math.nan}):
        with pytest.raises(ValueError):
            VMFTargets(**{"dim": 8, **bad})


def test_the_entry_point_registers_vmf(natkit_host):
    assert natkit.list_components("targets", "vmf") == ["vmf"]
    entry, _ = natkit_host.registries()["targets"].lookup("vmf")
    assert entry.plugin == "natkit-vmf"
    assert entry.help == "Balanced mixture of k von Mises-Fisher clusters on the sphere."
    t = natkit.create_targets("vmf", dim=8, kappa=5, seed=1)  # an int kappa, as YAML gives
    assert isinstance(t, VMFTargets) and t.kappa == 5.0 and isinstance(t.kappa, float)
    assert t.k == 10  # the default
    with pytest.raises(ConfigError, match="kappa"):
        natkit.create_targets("vmf", dim=8, kappa=-2.0)
    with pytest.raises(ConfigError, match="no parameter"):
        natkit.create_targets("vmf", dim=8, concentration=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_targets_on_the_gpu_are_the_cpu_targets():
    t = VMFTargets(16, seed=0, k=5, kappa=30.0)
    ids = torch.arange(1000)
    on_gpu = t(ids.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), t(ids))
