"""The transfer probe: the authors' test.lua, an MLP on frozen features of streamed crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from natkit import builders
from natkit.augment import random_crop
from natkit.datasets.base import TensorImageDataset
from natkit.evaluation import streamed
from natkit.evaluation.probes import mlp_model
from natkit.evaluation.reporting import ProbeProgress
from natkit.evaluation.streamed import (
    AuthorsSGD,
    crop_side,
    eval_crops,
    frozen_features,
    standardise_jointly,
    transfer_lr,
    transfer_mlp,
    transfer_probe,
)


def stripes(n: int, seed: int, size: int = 16) -> TensorImageDataset:
    """Four classes of sinusoidal stripes (vertical, horizontal, two diagonals), noisy, uint8."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    labels = torch.arange(n) % 4
    images = []
    for k in labels.tolist():
        period = 4 + int(torch.randint(0, 3, (1,), generator=g))
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        coord = (xx, yy, xx + yy, xx - yy)[k]
        img = 0.5 + 0.4 * torch.sin(2 * math.pi * coord / period + phase)
        img = img + 0.05 * torch.randn(size, size, generator=g)
        images.append(img.clamp(0, 1).expand(3, size, size))
    return TensorImageDataset((torch.stack(images) * 255).round().to(torch.uint8), labels,
                              ["vertical", "horizontal", "diagonal", "antidiagonal"])


class Recorded:
    """A dataset that records every batch of indices it is asked for (``log``: shared)."""

    def __init__(self, dataset, name: str, log: list, uint8: bool = False) -> None:
        self.dataset, self.name, self.log, self.uint8 = dataset, name, log, uint8
        self.labels, self.image_size = dataset.labels, dataset.image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, idx: torch.Tensor) -> torch.Tensor:
        self.log.append((self.name, idx.tolist()))
        return self.dataset.raw_batch(idx) if self.uint8 else self.dataset.get_batch(idx)


@pytest.fixture
def setup(tiny_config):
    """A tiny random AlexNet and the stripes, 128 training and 40 test images."""
    config = tiny_config()
    train, test = stripes(128, seed=0), stripes(40, seed=1)
    torch.manual_seed(0)
    return builders.initial_network(config, train), train, test


FAST = {"epochs": 3, "hidden": 16, "batch_size": 32}


def test_ten_crops_are_the_centre_and_corners_then_the_same_of_the_mirror_image():
    images = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).view(2, 3, 7, 9)
    crops = eval_crops(images, 4)
    assert crops.shape == (2, 10, 3, 4, 4)
    mirror = images.flip(-1)
    # imagenet.lua 83-92: c (offsets rounded down: (7-4)//2 = 1, (9-4)//2 = 2), tl, tr, bl, br
    for half, img in ((0, images), (5, mirror)):
        expected = [img[..., 1:5, 2:6], img[..., 0:4, 0:4], img[..., 0:4, 5:9],
                    img[..., 3:7, 0:4], img[..., 3:7, 5:9]]
        for i, want in enumerate(expected):
            assert torch.equal(crops[:, half + i], want), (half, i)
    # the mirror image's top-left crop is the mirrored top-right crop of the image
    assert torch.equal(crops[:, 6], images[..., 0:4, 5:9].flip(-1))
    assert torch.equal(eval_crops(images, 4, count=1)[:, 0], images[..., 1:5, 2:6])
    with pytest.raises(ValueError, match="1 or 10"):
        eval_crops(images, 4, count=5)
    with pytest.raises(ValueError, match="crop size"):
        eval_crops(images, 8)


def test_the_learning_rate_is_test_lua_s_schedule():
    # test.lua 241-242, epochs counted from 0 as tnt.SGDEngine counts them
    for epoch, lr in ((0, 0.1), (19, 0.1), (20, 0.1), (21, 0.1 / 1.3), (30, 0.1 / 4.0),
                      (99, 0.1 / (1 + 0.3 * 79))):
        assert transfer_lr(epoch, 0.1, 0.3) == pytest.approx(lr, rel=1e-12), epoch
    assert transfer_lr(5, 1.0, 0.5, decay_start=3) == pytest.approx(1 / 2)


def test_the_probe_steps_with_the_schedule_once_per_batch(setup, monkeypatch):
    network, train, test = setup
    used = []
    step = AuthorsSGD.step
    monkeypatch.setattr(AuthorsSGD, "step", lambda self, lr: (used.append(lr), step(self, lr)))
    transfer_probe(network, train, test, **{**FAST, "epochs": 4}, lr=0.2, gamma=1.0,
                   decay_start=2)
    per_epoch = [0.2, 0.2, 0.2, 0.1]  # epoch 3 = decay_start + 1: 0.2 / (1 + 1)
    assert used == pytest.approx([lr for lr in per_epoch for _ in range(128 // 32)])


def test_the_update_is_optimutil_s_averaged_momentum_and_weight_shrink():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = AuthorsSGD(model, momentum=0.9, weight_decay=0.01)
    grads = [{n: torch.full_like(p, float(i + 1)) * (j + 1)
              for j, (n, p) in enumerate(model.named_parameters())} for i in range(2)]
    for g in grads:
        for n, p in model.named_parameters():
            p.grad = g[n].clone()
        opt.step(lr=0.5)
    for n, p in model.named_parameters():
        m1 = 0.1 * grads[0][n]  # the average starts at zero: m = 0.9 m + 0.1 g
        m2 = 0.9 * m1 + 0.1 * grads[1][n]
        shrink = 0.99 if n == "0.weight" else 1.0  # the Linear's weight only (optimutil.lua 12-28)
        want = (start[n] * shrink - 0.5 * m1) * shrink - 0.5 * m2
        torch.testing.assert_close(p.detach(), want, msg=n)


def test_the_mlp_is_alexnet_lua_s_classifier():
    ours, theirs = transfer_mlp(10, 3, 8, dropout=0.5), mlp_model(10, 3, hidden=8)
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert not any(isinstance(m, nn.Dropout) for m in transfer_mlp(10, 3, 8, dropout=0.0))


def test_the_network_stays_frozen_and_keeps_its_mode(setup):
    network, train, test = setup
    network.train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    transfer_probe(network, train, test, **FAST)
    after = network.state_dict()
    for key, value in before.items():  # weights and BatchNorm buffers alike
        assert torch.equal(after[key], value), key
    assert network.training
    assert all(p.grad is None for p in network.parameters())


def test_the_probe_learns_easy_classes(setup):
    network, train, test = setup
    result = transfer_probe(network, train, test, epochs=20, hidden=32, batch_size=32)
    assert result.accuracy > 0.5  # chance: 0.25
    assert result.train_accuracy > 0.4
    assert math.isnan(result.val_accuracy)  # nothing is chosen on validation
    assert result.setting["crops"] == 10 and result.setting["crop_size"] == 14  # 0.875 of 16


def test_a_fixed_seed_gives_the_same_result_and_leaves_the_global_rng_alone(setup):
    network, train, test = setup
    state = torch.get_rng_state()
    first = transfer_probe(network, train, test, **FAST, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = transfer_probe(network, train, test, **FAST, seed=3)
    assert (first.accuracy, first.train_accuracy) == (second.accuracy, second.train_accuracy)
    assert first.setting == second.setting


def test_uint8_batches_give_the_float_batches_result(setup):
    network, train, test = setup
    floats = transfer_probe(network, train, test, **FAST)
    log: list = []
    raw = transfer_probe(network, Recorded(train, "train", log, uint8=True),
                         Recorded(test, "test", log, uint8=True), **FAST)
    assert raw == floats


def test_crops_are_streamed_every_epoch_and_the_test_split_is_read_once(setup, monkeypatch):
    network, train, test = setup
    test.labels[::4] = -1  # unlabelled test images are left out
    log: list = []
    crops = []

    def spy(images, generator, size, flip=True):
        crops.append((len(images), size, flip))
        return random_crop(images, generator, size, flip)

    monkeypatch.setattr(streamed, "random_crop", spy)
    transfer_probe(network, Recorded(train, "train", log), Recorded(test, "test", log), **FAST)
    # imagenet.lua's randomcrop: a random 14 of 16 (0.875) with a random flip, every batch
    assert crops == [(1, 14, True)] + [(32, 14, True)] * (FAST["epochs"] * 4)
    names = [name for name, _ in log]
    last_train = max(i for i, name in enumerate(names) if name == "train")
    assert all(name == "test" for name in names[last_train + 1:])  # after the last epoch
    read = sorted(i for name, idx in log if name == "test" for i in idx)
    assert read == [i for i in range(40) if i % 4]  # every labelled test image, once
    # log[0] is the first image, read once to size the MLP
    epochs = [i for name, idx in log[1:] if name == "train" for i in idx]
    assert len(epochs) == FAST["epochs"] * 128
    for e in range(FAST["epochs"]):  # every image, in a new order, every epoch
        assert sorted(epochs[e * 128:(e + 1) * 128]) == list(range(128))
    assert epochs[:128] != epochs[128:256]


def test_a_validation_split_is_held_out_of_training(setup):
    network, train, test = setup
    log: list = []
    result = transfer_probe(network, Recorded(train, "train", log), test, **FAST,
                            val_fraction=0.25)
    assert 0.0 <= result.val_accuracy <= 1.0
    reads = [set(idx) for _, idx in log]
    passes = math.ceil(32 / (32 // 10))  # the validation pass comes last, 3 images at a time
    held, trained = set().union(*reads[-passes:]), set().union(*reads[1:-passes])
    assert len(held) == 32 and not held & trained and len(trained) == 96


def test_the_crop_is_the_network_s_input_size_or_a_fraction_of_the_image(setup):
    network, _, _ = setup
    assert crop_side(network, 16) == 14 and crop_side(network, 256) == 224
    network.input_size = 12
    assert crop_side(network, 16) == 12


def test_progress_advances_one_unit_per_epoch(setup):
    network, train, test = setup

    class Count(ProbeProgress):
        units = ticks = 0

        def advance(self, units: int = 1) -> None:
            self.units += units

        def tick(self) -> None:
            self.ticks += 1

    count = Count()
    transfer_probe(network, train, test, **FAST, progress=count)
    assert count.units == FAST["epochs"]
    assert count.ticks == FAST["epochs"] * 4 + math.ceil(40 / (32 // 10))


def test_bad_arguments_are_refused(setup):
    network, train, test = setup
    with pytest.raises(ValueError, match="crops"):
        transfer_probe(network, train, test, **FAST, crops=5)
    with pytest.raises(ValueError, match="at least 2 labelled"):
        train.labels[1:] = -1
        transfer_probe(network, train, test, **FAST)


def test_natkit_eval_runs_the_transfer_probe_beside_the_others(tiny_config, tmp_path):
    import json

    from natkit import lifecycle
    from natkit.evaluation.protocol import evaluate_run

    run = lifecycle.start(tiny_config("eval.probes=[linear,transfer]", "eval.transfer_epochs=2",
                                      "eval.transfer_hidden=16", "eval.plots=false"),
                          tmp_path / "run")
    run.train()
    out = evaluate_run(tmp_path / "run")
    assert set(out["results"]["transfer"]) == {"trained", "random_init"}
    details = json.loads((tmp_path / "run" / "eval.json").read_text())  # strict JSON: no NaN
    transfer = details["probes"]["transfer"]["trained"]
    assert transfer["val_accuracy"] is None  # nothing is chosen on validation
    assert (transfer["setting"]["epochs"], transfer["setting"]["crops"]) == (2, 10)
    assert 0.0 <= transfer["accuracy"] <= 1.0


# ------------------------------------------------ the paper preset's test.lua details


def test_crops_standardised_together_are_torchnets_merge_then_normalize():
    # crops of one image with different spreads: each alone would be rescaled differently
    g = torch.Generator().manual_seed(0)
    views = torch.rand(2, 10, 3, 5, 5, generator=g) * torch.linspace(0.5, 2, 10).view(1, 10, 1, 1, 1)
    out = standardise_jointly(views)
    for i in range(2):
        z = views[i]  # transform.merge's 10 x 3 x h x w tensor; transform.normalize:
        torch.testing.assert_close(out[i], (z - z.mean()) / z.std())  # z:std() is unbiased
        assert float(out[i].mean()) == pytest.approx(0, abs=1e-6)
        assert float(out[i].std()) == pytest.approx(1, rel=1e-5)
    crop_std = out[0].flatten(1).std(dim=1)
    assert float(crop_std.max() - crop_std.min()) > 0.5  # each crop alone is not standardised
    assert standardise_jointly(torch.full((1, 10, 3, 4, 4), 0.3)).abs().max() == 0  # blank stays


class RecordingMLP(nn.Module):
    """An MLP stand-in that keeps the features it is given and votes for class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), 4)


@pytest.mark.parametrize("normalize", [True, False])
def test_joint_crop_norm_gives_the_network_the_crops_standardised_together(tiny_config,
                                                                           normalize):
    test = stripes(6, seed=1)
    network = builders.initial_network(tiny_config(f"preprocess.normalize={normalize}"),
                                       test).eval()
    common = {"size": 14, "crops": 10, "layer": "last", "tap_pool": 2, "batch_size": 30,
              "device": torch.device("cpu"), "progress": ProbeProgress()}
    seen = {}
    for norm in ("each", "joint"):
        mlp = RecordingMLP()
        streamed._crop_accuracy(network, mlp, test, np.arange(6), crop_norm=norm, **common)
        seen[norm] = torch.cat(mlp.seen)
    assert network.preprocess.normalize == normalize  # put back
    views = eval_crops(test.get_batch(torch.arange(6)), 14)
    torch.testing.assert_close(seen["each"], frozen_features(network, views.flatten(0, 1)))
    if not normalize:  # a preprocessor that standardises nothing: nothing to do together
        torch.testing.assert_close(seen["joint"], seen["each"])
        return
    network.preprocess.normalize = False  # the joint statistics, then the network as it is
    joint = frozen_features(network, standardise_jointly(views).flatten(0, 1))
    network.preprocess.normalize = True
    torch.testing.assert_close(seen["joint"], joint)
    assert not torch.allclose(seen["joint"], seen["each"], atol=1e-3)


def test_the_mlp_can_be_drawn_as_torch7_drew_test_lua_s_classifier():
    torch.manual_seed(0)
    mlp = transfer_mlp(100, 3, 64, init="torch7")
    torch.manual_seed(0)
    again = transfer_mlp(100, 3, 64, init="torch7")
    assert all(torch.equal(a, b) for a, b in zip(mlp.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    for m in mlp:
        if isinstance(m, nn.Linear):  # nn.Linear:reset(): U(+-1/sqrt(inputSize)), bias too
            bound = 1 / math.sqrt(m.in_features)
            assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
        if isinstance(m, nn.BatchNorm1d):  # nn.BatchNormalization:reset(): U(0, 1), 0
            gamma = m.weight.detach()
            assert float(gamma.min()) >= 0 and float(gamma.max()) < 1 and not m.bias.any()
            assert float(gamma.mean()) == pytest.approx(0.5, abs=0.15)
    assert all((m.weight == 1).all() for m in transfer_mlp(100, 3, 64)
               if isinstance(m, nn.BatchNorm1d))  # the default: PyTorch's


def test_the_eval_settings_reach_the_probe(tiny_config):
    from natkit.evaluation.protocol import run_transfer

    config = tiny_config("preprocess.normalize=true", "eval.transfer_epochs=1",
                         "eval.transfer_hidden=8", "eval.batch_size=32",
                         "eval.transfer_init=torch7", "eval.transfer_crop_norm=joint")
    train, test = stripes(64, seed=0), stripes(8, seed=1)
    network = builders.initial_network(config, train)
    result = run_transfer(config, network, train, test, torch.device("cpu"))
    assert (result.setting["init"], result.setting["crop_norm"]) == ("torch7", "joint")
    with pytest.raises(ValueError, match="crop_norm"):
        transfer_probe(network, train, test, **FAST, crop_norm="both")
