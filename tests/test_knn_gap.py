"""The kNN probe's choice of feature normalisation (issue 13, item 3) and benchmarks/knn_gap.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import knn_gap
from natkit import config as cfg
from natkit.datasets import stratified_split
from natkit.errors import ConfigError
from natkit.evaluation import knn
from natkit.evaluation.knn import knn_probe
from natkit.evaluation.store import StoreWriter


def amplified_noise(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told apart by 2 large features, plus 300 features of tiny pure noise.

    Standardising scales the noise up to the signal's size, where it drowns the
    classes in the cosine; the raw features keep it negligible.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    signal = torch.randn(n, 2, generator=g) * 0.5 + torch.stack([y, 1 - y], 1) * 3.0
    noise = torch.randn(n, 300, generator=g) * 1e-3
    return torch.cat([signal, noise], 1), y


def dense_cosine_knn(bank, bank_y, query, k, temperature=0.07):
    sims, idx = (F.normalize(query, dim=1) @ F.normalize(bank, dim=1).t()).topk(k, dim=1)
    votes = torch.zeros(len(query), int(bank_y.max()) + 1)
    votes.scatter_add_(1, bank_y[idx], (sims / temperature).exp())
    return votes.argmax(dim=1)


def test_l2_is_chosen_on_validation_where_standardising_amplifies_noise():
    x, y = amplified_noise(400, 0)
    tx, ty = amplified_noise(300, 1)
    standardised = knn_probe(x, y, tx, ty, ks=[1, 5])
    chosen = knn_probe(x, y, tx, ty, ks=[1, 5], normalizations=["standardize", "l2"])
    assert standardised.accuracy < 0.8  # the noise decides the neighbours
    assert chosen.setting["normalize"] == "l2" and chosen.accuracy > 0.99
    assert chosen.val_accuracy > standardised.val_accuracy


def test_l2_knn_streamed_from_a_store_equals_the_dense_cosine_knn(tmp_path, monkeypatch):
    x, y = amplified_noise(300, 2)
    x = x + 5.0  # an offset standardising would remove: l2 must not
    tx, ty = amplified_noise(200, 3)
    tx = tx + 5.0
    writer = StoreWriter(tmp_path / "train.f16")
    writer.append(x)
    store = writer.finish()
    decoded = store.read(np.arange(len(x)))
    monkeypatch.setattr(knn, "_SIMS_ELEMENTS", 5 * 23)
    result = knn_probe(store, y, tx, ty, ks=[3, 7], normalizations=["l2"], chunk_mb=0.005)
    k = result.setting["k"]
    expected = float((dense_cosine_knn(decoded, y, tx, k) == ty).float().mean())
    assert result.setting["normalize"] == "l2" and result.accuracy == expected
    # and k was chosen by the dense kNN's validation accuracy on the fit part
    fit, val = (torch.from_numpy(i) for i in stratified_split(y.numpy(), 0.2, 0))
    scores = {kk: float((dense_cosine_knn(decoded[fit], y[fit], decoded[val], kk)
                         == y[val]).float().mean()) for kk in (3, 7)}
    assert scores[k] == max(scores.values()) and result.val_accuracy == scores[k]


def test_an_unknown_normalisation_is_refused():
    x, y = amplified_noise(40, 0)
    with pytest.raises(ValueError, match="standardize, l2"):
        knn_probe(x, y, x, y, ks=[1], normalizations=["whiten"])


def test_the_config_names_the_normalisations():
    assert cfg.build().eval.knn_normalize == ["standardize"]
    assert cfg.build(overrides=["eval.knn_normalize=[standardize,l2]"]).eval.knn_normalize == [
        "standardize", "l2"]
    with pytest.raises(ConfigError, match="knn_normalize"):
        cfg.build(overrides=["eval.knn_normalize=[cosine]"])


def test_dense_probe_of_the_script_whitens_with_the_bank_statistics():
    x, y = amplified_noise(200, 4)
    tx, ty = amplified_noise(100, 5)
    acc, setting = knn_gap.dense_knn_probe(x, y, tx, ty, how="whiten", ks=(1, 5),
                                           temperature=0.07, val_fraction=0.2, seed=0)
    assert setting["normalize"] == "whiten" and 0.0 <= acc <= 1.0
    apply = knn_gap._transform("whiten")(x)
    white = apply(x)
    cov = torch.cov(white.T.double())
    # whitened up to the eigenvalue floor: no direction has more than unit variance
    assert float(torch.linalg.eigvalsh(cov).max()) <= 1.0 + 1e-3


def test_the_script_skips_when_no_run_exists(tmp_path, capsys):
    assert knn_gap.main(["--runs", str(tmp_path), "--out", str(tmp_path / "k.md")]) == 0
    assert "no finished run" in capsys.readouterr().err
    assert not (tmp_path / "k.md").exists()
