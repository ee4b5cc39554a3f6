"""Stem weight strategies and head construction, checked numerically."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zooadapt as za
from zooadapt import AdaptError
from zooadapt._core.surgery import adapt_conv_weight, make_head

W = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))


def test_sum_for_one_channel_is_the_channel_sum():
    assert torch.equal(adapt_conv_weight(W, 1, "sum"), W.sum(1, keepdim=True))


def test_sum_for_n_channels_spreads_the_sum_evenly():
    out = adapt_conv_weight(W, 5, "sum")
    assert out.shape == (8, 5, 5, 5)
    torch.testing.assert_close(out.sum(1), W.sum(1))
    assert torch.equal(out[:, 0], out[:, 4])


def test_repeat_matches_timms_rule():
    torch.testing.assert_close(adapt_conv_weight(W, 2, "repeat"), W[:, :2] * 1.5)
    four = adapt_conv_weight(W, 4, "repeat")
    torch.testing.assert_close(four, torch.cat([W, W[:, :1]], 1) * 0.75)
    seven = adapt_conv_weight(W, 7, "repeat")
    torch.testing.assert_close(seven, torch.cat([W, W, W[:, :1]], 1) * (3 / 7))


def test_zeros_keeps_pretrained_channels_and_zero_fills():
    out = adapt_conv_weight(W, 5, "zeros")
    assert torch.equal(out[:, :3], W)
    assert torch.count_nonzero(out[:, 3:]) == 0


def test_channel_map_copies_channels_without_rescaling():
    out = adapt_conv_weight(W, 4, [2, 1, 0, None])
    assert torch.equal(out[:, 0], W[:, 2]) and torch.equal(out[:, 2], W[:, 0])
    assert torch.count_nonzero(out[:, 3]) == 0


@pytest.mark.parametrize(
    ("in_chans", "init", "message"),
    [
        (1, "zeros", "in_chans >= 3"),
        (3, "mean", "unknown stem_init"),
        (2, [0], "2"),
        (2, [0, 3], "0..2"),
        (2, [0, True], "0..2"),
    ],
)
def test_bad_strategies_raise_adapt_error(in_chans, init, message):
    with pytest.raises(AdaptError, match=message):
        adapt_conv_weight(W, in_chans, init)


def test_make_head_keeps_dtype_bias_and_input_size():
    old = nn.Linear(16, 1000, bias=False, dtype=torch.float64)
    new = make_head(old, 3)
    assert (new.in_features, new.out_features, new.bias, new.weight.dtype) == (
        16,
        3,
        None,
        torch.float64,
    )


def test_make_head_for_a_pointwise_conv():
    new = make_head(nn.Conv2d(512, 1000, 1), 5)
    assert isinstance(new, nn.Conv2d) and new.out_channels == 5 and new.kernel_size == (1, 1)


def test_make_head_rejects_other_layers():
    with pytest.raises(AdaptError, match="reset_head"):
        make_head(nn.Conv2d(512, 1000, 3), 5)


def test_a_pointwise_conv3d_head_is_found_and_replaced_like_a_1x1_conv2d():
    model = nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Conv3d(8, 4, 1),
        nn.Flatten(),
    )  # fmt: skip
    za.adapt(model, num_classes=6)
    assert za.anatomy(model).head == ("3",) and isinstance(model[3], nn.Conv3d)
    assert model[3].out_channels == 6 and model[3].kernel_size == (1, 1, 1)
    assert model(torch.rand(2, 2, 8, 8, 8)).shape == (2, 6)
