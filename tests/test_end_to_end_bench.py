"""The end-to-end benchmark: the paper preset's pace from each data path against memory."""

import json
import re
import subprocess
import sys

import pytest

from benchmarks.end_to_end import PATHS, rate_from_marks
from benchmarks.photos import write_photo_folder

# a tiny AlexNet on 32 px crops of the generated JPEGs: the benchmark's machinery, in seconds
TINY = ["data.image_size=32", "augment.crop_size=28", "backbone.widths=[4,8,8,8,8]",
        "backbone.fc=[16]", "targets.dim=8", "backbone.stem=small"]
CPU_PATHS = [name for name, (_, decode, _, _) in PATHS.items() if decode == "cpu"]


def bench(out, data, *args, timeout=240):
    cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--device", "cpu", "--images", "60",
           "--classes", "3", "--batch-size", "8", "--steps", "7", "--warmup", "2",
           "--workers", "2", "--prep-workers", "2", "--out", str(out), "--data", str(data),
           *[a for s in TINY for a in ("--set", s)], *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "end_to_end.json").read_text()), (out / "end_to_end.md").read_text(), proc


def test_the_folder_is_the_same_whatever_the_number_of_processes(tmp_path):
    one = write_photo_folder(tmp_path / "one", 10, (60, 45), classes=3, workers=1)
    two = write_photo_folder(tmp_path / "two", 10, (60, 45), classes=3, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*.jpg"))
    assert len(files) == 10 and sorted(p.name for p in one.iterdir()) == [
        "class000", "class001", "class002"]
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.jpg"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    other = write_photo_folder(tmp_path / "seed1", 10, (60, 45), classes=3, seed=1, workers=1)
    assert (other / files[0]).read_bytes() != (one / files[0]).read_bytes()


def test_rates_come_from_the_warmup_mark_to_the_last_one():
    assert rate_from_marks({2: 1.0, 12: 3.0, 22: 5.0}, 2, 8) == {
        "steps_timed": 20, "steps_per_s": 5.0, "images_per_s": 40.0}
    assert rate_from_marks({2: 1.0, 12: 3.0}, 2, 8)["steps_timed"] == 10  # timed out: partial
    assert rate_from_marks({}, 2, 8) == {} and rate_from_marks({2: 1.0}, 2, 8) == {}


def test_every_cpu_path_is_timed_against_memory(tmp_path):
    result, md, proc = bench(tmp_path / "out", tmp_path / "data", "--precision", "fp32")
    assert result["preparation"]["images"] == 60
    assert len(list((tmp_path / "data" / "folder").rglob("*.jpg"))) == 60
    for key in ("folder_s", "jpeg_shards_s", "raw_shards_s"):
        assert result["preparation"][key] > 0
    runs = {r["path"]: r for r in result["runs"]}
    assert set(runs) == set(PATHS) and all(r["precision"] == "fp32" for r in runs.values())
    memory = runs["memory"]["steps_per_s"]
    for name in CPU_PATHS:
        r = runs[name]
        assert r["status"] == "ok" and r["steps_timed"] == 5, r
        assert r["steps_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["steps_per_s"] * 8)
        assert r["fraction_of_memory"] == pytest.approx(r["steps_per_s"] / memory)
        assert r["workers"] == (0 if name == "memory" else 2)
    for name in set(PATHS) - set(CPU_PATHS):  # nvJPEG needs CUDA
        assert runs[name]["status"] == "skipped: needs CUDA"
        assert runs[name]["fraction_of_memory"] is None
    # the JSON and the Markdown say the same
    rows = {m[0]: m[1:] for m in re.findall(
        r"^\| ([^|]+?) \| (\d+) \| [^|]+ \| ([-\d.,]+) \| ([-\d,]+) \| ([-\d.]+) \| ([^|]+) \|$",
        md, re.M)}
    assert set(rows) == set(PATHS)
    for name, (workers, steps, images, fraction, status) in rows.items():
        r = runs[name]
        assert (int(workers), status) == (r["workers"], r["status"])
        if r["status"] == "ok":
            assert float(steps) == pytest.approx(r["steps_per_s"], abs=0.006)
            assert float(images.replace(",", "")) == pytest.approx(r["images_per_s"], abs=0.6)
            assert float(fraction) == pytest.approx(r["fraction_of_memory"], abs=0.006)
    assert "#### amp" in md and md.strip() in proc.stdout  # the tables are printed last
    # JPEG records at 256 are re-encoded from the folder's pixels: close, not equal
    diff = result["pixels"]["shard_record_vs_folder"]
    assert 0 < diff["mean"] < 4 and diff["max"] <= 255
    assert result["pixels"]["nvjpeg"] == "skipped: needs CUDA"


def test_a_path_that_fails_is_reported_and_the_rest_still_run(tmp_path):
    result, md, _ = bench(tmp_path / "out", tmp_path / "data", "--precision", "fp32",
                          "--path", "folder, CPU decode", "--path", "raw shards",
                          "--path-set", "folder, CPU decode=backbone.stem=nonsense")
    runs = {r["path"]: r for r in result["runs"]}
    assert runs["folder, CPU decode"]["status"] == "failed"
    assert "nonsense" in runs["folder, CPU decode"]["error"]
    assert runs["raw shards"]["status"] == "ok" and runs["raw shards"]["steps_per_s"] > 0
    assert runs["raw shards"]["fraction_of_memory"] is None  # memory was not run
    assert "Failures:" in md and "nonsense" in md


def test_a_spent_budget_skips_runs_and_too_few_timed_steps_are_refused(tmp_path):
    result, _, _ = bench(tmp_path / "out", tmp_path / "data", "--budget-s", "1")
    assert {r["status"] for r in result["runs"]} <= {"skipped: budget spent",
                                                     "skipped: needs CUDA"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--steps", "10",
                           "--warmup", "5", "--workers", "16"], capture_output=True, text=True)
    assert proc.returncode != 0 and "prefetch" in proc.stderr


def test_the_decoder_comparison_runs_where_the_gpu_decoder_is_given(tmp_path, monkeypatch):
    """The nvJPEG comparison's code on the CPU (torchvision decodes JPEG lists there too)."""
    from benchmarks.end_to_end import pixel_differences, prepare
    from natkit.datasets import gpu_decode

    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    prepare(tmp_path, 12, 1, 3)
    monkeypatch.setattr(gpu_decode, "check_available", lambda: None)
    diffs = pixel_differences(tmp_path, "cpu", count=8)
    assert diffs["images"] == 8
    for key in ("nvjpeg_vs_cpu_folder", "nvjpeg_vs_cpu_shards", "shard_record_vs_folder"):
        assert 0 <= diffs[key]["mean"] < 4 and diffs[key]["max"] <= 255, diffs
