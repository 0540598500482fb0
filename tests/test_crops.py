"""Fixed-size random crops (``augment.crop_size``): the authors' 224 of 256, and the centre at test."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from natkit import lifecycle
from natkit.augment import center_crop, random_crop
from natkit.builders import initial_network, load_dataset
from natkit.checkpoint import load_checkpoint
from natkit.cli import app
from natkit.evaluation.protocol import evaluate_run
from natkit.export import export
from natkit.testing import EXACT, StopAfter, assert_close_weights, assert_same_state, tiny_args


def _where(crop: torch.Tensor, image: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) at which ``crop`` is a slice of ``image``."""
    size = crop.shape[-1]
    found = []
    for top in range(image.shape[-2] - size + 1):
        for left in range(image.shape[-1] - size + 1):
            window = image[..., top:top + size, left:left + size]
            for flipped in (False, True):
                if torch.equal(crop, window.flip(-1) if flipped else window):
                    found.append((top, left, flipped))
    return found


def test_a_random_crop_is_a_slice_of_its_image_or_its_mirror():
    images = torch.rand(8, 3, 10, 12)
    out = random_crop(images, torch.Generator().manual_seed(0), 6)
    assert out.shape == (8, 3, 6, 6)
    for crop, image in zip(out, images, strict=True):
        assert len(_where(crop, image)) == 1
    uint8 = (images * 255).to(torch.uint8)  # the loaders' dtype: cropped before the floats
    assert torch.equal(random_crop(uint8, torch.Generator().manual_seed(0), 6),
                       (out * 255).to(torch.uint8))
    unflipped = random_crop(images, torch.Generator().manual_seed(0), 6, flip=False)
    assert all(not _where(c, i)[0][2] for c, i in zip(unflipped, images, strict=True))
    whole = random_crop(images[..., :10], torch.Generator().manual_seed(0), 10, flip=False)
    assert torch.equal(whole, images[..., :10])  # the whole image: nothing to choose


def test_offsets_cover_every_position_evenly_and_half_the_crops_are_flipped():
    n, side, size = 3000, 6, 4
    position = torch.arange(side * side, dtype=torch.float32).reshape(1, 1, side, side)
    out = random_crop(position.expand(n, 1, side, side), torch.Generator().manual_seed(1), size)
    first = out.flatten(1).min(1).values.long()  # the top-left pixel of the crop
    tops, lefts = first // side, first % side
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, 1]
    for values in (tops, lefts):
        counts = torch.bincount(values, minlength=side - size + 1)
        assert len(counts) == side - size + 1 and counts.min() > 0.8 * n / len(counts)
    assert 0.45 < flipped.float().mean() < 0.55


def test_a_batch_split_over_two_ranks_is_cropped_as_in_one_process():
    images = torch.rand(6, 3, 9, 9)
    whole = random_crop(images, torch.Generator().manual_seed(2), 5)
    ranks = [random_crop(images[start:start + 3], torch.Generator().manual_seed(2), 5,
                         part=(start, 6)) for start in (0, 3)]
    assert torch.equal(torch.cat(ranks), whole)


def test_a_crop_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="crop size must be between 1 and the images' 8x8"):
        random_crop(torch.rand(2, 3, 8, 8), torch.Generator(), 9)


def test_the_network_sees_the_centre_crop_of_larger_inputs(tiny_config):
    config = tiny_config("data.image_size=20", "augment.crop_size=16")
    dataset = load_dataset(config, "train")
    net = initial_network(config, dataset).eval()
    assert net.input_size == 16
    x = dataset.get_batch(torch.arange(4)).float() / 255
    assert x.shape[-1] == 20
    centre = x[..., 2:18, 2:18]
    assert torch.equal(center_crop(x, 16), centre)
    with torch.no_grad():
        assert torch.equal(net(x), net(centre))
        taps, expected = net.taps(x, ["conv1", "last"]), net.taps(centre, ["conv1", "last"])
        assert all(torch.equal(taps[k], expected[k]) for k in taps)
        # BatchNorm recalibration calls the preprocessor itself: the crop is made there
        assert torch.equal(net.preprocess(x), net.preprocess(centre))
    # a network built for 16 px images has the same parameters: no new state_dict entries
    plain = initial_network(tiny_config(), load_dataset(tiny_config(), "train"))
    assert plain.input_size is None
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    plain.load_state_dict(net.state_dict())


def test_a_crop_larger_than_the_loaded_images_is_one_line_and_exit_2(host, tmp_path):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run"), *tiny_args(
        "data.image_size=20", "augment.crop_size=24")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: augment.crop_size: 24 is larger than the 20 px images of data 'shapes'; set it "
        "to at most 20 or raise data.image_size"]


def test_a_run_trains_on_crops_and_evaluates_and_exports_at_the_crop_size(natkit_run, tmp_path):
    run = natkit_run("data.image_size=20", "augment.crop_size=16")
    assert run.dataset.image_size == 20 and run.model.input_size == 16
    assert run.view().outputs().shape == (64, 8)  # the whole dataset at 20 px, centre-cropped
    evaluate_run(run.dir, console=Console(file=io.StringIO()))
    results = json.loads((run.dir / "results.json").read_text())
    assert set(results) == {"linear", "mlp", "knn"}
    info = export(run.dir, tmp_path / "backbone.pt")
    assert info["image_size"] == 16 and "image_size=16" in info["load_with"]
    assert "the centre 16x16 of images loaded at 20 px" in info["input"]["note"]


def test_a_run_on_crops_resumes_mid_epoch_exactly(tiny_config, tmp_path, host):
    overrides = (EXACT, "data.image_size=20", "augment.crop_size=16", "eval.enabled=false")
    full = lifecycle.start(tiny_config(*overrides), tmp_path / "full")
    full.train()
    host.register(StopAfter(step=6), name="stopper")
    part = lifecycle.start(tiny_config(*overrides), tmp_path / "part")
    assert part.train() is False
    host.unregister("stopper")
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 2, 6)
    lifecycle.resume(tmp_path / "part").train()
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))


@pytest.mark.parametrize("switch", ["train.channels_last=true", "train.compile=true"])
def test_speed_switches_train_the_same_on_crops(switch, tiny_config, tmp_path, full_float32):
    crops = ("train.epochs=1", "data.image_size=20", "augment.crop_size=16", EXACT)
    plain = lifecycle.start(tiny_config(*crops), tmp_path / "plain")
    fast = lifecycle.start(tiny_config(*crops, switch), tmp_path / "fast")
    plain.train()
    fast.train()
    rtol, atol = assert_close_weights(tmp_path / "plain", tmp_path / "fast", plain.device.type)
    torch.testing.assert_close(fast.view().outputs(), plain.view().outputs(), rtol=rtol, atol=atol)
