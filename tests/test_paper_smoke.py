"""The paper-preset smoke benchmark: the authors' recipe trains on a generated JPEG folder."""

import json
import subprocess
import sys

from benchmarks.paper_smoke import write_folder


def test_the_generated_folder_has_the_imagenet_layout(tmp_path):
    train = write_folder(tmp_path, images=12, size=(60, 45), classes=3)
    assert sorted(p.name for p in train.iterdir()) == ["class00", "class01", "class02"]
    assert len(list(train.rglob("*.jpg"))) == 12


def test_a_few_steps_of_the_paper_preset_are_timed_and_measured(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paper_smoke", "--steps", "3", "--warmup", "1",
         "--batch-size", "8", "--workers", "1", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "paper_smoke.json").read_text())
    assert result["steps_done"] == 3  # the preset started on the folder and trained
    assert result["steps_per_s"] > 0 and result["images_per_s"] == result["steps_per_s"] * 8
    assert result["peak_rss_mib"] > 100  # AlexNet's 61M parameters alone take 230 MiB
    assert "3 steps, steps 1..3 timed" in (out / "paper_smoke.md").read_text()
