"""The feature store: float16 files read in chunks, streamed statistics and chunked probes."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import natkit.files
from natkit import builders, lifecycle
from natkit.errors import OutputError
from natkit.evaluation import knn, probes
from natkit.evaluation.features import extract_features, write_features
from natkit.evaluation.knn import knn_probe
from natkit.evaluation.probes import fit_linear, linear_probe
from natkit.evaluation.protocol import evaluate_run
from natkit.evaluation.reporting import QUIET
from natkit.evaluation.rows import Rows, statistics
from natkit.evaluation.store import STORE_PREFIX, StoreWriter, TensorFeatures, moments


def write(path, x, rows=37):
    writer = StoreWriter(path)
    for chunk in x.split(rows):
        writer.append(chunk)
    return writer.finish()



class _Full:
    """A file on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_refused_feature_store_is_one_line_naming_it_and_leaves_no_file(tmp_path, monkeypatch):
    x = torch.randn(10, 4)
    writer = StoreWriter(tmp_path / "a.f16")
    writer.append(x)
    writer._file = _Full()
    with pytest.raises(OutputError, match=r"^eval: cannot write '.*a\.f16': no space is left on "
                                          r"the device; nothing was written; free space there"):
        writer.append(x)
    writer.abort()  # as write_features does on the way out: nothing left to do
    assert list(tmp_path.iterdir()) == []

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = StoreWriter(tmp_path / "b.f16")
    writer.append(x)
    monkeypatch.setattr(natkit.files.os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write '.*b\.f16': no space is left"):
        writer.finish()
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_feature_store_leaves_nothing_and_a_finished_one_only_itself(tmp_path):
    writer = StoreWriter(tmp_path / "a.f16")
    writer.append(torch.randn(10, 4))
    writer.abort()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    store = write(tmp_path / "b.f16", torch.randn(10, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["b.f16"] and len(store) == 10

@pytest.fixture(scope="module")
def real_features():
    """Features of a random-init network on 400 + 200 shapes (what a probe really sees)."""
    from natkit import config as cfg
    from natkit.testing import TINY

    config = cfg.build(overrides=[*TINY, "data.num_train=400", "data.num_test=200",
                                  "device=cpu"])
    train, test = builders.load_dataset(config, "train"), builders.load_dataset(config, "test")
    net = builders.initial_network(config, train)
    cpu = torch.device("cpu")
    return (extract_features(net, train, "conv3", cpu, 128), train.labels,
            extract_features(net, test, "conv3", cpu, 128), test.labels)


def test_the_store_round_trips_within_float16_of_each_features_spread(tmp_path):
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([1.0, 0.01, 50.0, 1e-4])
    x = torch.randn(300, 4, generator=g) * spread + torch.tensor([0.0, 100.0, -3.0, 7.0])
    store = write(tmp_path / "f.f16", x)
    assert store.path.stat().st_size == store.nbytes == 300 * 4 * 2
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed
    back = store.read(np.arange(300))
    # float16 keeps ~3 digits of the deviation from the first chunk's mean, not of the value:
    # raw float16 would round 100 +- 0.01 to steps of 0.06, losing that feature entirely
    assert ((back - x).abs() / spread).max() < 5e-3
    some = np.array([0, 1, 2, 150, 151, 299])
    assert torch.equal(store.read(some), back[some])
    assert store.clipped == 0


def test_values_beyond_float16_saturate_and_are_counted(tmp_path):
    x = torch.zeros(20, 2)
    x[15, 0] = 1e9  # constant in the first chunk, huge later
    store = write(tmp_path / "f.f16", x, rows=10)
    back = store.read(np.arange(20))
    assert store.clipped == 1 and torch.isfinite(back).all() and back[15, 0] > 1e3


def test_streamed_mean_and_std_equal_torchs():
    x = torch.randn(1000, 5, dtype=torch.float64) * 3 + 1e4  # a large offset: no cancellation
    mean, std = moments(iter(x.split(77)), 5)
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(std, x.std(0), rtol=1e-9, atol=0)
    rows = Rows(TensorFeatures(x.float()), np.arange(1000), torch.zeros(1000, dtype=torch.int64),
                chunk=64)
    torch.testing.assert_close(statistics(rows)[1], x.float().double().std(0), rtol=1e-9, atol=0)


def dense_knn(bank, bank_y, query, k, temperature=0.07):
    """The former dense kNN: every similarity at once."""
    sims, idx = (F.normalize(query, dim=1) @ F.normalize(bank, dim=1).t()).topk(k, dim=1)
    votes = torch.zeros(len(query), int(bank_y.max()) + 1)
    votes.scatter_add_(1, bank_y[idx], (sims / temperature).exp())
    return votes.argmax(dim=1)


def test_chunked_knn_predicts_exactly_what_the_dense_knn_does(real_features, tmp_path,
                                                              monkeypatch):
    x, y, tx, _ = real_features
    store = write(tmp_path / "train.f16", x)
    decoded = store.read(np.arange(len(x)))
    monkeypatch.setattr(knn, "_SIMS_ELEMENTS", 5 * 23)  # bank blocks of 23 rows
    bank = Rows(store, np.arange(len(x)), y, chunk=61)  # bank chunks of 61 rows
    query = Rows(TensorFeatures(tx), np.arange(len(tx)), torch.zeros(len(tx), dtype=torch.int64),
                 chunk=47)
    ks = [1, 5, 20, 50]
    chunked = knn._knn_votes(bank, query, ks, 0.07, "cpu", QUIET)
    for k in ks:
        assert torch.equal(chunked[k], dense_knn(decoded, y, tx, k)), k
    assert len(set(chunked[20].tolist())) > 3  # real, varied predictions


def test_the_chunked_linear_probe_solves_the_same_problem(real_features, tmp_path):
    x, y, tx, ty = real_features
    one = Rows.labelled(x, y)
    many = Rows.labelled(write(tmp_path / "x.f16", x), y, chunk_mb=64 * 4 * x.shape[1] / 2**20)
    assert one.chunk >= len(x) and many.chunk == 64
    mean, std = statistics(one)
    a = fit_linear(one.standardised(mean, std), weight_decay=1e-3, iterations=100)
    b = fit_linear(many.standardised(mean, std), weight_decay=1e-3, iterations=100)
    # a convex problem: the same minimiser, whatever the chunking (float16 storage aside)
    scale = a.weight.abs().max()
    assert (a.weight - b.weight).abs().max() < 0.02 * scale
    in_memory = linear_probe(x, y, tx, ty, weight_decays=[1e-4, 1e-2], iterations=100)
    streamed = linear_probe(write(tmp_path / "train.f16", x), y, write(tmp_path / "t.f16", tx),
                            ty, weight_decays=[1e-4, 1e-2], iterations=100, chunk_mb=0.05)
    assert in_memory.accuracy > 0.2  # well above chance (0.1): a real comparison
    assert abs(in_memory.accuracy - streamed.accuracy) <= 0.01
    assert in_memory.setting == streamed.setting


def test_the_mlp_stream_visits_every_row_once_per_epoch_in_mixed_batches():
    n = 1000
    rows = Rows(TensorFeatures(torch.arange(n, dtype=torch.float32)[:, None]), np.arange(n),
                torch.arange(n) % 10, chunk=300)
    batches = list(probes._shuffled_batches(rows, 64, torch.Generator().manual_seed(0), "cpu"))
    seen = torch.cat([x[:, 0] for x, _ in batches]).long()
    assert torch.equal(seen.sort().values, torch.arange(n))
    assert all(torch.equal(yb, xb[:, 0].long() % 10) for xb, yb in batches)  # labels follow
    assert seen[:64].max() - seen[:64].min() > 300  # not consecutive rows


def test_knn_probe_reads_a_store_with_unlabelled_rows(real_features, tmp_path):
    x, y, tx, ty = real_features
    partly = y.clone()
    partly[::7] = -1  # unlabelled rows are left out, as before
    kept = partly >= 0
    a = knn_probe(x[kept], y[kept], tx, ty, ks=[1, 5])
    b = knn_probe(write(tmp_path / "x.f16", x), partly, tx, ty, ks=[1, 5], chunk_mb=0.02)
    assert a.setting == b.setting and abs(a.accuracy - b.accuracy) <= 0.01


def test_write_features_stores_what_extract_features_returns(tiny_config, tmp_path):
    config = tiny_config()
    dataset = builders.load_dataset(config, "test")
    net = builders.initial_network(config, dataset)
    x = extract_features(net, dataset, "conv3", torch.device("cpu"), 16)
    store = write_features(net, dataset, "conv3", torch.device("cpu"), tmp_path / "s.f16", 16)
    back = store.read(np.arange(len(x)))
    assert back.shape == x.shape
    torch.testing.assert_close(back, x, atol=2e-3 * float(x.std()), rtol=2e-3)


def test_a_streamed_evaluation_writes_results_and_leaves_no_feature_files(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("eval.chunk_mb=0.001", "eval.plots=true"), tmp_path / "run")
    run.train()
    # an evaluation killed outright leaves its folder; its process is gone, so it is removed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run" / f"{STORE_PREFIX}{dead.pid}").mkdir()
    (tmp_path / "run" / f"{STORE_PREFIX}{dead.pid}" / "trained-train.f16").write_bytes(b"x")
    out = evaluate_run(tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results == out["results"] and set(results) == {"linear", "mlp", "knn"}
    assert all(0.0 <= v <= 1.0 for accs in results.values() for v in accs.values())
    details = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert details["feature_store"]["bytes"] == 2 * (64 + 40) * details["feature_dim"] * 2
    assert (tmp_path / "run" / "neighbours.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "run").glob(STORE_PREFIX + "*"))  # the files are gone


def test_the_memory_benchmark_renders_its_images_on_demand_and_judges_the_goal():
    from benchmarks.eval_memory import report, stripes_dataset

    data = stripes_dataset("train", num_train=50_000, image_size=16)
    batch = data.get_batch(torch.tensor([3, 49_999]))
    assert batch.shape == (2, 3, 16, 16) and batch.min() >= 0 and batch.max() <= 1
    assert torch.equal(batch[1], data.load(49_999))  # a function of the index, nothing stored
    assert not hasattr(data, "images") and data.labels[13] == 3
    row = {"n": 20_000, "test_images": 2500, "feature_dim": 144, "store_bytes": 2**20,
           "seconds": 9.0, "peak_rss_mib": 1000, "threads": 2}
    result = {"rows": [row, {**row, "n": 80_000, "peak_rss_mib": 1150}], "chunk_mb": 8.0,
              "malloc": "glibc defaults", "cpu_cores": 2, "date": "today",
              "growth_20k_80k": 0.15, "goal": 0.10}
    assert "+15.0% (goal: within 10%, NOT met)" in report(result)
    assert "| 80,000 | 2,500 | 144 | 1,150 | 1.0 | 9 |" in report(result)


def test_the_training_accuracy_is_read_on_a_capped_sample(monkeypatch):
    from natkit.evaluation import selection

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x[:, 0] > 0).long()
    read = []
    original = selection._accuracy

    def counting(predictor, rows):
        read.append(len(rows))
        return original(predictor, rows)

    monkeypatch.setattr(selection, "_accuracy", counting)
    monkeypatch.setattr(selection, "TRAIN_ACCURACY_ROWS", 50)
    result = knn_probe(x[:200], y[:200], x[200:], y[200:], ks=[3], temperature=0.1,
                       val_fraction=0.2, seed=0)
    assert read[-1] == 50  # the last accuracy read is the training one, on 50 sampled rows
    assert 0.5 < result.train_accuracy <= 1.0
