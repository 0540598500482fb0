"""Image shards: ``natkit shards`` writes a folder once, resized; the ``shards`` dataset reads it."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import natkit
from benchmarks.loader import write_jpeg_folder
from natkit import config, lifecycle
from natkit.checkpoint import load_checkpoint, read_metrics
from natkit.cli import app
from natkit.datasets import imagefolder
from natkit.datasets import shard_writer as writer
from natkit.datasets.gpu_decode import EncodedBatch
from natkit.datasets.images import ImageReadWarning, load_image
from natkit.datasets.loader import BatchLoader
from natkit.errors import ConfigError, DataError
from natkit.testing import TINY, StopAfter, assert_same_state

runner = CliRunner()
SIZE = 32
# JPEG quality 95 without chroma subsampling, against the pixels load_image gives, of 255:
# measured 2.25 mean and 17 max here (32 px squares of noisy synthetic photographs: mostly
# fine detail); 1.5 and 23 at 256 px (docs/reproduce.md)
MEAN_BOUND, MAX_BOUND = 3.0, 24


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A held-out-fraction folder of 80 seeded JPEG photographs (60 x 45 and 45 x 60), 4 classes."""
    return write_jpeg_folder(tmp_path_factory.mktemp("photos") / "src", 80, (60, 45), classes=4)


def shards(src, out, *args):
    """``natkit shards SRC OUT ARGS`` in this process; returns the result."""
    return runner.invoke(app, ["shards", str(src), str(out), "--size", str(SIZE), "--workers", "0",
                               *args])


def written(src, out, *args):
    result = shards(src, out, *args)
    assert result.exit_code == 0, result.output
    return out


def one_error_line(result, expected):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


def test_records_are_load_image_pixels_and_imagefolders_splits(host, tmp_path, photos):
    folder = {split: imagefolder.create(split=split, root=str(photos), image_size=SIZE, cache=False)
              for split in ("train", "test")}
    raw = written(photos, tmp_path / "raw", "--encoding", "raw")
    jpeg = written(photos, tmp_path / "jpeg")
    diffs = []
    for split, ds in folder.items():
        exact = natkit.create_dataset("shards", split=split, root=str(raw), cache=False)
        coded = natkit.create_dataset("shards", split=split, root=str(jpeg), cache=False)
        assert exact.classes == coded.classes == ds.classes
        assert exact.labels.tolist() == coded.labels.tolist() == ds.labels.tolist()
        assert [photos / exact.source(i) for i in range(len(exact))] == ds.files
        for i in range(len(ds)):
            expected = load_image(ds.path(i), SIZE)
            assert torch.equal(exact.raw_item(i), expected)  # raw: the very pixels
            diffs.append((coded.raw_item(i).int() - expected.int()).abs())
    diffs = torch.stack(diffs).float()
    print(f"JPEG round trip: mean {diffs.mean():.2f}, max {diffs.max():.0f} of 255")
    assert diffs.mean() < MEAN_BOUND and diffs.max() <= MAX_BOUND
    assert (len(folder["train"]), len(folder["test"])) == (64, 16)
    # the same records whatever the number of workers
    again = written(photos, tmp_path / "two", "--workers", "2")
    for name in ("train.bin", "test.bin"):
        assert (again / name).read_bytes() == (jpeg / name).read_bytes()
    manifest = json.loads((jpeg / "shards.json").read_text())
    assert (manifest["format"], manifest["version"], manifest["size"]) == ("natkit-shards", 1, SIZE)
    assert manifest["jpeg"] == {"quality": 95, "subsampling": "4:4:4"}


def test_train_test_trees_and_a_seeded_fraction_split_as_imagefolder_does(host, tmp_path):
    trees = tmp_path / "trees"
    write_jpeg_folder(trees / "train", 12, (40, 30), classes=3)
    write_jpeg_folder(trees / "val", 6, (40, 30), classes=3, seed=1)
    flat = write_jpeg_folder(tmp_path / "flat", 30, (40, 30), classes=3)
    cases = [(trees, []), (flat, ["--test-fraction", "0.3", "--seed", "7"])]
    for src, args in cases:
        out = written(src, tmp_path / f"{src.name}-shards", *args)
        options = {"test_fraction": 0.3, "seed": 7} if args else {}
        for split in ("train", "test"):
            ds = imagefolder.create(split=split, root=str(src), image_size=SIZE, cache=False,
                                    **options)
            sh = natkit.create_dataset("shards", split=split, root=str(out))
            assert [src / sh.source(i) for i in range(len(sh))] == ds.files
            assert sh.labels.tolist() == ds.labels.tolist() and sh.classes == ds.classes


def test_unreadable_files_are_skipped_counted_and_listed(host, tmp_path):
    src = write_jpeg_folder(tmp_path / "src", 8, (40, 30), classes=2)
    (src / "class00" / "junk.jpg").write_bytes(b"not an image")
    good = next((src / "class01").glob("*.jpg"))
    (src / "class01" / "cut.jpg").write_bytes(good.read_bytes()[:300])  # header fine, data cut
    with pytest.warns(ImageReadWarning, match="cut.jpg"):
        result = shards(src, tmp_path / "out", "--test-fraction", "0.25")
    assert result.exit_code == 0, result.output
    counts = re.findall(r"^(?:train|test): .*, (\d+) skipped \(unreadable\)$", result.stderr, re.M)
    assert sum(map(int, counts)) == 2, result.stderr
    skipped = json.loads((tmp_path / "out" / "shards.json").read_text())["splits"]
    names = {Path(rel).name for s in skipped.values() for rel, _ in s["skipped"]}
    assert names == {"junk.jpg", "cut.jpg"}
    total = sum(len(natkit.create_dataset("shards", split=s, root=str(tmp_path / "out")))
                for s in ("train", "test"))
    assert total == 8


def test_a_smaller_image_size_is_resized_on_read_and_a_larger_one_refused(host, tmp_path, photos):
    for encoding in ("raw", "jpeg"):
        out = written(photos, tmp_path / encoding, "--encoding", encoding)
        small = natkit.create_dataset("shards", split="test", root=str(out), image_size=16)
        full = natkit.create_dataset("shards", split="test", root=str(out))
        assert small.raw_item(0).shape == (3, 16, 16) and full.image_size == SIZE
        halved = torch.nn.functional.avg_pool2d(full.raw_item(0).float()[None], 2)[0]
        assert (small.raw_item(0).float() - halved).abs().mean() < 3
        with pytest.raises(ConfigError, match=r"^data.image_size: 48 is larger than the 32 px"):
            natkit.create_dataset("shards", split="train", root=str(out), image_size=48)


@pytest.mark.parametrize("damage", ["flipped bytes", "undecodable with a matching CRC"])
def test_a_corrupt_record_is_blank_with_a_warning_and_never_stops_the_loader(host, tmp_path,
                                                                            photos, damage):
    out = written(photos, tmp_path / "out")
    index = dict(np.load(out / "train.index.npz"))
    start, end = index["offsets"][3], index["offsets"][4]
    data = bytearray((out / "train.bin").read_bytes())
    data[start + 2:end] = bytes(end - start - 2)  # the JPEG's marker kept, the rest zeroed
    (out / "train.bin").write_bytes(bytes(data))
    if damage != "flipped bytes":
        import zlib

        index["crc32"][3] = zlib.crc32(bytes(data[start:end]))
        np.savez(out / "train.index.npz", **index)
    ds = natkit.create_dataset("shards", split="train", root=str(out), cache=False)
    with pytest.warns(ImageReadWarning, match=r"corrupt record 3 of .*train.bin"):
        assert not ds.raw_item(3).any()
    assert ds.raw_item(2).any() and ds.raw_item(4).any()
    rows = torch.arange(len(ds)).view(-1, 16)
    with BatchLoader(ds, 2, torch.Generator().manual_seed(0), workers_make_float=False) as loader:
        batches = list(loader.epoch(rows))
    images = torch.cat([b[0] for b in batches])
    assert len(batches) == 4 and not images[3].any() and images[4].any()


def test_a_truncated_or_foreign_folder_costs_one_line(host, tmp_path, photos):
    out = written(photos, tmp_path / "out", "--encoding", "raw")
    with open(out / "train.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="truncated or changed since it was written"):
        natkit.create_dataset("shards", split="train", root=str(out))
    with pytest.raises(DataError, match="holds no shards.json"):
        natkit.create_dataset("shards", split="train", root=str(photos))
    manifest = json.loads((out / "shards.json").read_text())
    (out / "shards.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(DataError, match="format version 99; this natkit reads version 1"):
        natkit.create_dataset("shards", split="test", root=str(out))
    with pytest.raises(ConfigError, match="hold raw pixels"):  # nothing for nvJPEG to decode
        (out / "shards.json").write_text(json.dumps(manifest))
        natkit.create_dataset("shards", split="test", root=str(out), decode="gpu")


def test_the_gpu_path_hands_over_the_jpeg_records(host, tmp_path, photos, monkeypatch):
    """decode: gpu: workers slice the records, decode_raw decodes them (torchvision, on the CPU here)."""
    out = written(photos, tmp_path / "out")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = natkit.create_dataset("shards", split="test", root=str(out), decode="gpu", cache=False)
    cpu = natkit.create_dataset("shards", split="test", root=str(out), cache=False)
    rows = torch.arange(len(gpu))
    packed = gpu.raw_batch(rows)
    assert isinstance(packed, EncodedBatch)
    assert bytes(packed.files()[5].numpy()) == bytes(cpu.data[cpu._offsets[5]:cpu._offsets[6]])
    images = gpu.decode_raw(packed, torch.device("cpu"))
    assert (images.float() - cpu.raw_batch(rows).float()).abs().mean() < 1.0


def test_workers_started_by_spawn_map_the_file_themselves(host, tmp_path, photos):
    out = written(photos, tmp_path / "out", "--encoding", "raw")
    ds = natkit.create_dataset("shards", split="train", root=str(out), cache=False)
    ds.raw_item(0)  # the map is open here
    copy = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < (out / "train.bin").stat().st_size / 4
    assert torch.equal(copy.raw_item(7), ds.raw_item(7))


def test_existing_output_is_kept_without_force_and_anything_else_always(host, tmp_path, photos):
    out = written(photos, tmp_path / "out")
    one_error_line(shards(photos, out), "OUT_DIR: '" + str(out) + "' already holds shards; "
                                        "give --force")
    written(photos, out, "--force", "--encoding", "raw")
    assert json.loads((out / "shards.json").read_text())["encoding"] == "raw"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_error_line(shards(photos, mine, "--force"), "exists and is not a folder natkit shards "
                                                   "wrote; it is kept, even with --force")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_force_replaces_shards_but_never_what_lies_beside_them(host, tmp_path, photos):
    out = written(photos, tmp_path / "out")
    (out / "photos").mkdir()  # e.g. the source images, copied next to their shards
    (out / "photos" / "a.jpg").write_bytes(b"precious")
    one_error_line(shards(photos, out, "--force"), "holds shards and other files ('photos', ...)"
                                                   "; they are kept, even with --force")
    assert (out / "photos" / "a.jpg").read_bytes() == b"precious"


def test_sigterm_while_writing_cleans_up_as_ctrl_c_does(tmp_path):
    src = write_jpeg_folder(tmp_path / "src", 300, (300, 225), classes=2)
    proc = subprocess.Popen([sys.executable, "-m", "natkit", "shards", str(src),
                             str(tmp_path / "out"), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp-*/train.bin")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM): no shards were "
                                                      "written")
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_ctrl_c_while_writing_leaves_nothing(host, tmp_path, photos, monkeypatch):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = writer.encode
    monkeypatch.setattr(writer, "encode", interrupted)
    result = shards(photos, tmp_path / "out")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted: no shards were written")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_write_leaves_no_finished_looking_output_and_the_next_cleans_up(tmp_path):
    src = write_jpeg_folder(tmp_path / "src", 300, (300, 225), classes=2)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "natkit", "shards", str(src), str(out),
                             "--workers", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp-*/train.bin")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # only a hidden temporary folder, without a manifest
    (left,) = tmp_path.glob(".out.tmp-*")
    assert not (left / "shards.json").exists()
    with pytest.raises(DataError, match="holds no shards.json"):
        natkit.create_dataset("shards", split="train", root=str(left))
    result = runner.invoke(app, ["shards", str(src), str(out), "--size", "16", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert f"removed '{left}', left by an interrupted write\n" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


BAD_ARGUMENTS = {
    "--size": (["--size", "4"], "--size: expected a value >= 8, got 4"),
    "--quality": (["--quality", "0"], "--quality: expected a value >= 1, got 0"),
    "--encoding": (["--encoding", "png"], "--encoding: expected one of jpeg, raw, got 'png'"),
    "--workers": (["--workers", "-1"], "--workers: expected a value >= 0, got -1"),
    "--test-fraction": (["--test-fraction", "1.5"], "--test-fraction: expected a value < 1.0"),
    "SRC": (["{t}/nowhere", "{t}/out"], "SRC: '{t}/nowhere' is not a directory"),
    "SRC without classes": (["{t}/empty", "{t}/out"], "SRC: '{t}/empty' holds no class folders"),
    "OUT_DIR in SRC": (["{t}/src", "{t}/src/out"], "OUT_DIR: '{t}/src/out' is inside SRC"),
    "SRC in OUT_DIR": (["{t}/src", "{t}"], "SRC: '{t}/src' is inside OUT_DIR '{t}'"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_cost_one_line_naming_them_and_exit_code_2(host, tmp_path, case):
    write_jpeg_folder(tmp_path / "src", 4, (20, 15), classes=2)
    (tmp_path / "empty").mkdir()
    args, expected = BAD_ARGUMENTS[case]
    args = [a.format(t=tmp_path) for a in args]
    paths = args if not args[0].startswith("-") else [str(tmp_path / "src"), str(tmp_path / "o"),
                                                       *args]
    result = runner.invoke(app, ["shards", *paths])
    one_error_line(result, expected.format(t=tmp_path))
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- training from shards

SMALL = [t for t in TINY if not t.startswith("data.")]


def shard_config(out, *extra):
    return config.build(overrides=[*SMALL, "data.name=shards", f"data.root={out}",
                                   "data.cache=false", "eval.enabled=false", *extra])


def test_a_run_trains_and_evaluates_from_shards(host, tmp_path, photos):
    out = written(photos, tmp_path / "shards")
    result = runner.invoke(app, ["run", "--data", "shards", "--out", str(tmp_path / "run"),
                                 *[a for t in [*SMALL, f"data.root={out}", "data.image_size=16",
                                               "data.cache=false", "train.num_workers=2",
                                               "train.epochs=1"] for a in ("--set", t)]])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"linear", "knn"} <= results.keys()  # evaluated, on the shards' test split
    assert all(0.0 <= results[p]["trained"] <= 1.0 for p in ("linear", "knn"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if r["kind"] == "step"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_raw_shards_train_exactly_what_the_folder_trains(host, tmp_path, photos):
    """The same images, ids and pixels: the run from raw shards is the run from the JPEGs."""
    out = written(photos, tmp_path / "raw", "--size", "16", "--encoding", "raw")
    common = [*SMALL, "data.image_size=16", "data.cache=false", "train.num_workers=2",
              "train.epochs=1", "train.log_every=1", "eval.enabled=false", "deterministic=true"]
    for name, root in (("imagefolder", photos), ("shards", out)):
        run = config.build(overrides=[*common, f"data.name={name}", f"data.root={root}"])
        lifecycle.start(run, tmp_path / name).train()
    losses = [[r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "step"]
              for name in ("imagefolder", "shards")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("imagefolder", "shards"))
    for key in ("model", "method"):
        assert_same_state(a[key], b[key], key)


def test_a_stop_mid_epoch_with_workers_resumes_bit_exactly_from_shards(host, tmp_path, photos):
    out = written(photos, tmp_path / "shards")
    extra = ("train.num_workers=2", "head.hidden=[16]", "head.dropout=0.5", "deterministic=true")
    lifecycle.start(shard_config(out, *extra), tmp_path / "full").train()
    host.register(StopAfter(step=5), name="stopper")
    assert lifecycle.start(shard_config(out, *extra), tmp_path / "part").train() is False
    host.unregister("stopper")
    lifecycle.resume(tmp_path / "part").train()
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("part", "full"))
    for key in ("model", "optimizer", "method", "rng", "step", "epoch"):
        assert_same_state(a[key], b[key], key)


# Each rank logs the records its loader reads (its DataLoader workers inherit RANK).
WORKER = textwrap.dedent('''
    import os, sys
    from natkit.cli import main
    from natkit.datasets.shards import ShardDataset

    read = ShardDataset.raw_item

    def logged(self, index):
        with open(os.path.join(os.environ["READ_LOG"], os.environ.get("RANK", "solo")), "a") as f:
            f.write(f"{index}\\n")
        return read(self, index)

    ShardDataset.raw_item = logged
    sys.argv = ["natkit", *sys.argv[1:]]
    main()
''')


def test_each_rank_under_torchrun_reads_only_its_share_of_the_shards(tmp_path, photos):
    out = written(photos, tmp_path / "shards")
    worker, logs = tmp_path / "worker.py", tmp_path / "reads"
    worker.write_text(WORKER)
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE",
                                                                     "LOCAL_RANK", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1",
                "NATKIT_DIST_TIMEOUT": "60", "READ_LOG": str(logs)})
    args = ["run", "--data", "shards", *[a for t in [*SMALL, f"data.root={out}", "data.cache=false",
                                                      "train.num_workers=1", "train.epochs=1",
                                                      "eval.enabled=false"] for a in ("--set", t)]]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(worker), *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(worker), *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    reads = {name: [int(i) for i in (logs / name).read_text().split()] for name in ("0", "1", "solo")}
    assert len(reads["0"]) == len(reads["1"]) == 32  # half of each global batch of 16, 4 steps
    assert set(reads["0"]).isdisjoint(reads["1"])
    assert sorted(reads["0"] + reads["1"]) == sorted(reads["solo"])  # together, one process's


def test_the_shards_benchmark_times_the_three_readers(host, tmp_path):
    from benchmarks.shards import measure

    root = write_jpeg_folder(tmp_path / "photos", 12, (50, 40), classes=2)
    result = measure(root, 32, passes=1)
    assert len(result["rates"]) == 3 and all(r > 0 for r in result["rates"].values())
    assert result["bytes_per_image"]["raw"] == 3 * 32 * 32
    assert 0 < result["jpeg_difference"]["mean"] < MEAN_BOUND


def test_a_broken_test_split_is_refused_before_training(host, tmp_path, photos):
    out = written(photos, tmp_path / "out", "--encoding", "raw")
    (out / "test.bin").unlink()
    with pytest.raises(DataError, match="test"):
        natkit.create_dataset("shards", split="train", root=str(out))


def test_a_train_tree_that_is_a_symbolic_link_is_written_as_imagefolder_reads_it(host, tmp_path):
    write_jpeg_folder(tmp_path / "elsewhere", 12, (40, 30), classes=2)
    trees = tmp_path / "trees"
    trees.mkdir()
    (trees / "train").symlink_to(tmp_path / "elsewhere")
    write_jpeg_folder(trees / "test", 6, (40, 30), classes=2, seed=1)
    out = written(trees, tmp_path / "out", "--encoding", "raw", "--size", "16")
    for split in ("train", "test"):
        ours = natkit.create_dataset("shards", split=split, root=str(out))
        theirs = imagefolder.create(split=split, root=str(trees), image_size=16,
                                    index_cache=False)
        assert torch.equal(ours.labels, theirs.labels)
        assert torch.equal(ours.raw_item(len(ours) - 1), theirs.raw_item(len(theirs) - 1))
