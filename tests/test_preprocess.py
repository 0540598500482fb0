"""Preprocessors: frozen, declared channel counts, 1- or 3-channel input, correct filters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import natkit

PREPROCESSORS = natkit.list_components("preprocess")


@pytest.mark.parametrize("name", PREPROCESSORS)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("given", [1, 3])
def test_output_matches_declared_channels_for_any_input(host, name, in_channels, given):
    pre = natkit.create_preprocess(name, in_channels=in_channels)
    out = pre(torch.rand(2, given, 17, 19))
    assert out.shape == (2, pre.out_channels, 17, 19)
    assert list(pre.parameters()) == []  # frozen: nothing for an optimizer to train


@pytest.mark.parametrize("name", PREPROCESSORS)
def test_two_channel_input_is_refused(host, name):
    with pytest.raises(ValueError, match="cannot convert 2-channel"):
        natkit.create_preprocess(name)(torch.rand(1, 2, 8, 8))


def test_sobel_sees_no_gradient_in_a_flat_image_not_even_at_the_border(host):
    sobel = natkit.create_preprocess("sobel")
    assert sobel(torch.full((1, 3, 8, 8), 0.7)).abs().max() < 1e-6


def test_sobel_measures_horizontal_and_vertical_gradients(host):
    sobel = natkit.create_preprocess("sobel", in_channels=1)
    ramp = torch.arange(10.0).repeat(10, 1)[None, None]  # brightness grows to the right
    gx, gy = sobel(ramp)[0, :, 1:-1, 1:-1]
    torch.testing.assert_close(gx, torch.full_like(gx, -8.0))  # kernel [1 0 -1] x [1 2 1]
    torch.testing.assert_close(gy, torch.zeros_like(gy))
    gx_t, gy_t = sobel(ramp.transpose(-1, -2))[0, :, 1:-1, 1:-1]  # brightness grows downwards
    torch.testing.assert_close(gx_t, torch.zeros_like(gx_t))
    torch.testing.assert_close(gy_t, torch.full_like(gy_t, -8.0))


def test_sobel_grayscale_ignores_colour_at_equal_brightness(host):
    sobel = natkit.create_preprocess("sobel")
    red, green = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    red[:, 0, :, 4:] = 0.9
    green[:, 1, :, 4:] = 0.9
    torch.testing.assert_close(sobel(red), sobel(green))


def test_highpass_removes_constants_and_keeps_fine_detail(host):
    hp = natkit.create_preprocess("highpass", sigma=1.5)
    assert hp(torch.full((1, 3, 16, 16), 0.3)).abs().max() < 1e-6
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    out = hp(checker.float()[None, None].expand(1, 3, 16, 16))
    assert out.abs().mean() > 0.4  # a one-pixel pattern is almost all high frequency


def test_sobel_filters_compose_exactly_with_the_first_conv(host):
    sobel = natkit.create_preprocess("sobel")
    weight = torch.randn(4, 2, 5, 5)
    image = torch.rand(1, 3, 20, 20)
    through_sobel = F.conv2d(sobel(image), weight)[..., 1:-1, 1:-1]
    composed = F.conv2d(image, sobel.compose_filters(weight))
    torch.testing.assert_close(composed, through_sobel, atol=1e-4, rtol=1e-4)


def test_sobel_normalize_standardises_each_image_as_torchnet_does(host):
    plain = natkit.create_preprocess("sobel")
    normalized = natkit.create_preprocess("sobel", normalize=True)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[1] = images[1] * 0.1 + 0.5  # the same kind of picture at a tenth of the contrast
    expected = plain(torch.stack([(x - x.mean()) / x.std() for x in images]))
    torch.testing.assert_close(normalized(images), expected)
    # replicated borders: the mean cancels, so it is the plain gradients over each image's std
    torch.testing.assert_close(normalized(images), plain(images) / images.flatten(1).std(1)
                               .view(-1, 1, 1, 1), rtol=1e-5, atol=1e-4)
    assert torch.isfinite(normalized(torch.full((1, 3, 8, 8), 0.3))).all()  # a blank image
