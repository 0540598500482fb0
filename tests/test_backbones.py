"""Every backbone with every preprocessor, at small and ImageNet sizes, with named taps."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import natkit
from natkit.errors import ConfigError, UnknownComponentError

PREPROCESSORS = natkit.list_components("preprocess")
# the registry itself names the backbones; a prefix entry is exercised with a small model
BACKBONES = [n.replace("<name>", "resnet18") for n in natkit.list_components("backbone")]
SMALL = {"alexnet": {"widths": (8, 16, 16, 16, 8), "fc": (32,)}}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("preprocess", PREPROCESSORS)
@pytest.mark.parametrize("size", [32, 64])
def test_pooled_features_for_every_preprocessor(host, backbone, preprocess, size):
    pre = natkit.create_preprocess(preprocess)
    with torch.no_grad(), _warns_of_tiny_maps(backbone, size):
        net = natkit.create_backbone(backbone, in_chans=pre.out_channels, image_size=size,
                                     **SMALL.get(backbone, {}))
        out = net.eval()(pre(torch.rand(2, 3, size, size)))
    assert out.shape == (2, net.num_features)
    assert torch.isfinite(out).all()


def _warns_of_tiny_maps(backbone, size):
    """resnet18 downsamples by 32: at 32 px natkit must warn that its maps are 1x1."""
    if backbone.startswith("timm:") and size == 32:
        return pytest.warns(UserWarning, match="1x1 maps")
    return contextlib.nullcontext()


def test_alexnet_at_224_is_the_papers_layout(host):
    net = natkit.create_backbone("alexnet", in_chans=2, image_size=224).eval()
    assert net.stem == "imagenet" and net.out_size == 6
    assert net.num_features == 256 * 6 * 6
    assert net.default_head == (4096, 4096)
    with torch.no_grad():
        taps = net.forward_taps(torch.rand(1, 2, 224, 224), ["conv1", "conv2", "conv5", "last"])
    assert taps["conv1"].shape == (1, 96, 55, 55)
    assert taps["conv2"].shape == (1, 256, 27, 27)
    assert taps["conv5"].shape == (1, 256, 13, 13)
    assert taps["last"].shape == (1, 9216)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5  # BatchNorm after every conv layer


def test_alexnet_keeps_its_feature_size_at_other_inputs(host):
    net = natkit.create_backbone("alexnet", in_chans=2, image_size=32, **SMALL["alexnet"]).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 2, 48, 48)).shape == (2, net.num_features)


def test_alexnet_refuses_a_stem_too_coarse_for_the_image(host):
    with pytest.raises(ConfigError, match="too small for the 'imagenet' stem"):
        natkit.create_backbone("alexnet", in_chans=2, image_size=32, stem="imagenet")


def test_taps_are_validated(host):
    net = natkit.create_backbone("alexnet", in_chans=1, image_size=32, **SMALL["alexnet"])
    assert net.tap_names == ["conv1", "conv2", "conv3", "conv4", "conv5", "last"]
    with pytest.raises(ValueError, match="unknown tap 'fc6'"):
        net.forward_taps(torch.rand(2, 1, 32, 32), ["fc6"])


def test_timm_backbones_are_built_for_the_channel_count_with_taps(host):
    net = natkit.create_backbone("timm:resnet18", in_chans=2, image_size=64).eval()
    assert net.model.conv1.in_channels == 2
    assert net.num_features == 512
    assert "layer3" in net.tap_names
    with torch.no_grad():
        taps = net.forward_taps(torch.rand(2, 2, 64, 64), ["layer3", "last"])
    assert taps["layer3"].shape == (2, 256, 4, 4) and taps["last"].shape == (2, 512)


def test_timm_transformers_get_the_image_size(host):
    net = natkit.create_backbone("timm:vit_tiny_patch16_224", in_chans=2, image_size=32).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 32, 32)).shape == (1, net.num_features)


def test_unknown_timm_model_suggests_the_closest(host):
    with pytest.raises(UnknownComponentError, match="did you mean 'resnet18'"):
        natkit.create_backbone("timm:resnet181", in_chans=3, image_size=64)


def test_alexnet_torch7_init_draws_as_torch7s_reset(host):
    """nn.SpatialConvolution:reset(): U(+-1/sqrt(kW kH nInputPlane)); BatchNormalization: U(0, 1), 0."""
    torch.manual_seed(0)
    net = natkit.create_backbone("alexnet", in_chans=2, image_size=224, init="torch7")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.weight.shape[1] * c.weight.shape[2] * c.weight.shape[3] for c in convs] == [
        2 * 11 * 11, 96 * 5 * 5, 256 * 3 * 3, 384 * 3 * 3, 384 * 3 * 3]
    for conv in convs:
        w, bound = conv.weight.detach(), 1 / math.sqrt(conv.weight[0].numel())
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform, not normal
    for bn in bns:
        gamma = bn.weight.detach()
        assert float(gamma.min()) >= 0 and float(gamma.max()) < 1
        assert float(gamma.mean()) == pytest.approx(0.5, abs=0.1)
        assert not bn.bias.any() and not bn.running_mean.any() and (bn.running_var == 1).all()
    # drawn from the global generator: the same seed, the same network
    torch.manual_seed(0)
    again = natkit.create_backbone("alexnet", in_chans=2, image_size=224, init="torch7")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    # natkit's default stays Kaiming-normal with BatchNorm weights 1
    default = natkit.create_backbone("alexnet", in_chans=2, image_size=224)
    assert all((m.weight == 1).all() for m in default.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    std = float(default.conv1[0].weight.detach().std())
    assert std == pytest.approx(math.sqrt(2 / (96 * 11 * 11)), rel=0.03)  # fan_out, ReLU gain


def test_alexnet_refuses_an_unknown_init(host):
    with pytest.raises(ConfigError, match="backbone.init: expected one of 'default', 'torch7'"):
        natkit.create_backbone("alexnet", in_chans=2, image_size=32, init="xavier")
