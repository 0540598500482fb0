"""Presets: the paper preset is the authors' recipe, field by field; presets layer under the rest."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from natkit import config, lifecycle, presets
from natkit.builders import create_component
from natkit.checkpoint import load_checkpoint
from natkit.cli import app
from natkit.errors import ConfigError
from natkit.methods import Batch, MethodContext
from natkit.methods.nat import NoiseAsTargets

runner = CliRunner()

# The authors' values, from their released code (facebookresearch/noise-as-targets).
AUTHORS = [
    ("method.name", "nat", "main.lua: targets reassigned by hungarian.maxCost"),
    ("method.permute_every", 3, "main.sh: -permute 3; main.lua: state.epoch % config.permute == 0"),
    ("method.loss_reduction", "sum", "main.lua: MSECriterion, crit.sizeAverage = false"),
    ("targets.name", "sphere", "main.lua: codes = torch.randn(...) normalised to unit norm"),
    ("targets.dim", 2048, "main.sh: -dim 2048"),
    ("solver.name", "hungarian", "main.lua: hungarian.maxCost(scpu)"),
    ("preprocess.name", "sobel", "main.lua: a fixed 3x3 Sobel conv (dx, dy) inserted first"),
    ("preprocess.normalize", True, "imagenet.lua: transform.normalize() of each image"),
    ("backbone.name", "alexnet", "main.lua: config.arch = 'alexnet'"),
    ("backbone.widths", [96, 256, 384, 384, 256], "alexnet-specs.lua: numplanes of conv1-5"),
    ("backbone.fc", [4096, 4096], "alexnet-specs.lua: classifier numplanes 4096, 4096"),
    ("backbone.stem", "imagenet", "alexnet-specs.lua: conv1 11x11, stride 4, padding 2"),
    ("head.hidden", None, "alexnet.lua: fc6, fc7 (the backbone's fc) then fc8 to dim"),
    ("head.batchnorm", True, "alexnet.lua: nn.BatchNormalization after fc6 and fc7"),
    ("head.dropout", 0.5, "alexnet.lua: config.dropout or 0.5"),
    ("head.dropout_where", "between", "alexnet.lua makeclassifierlayer: one Dropout, after fc6"),
    ("data.image_size", 256, "main.lua:50 config.imsize = 256, imagenet.lua: short side scaled"),
    ("augment.crop_size", 224, "main.lua:51 config.cropsize = 224, imagenet.lua: random crop"),
    ("augment.flip", True, "imagenet.lua: random horizontal flip"),
    ("train.batch_size", 256, "main.lua: -batch 256"),
    ("train.epochs", 100, "main.sh: -maxepoch 100"),
    ("train.lr", 0.01, "main.lua: -lr 0.01, passed once to tnt.SGDEngine"),
    ("train.lr_gamma", 0.0, "main.lua: no schedule, the lr is constant"),
    ("train.warmup_steps", 0, "main.lua: no warm-up"),
    ("train.momentum", 0.0, "main.lua: tnt.SGDEngine, plain SGD"),
    ("train.weight_decay", 0.0, "main.lua: no weight decay"),
    ("eval.transfer_epochs", 100, "test.sh: -maxepoch 100 for the transfer MLP"),
    ("eval.transfer_lr", 0.1, "test.lua: -lr 0.1"),
    ("eval.transfer_crops", 10, "imagenet.lua: ten crops at test (testsinglecrop 0)"),
    ("train.keep_every", 10, "main.lua: -saveperiod 10, the model saved every 10 epochs"),
    ("backbone.init", "torch7", "alexnet.lua: cudnn/nn modules at Torch7's reset()"),
    ("head.init", "torch7", "alexnet.lua: nn.Linear, nn.BatchNormalization at Torch7's reset()"),
    ("solver.quantize", 100000, "hungarian.lua:31: icost:mul(100000):int()"),
    ("train.bn_batch", 128, "main.sh: -ngpu 2, DataParallelTable: 128 of 256 per GPU"),
    ("train.sync_bn", False, "DataParallelTable shares no BatchNorm statistics"),
    ("eval.transfer_init", "torch7", "test.lua: arch.train(config):get(2) at Torch7's reset()"),
    ("eval.transfer_crop_norm", "joint", "imagenet.lua: transform.merge, transform.normalize"),
]


def field(c: config.Config, dotted: str):
    section, key = dotted.split(".")
    part = getattr(c, section)
    return part[key] if isinstance(part, dict) else getattr(part, key)


@pytest.mark.parametrize("dotted, value, source", AUTHORS, ids=[a[0] for a in AUTHORS])
def test_the_paper_preset_holds_the_authors_value(host, dotted, value, source):
    assert field(config.build(preset="paper"), dotted) == value, source


def test_where_the_paper_preset_differs_from_the_authors_it_says_so():
    text = presets.text("paper")
    # each known difference is written next to the field it concerns
    for topic in ("ShuffleDataset", "24 data threads"):
        assert topic in text, topic
    assert text.count("# differs:") == 2
    # the crops are theirs; what remains (the loader's centre square) is noted beside them
    assert "256x256 square" in text


def test_the_paper_head_is_the_authors_classifier_layer_by_layer(host):
    from torch import nn

    from natkit.model import ProjectionHead

    # alexnet.lua makeclassifierlayer: Linear BN ReLU Dropout Linear BN ReLU Linear
    head = ProjectionHead(9216, [4096, 4096], 2048, dropout=0.5, dropout_where="between")
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
                                       nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    # the default keeps torchvision's AlexNet order: a dropout before each hidden layer
    default = ProjectionHead(9216, [4096, 4096], 2048, dropout=0.5)
    assert [type(m) for m in default][:2] == [nn.Dropout, nn.Linear]
    assert sum(isinstance(m, nn.Dropout) for m in default) == 2
    assert config.build(preset="paper").head.dropout_where == "between"


def test_the_paper_network_starts_as_torch7_drew_it_from_the_runs_seed(tiny_config):
    """Conv, Linear: U(+-1/sqrt(fan_in)); BatchNorm weights U(0, 1) (Torch7's reset())."""
    from torch import nn

    from natkit import builders

    def network(*extra):
        c = tiny_config("backbone.init=torch7", "head.init=torch7", "head.hidden=[32, 32]",
                        "head.dropout_where=between", *extra)
        return builders.initial_network(c, builders.load_training_set(c))

    net = network()
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 7  # conv1-5 and fc6-7
    for bn in bns:
        gamma = bn.weight.detach()
        assert float(gamma.min()) >= 0 and float(gamma.max()) < 1 and not bn.bias.any()
        assert not (gamma == 1).all()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.weight.abs().max() <= 1 / m.weight[0].numel() ** 0.5
    # the run's seed decides the draws: the same seed the same network, another one another
    same, other = network(), network("seed=1")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 same.state_dict().values(), strict=True))
    assert not torch.equal(net.head[0].weight, other.head[0].weight)
    assert not torch.equal(net.backbone.conv1[1].weight, other.backbone.conv1[1].weight)
    # natkit's default head keeps PyTorch's BatchNorm weights of 1
    c = tiny_config("head.hidden=[32]")
    default = builders.initial_network(c, builders.load_training_set(c))
    assert (default.head[2].weight == 1).all()


def test_presets_are_listed_printed_and_layered_under_everything_else(host, tmp_path):
    assert presets.names() == ["default", "paper", "paper-supervised"]
    assert config.build(preset="default") == config.build()
    listed = runner.invoke(app, ["list", "presets"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "paper-supervised" in listed.output
    assert "The authors' ImageNet recipe" in listed.output
    shown = runner.invoke(app, ["config", "--preset", "paper"])
    assert shown.exit_code == 0 and "loss_reduction: sum" in shown.output
    file = tmp_path / "mine.yaml"
    file.write_text("train:\n  lr: 0.02\n  epochs: 7\n")
    c = config.build(file, ["train.epochs=9"], preset="paper")
    assert (c.train.lr, c.train.epochs, c.train.batch_size) == (0.02, 9, 256)
    supervised = config.build(preset="paper-supervised")
    assert supervised.method == {"name": "supervised", "loss": "softmax"}
    assert supervised.train.momentum == 0.9 and supervised.backbone["widths"][0] == 96
    # the baseline trains the very network, input and data the paper preset does
    paper = config.build(preset="paper")
    for section in ("data", "preprocess", "backbone", "head", "augment"):
        assert getattr(supervised, section) == getattr(paper, section), section


def test_a_preset_as_overrides_builds_the_same_config(host):
    for name in presets.names():
        assert config.build(overrides=presets.as_overrides(name)) == config.build(preset=name)


def test_bad_preset_names_and_a_preset_on_resume_are_one_line_errors(host, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown preset 'papr' \(did you mean 'paper'\?\); "
                                          "valid: default, paper, paper-supervised"):
        config.build(preset="papr")
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--preset", "paper"])
    assert result.exit_code == 2
    assert "--preset: a resumed run keeps the config it started with" in result.output


def test_the_summed_loss_is_the_batch_times_the_mean(tiny_config):
    def nat(reduction):
        c = tiny_config(f"method.loss_reduction={reduction}")
        context = MethodContext(config=c, num_images=64, labels=torch.zeros(64, dtype=torch.int64),
                                num_classes=1, device=torch.device("cpu"),
                                create=create_component)
        return NoiseAsTargets(context=context, loss_reduction=reduction)

    outputs = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    batch = Batch(indices=torch.arange(16), labels=torch.zeros(16, dtype=torch.int64),
                  epoch=1, step=0)
    mean, total = nat("mean").loss(outputs, batch).loss, nat("sum").loss(outputs, batch).loss
    torch.testing.assert_close(total, 16 * mean)  # train.batch_size=16 in the tiny config


def test_a_few_steps_of_the_paper_preset_on_224px_crops_of_256px_images(host, tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            colour = (40 * i, 100 if c == "cat" else 200, 30)
            Image.new("RGB", (300, 240), colour).save(tmp_path / "data" / c / f"{i}.jpg")
    c = config.build(preset="paper", overrides=[
        f"data.root={tmp_path / 'data'}", "data.test_fraction=0.25", "train.batch_size=4",
        "train.epochs=1", "train.num_workers=0", "eval.enabled=false", "device=cpu"])
    run = lifecycle.start(c, tmp_path / "run")
    assert run.train()
    assert run.model.head[-1].out_features == 2048 and run.model.backbone.stem == "imagenet"
    assert run.dataset.image_size == 256 and run.model.input_size == 224
    assert run.model.backbone.out_size == 6  # conv5 pooled to 6x6: built for 224 px inputs
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2  # 9 images, b = 4
