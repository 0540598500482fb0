"""Hostile or nonsensical files: decompression bombs, one-class folders, tampered checkpoints."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from natkit import lifecycle
from natkit.checkpoint import load_checkpoint, save_checkpoint
from natkit.datasets import imagefolder
from natkit.datasets.imagefolder import ImageReadWarning
from natkit.errors import CheckpointError, ConfigError, DataError
from natkit.testing import TINY

runner = CliRunner()
FOLDER = ["data.name=imagefolder", "data.image_size=16", "data.test_fraction=0.34"]
NOT_DATA = [t for t in TINY if not t.startswith("data.")]  # TINY's data options are the shapes'


@pytest.fixture
def folder_config(host):
    from natkit import config

    def make(*extra: str) -> config.Config:
        return config.build(overrides=[*NOT_DATA, *FOLDER, *extra])

    return make


def lying_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` but holds one row of pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b""))


def folder(root: Path, classes: tuple[str, ...], per_class: int = 4) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (24, 20), (40 * c, 30 * i, 90)).save(root / name / f"{i}.png")
    return root


def test_a_decompression_bomb_is_skipped_by_name_never_decoded(tmp_path):
    root = folder(tmp_path / "data", ("cat", "dog"))
    lying_png(root / "cat" / "bomb.png", 20000, 20000)
    with pytest.warns(ImageReadWarning, match="bomb.png.*could be decompression bomb"):
        data = imagefolder.create(root=str(root), image_size=16, test_fraction=0.25)
    assert all(path.name != "bomb.png" for path in data.files)
    assert [p.name for p, _ in data.skipped] == ["bomb.png"]


def test_an_image_over_the_warning_limit_is_refused_too(tmp_path, monkeypatch):
    root = folder(tmp_path / "data", ("cat", "dog"))
    # between PIL's limit and twice it, PIL only warns; natkit refuses to decode it all the same
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 20 - 1)
    with pytest.warns(ImageReadWarning, match="exceeds limit of 479 pixels"), \
            pytest.raises(DataError, match="none of the 6 images could be read"):
        imagefolder.create(root=str(root), image_size=16)


def test_a_one_class_folder_is_refused_before_training(folder_config, tmp_path):
    root = folder(tmp_path / "data", ("cat",), per_class=60)
    with pytest.raises(ConfigError, match="has 1 labelled class.*at least 2"):
        lifecycle.start(folder_config(f"data.root={root}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # without evaluation, NAT trains on one folder of images: it needs no labels
    run = lifecycle.start(folder_config(f"data.root={root}", "eval.enabled=false"),
                       tmp_path / "unlabelled")
    assert run.train()


@pytest.mark.parametrize("counters", [{"epoch": -5}, {"step": 999}, {"batch_in_epoch": 4},
                                      {"batch_in_epoch": -1}, {"epoch": 2, "step": 4}])
def test_tampered_checkpoint_counters_are_refused(tiny_config, tmp_path, counters):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run").train()
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    state.update(counters)
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="counters do not add up"):
        lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=3"))


def test_an_honest_checkpoint_passes_the_counter_check(tiny_config, tmp_path):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run").train()
    run = lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=2"))
    assert (run.epoch, run.step, run.batch_in_epoch) == (1, 4, 0)
    assert torch.equal(torch.sort(run.method.assignment.perm).values, torch.arange(64))


def test_the_cli_refuses_a_one_class_folder_in_one_line(tmp_path):
    root = folder(tmp_path / "data", ("cat",), per_class=60)
    sets = [a for t in (*NOT_DATA, *FOLDER, f"data.root={root}") for a in ("--set", t)]
    result = runner.invoke(app_cli(), ["run", "--out", str(tmp_path / "run"), *sets])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "at least 2" in result.stderr


def app_cli():
    from natkit.cli import app

    return app


def test_a_stop_after_an_epochs_last_batch_resumes(tiny_config, tmp_path, host):
    """batch_in_epoch == batches per epoch is honest: the epoch's summary was not written yet."""
    from natkit.testing import StopAfter, assert_same_state

    exact = ("deterministic=true", "train.epochs=2")
    lifecycle.start(tiny_config(*exact), tmp_path / "full").train()
    host.register(StopAfter(step=4), name="stopper")  # 64 images / 16 = 4 batches an epoch
    assert lifecycle.start(tiny_config(*exact), tmp_path / "part").train() is False
    host.unregister("stopper")
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 4, 4)
    assert lifecycle.resume(tmp_path / "part").train()
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for key in ("model", "optimizer", "method", "step", "epoch"):
        assert_same_state(part[key], full[key], key)
