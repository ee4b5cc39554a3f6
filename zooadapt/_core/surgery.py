"""Module surgery: replace heads, rebuild stems from pretrained filters.

Every function here either computes a replacement without touching the model, or applies
one that was computed before; :func:`zooadapt.adapt` validates everything first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zooadapt.errors import AdaptError
from zooadapt.types import StemLayout

__all__ = [
    "INFLATE_MODES",
    "StemInit",
    "StemStats",
    "adapt_conv_weight",
    "inflatable",
    "inflate_kernel",
    "adapt_stem",
    "adapt_stem_weight",
    "check_stem",
    "default_stem_init",
    "head_out_features",
    "is_replaceable_head",
    "make_head",
    "owner_of",
    "set_stem_weight",
    "set_submodule",
    "stem_in_chans",
]

#: ``"sum"``, ``"repeat"``, ``"zeros"``, or a channel map: for each new input channel, the
#: index of the pretrained channel it starts from (``None`` for zeros).
StemInit = str | Sequence[int | None]
STRATEGIES = ("sum", "repeat", "zeros")
#: An ordinary convolution's layout: one input position per channel.
PLAIN_STEM = StemLayout()


def owner_of(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that owns dotted ``path`` (a submodule, parameter or buffer) and its name."""
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` with ``module``."""
    setattr(*owner_of(model, path), module)


def head_out_features(head: nn.Module) -> int:
    """Number of outputs of a classifier layer (``nn.Linear`` or a 1x1 convolution)."""
    if isinstance(head, nn.Linear):
        return head.out_features
    if _is_pointwise_conv(head):
        return head.out_channels  # type: ignore[return-value]
    raise AdaptError(
        f"head {type(head).__name__} is neither nn.Linear nor a 1x1 convolution; "
        "its family must declare reset_head"
    )


#: Convolutions that can be a classifier when their kernel is all ones (1x1, 1x1x1).
POINTWISE = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_replaceable_head(module: nn.Module) -> bool:
    """Whether :func:`make_head` can replace ``module``: ``nn.Linear`` or a pointwise conv.

    A pointwise convolution is an ungrouped 1-D, 2-D or 3-D one with a kernel of ones.
    """
    return isinstance(module, nn.Linear) or _is_pointwise_conv(module)


def _is_pointwise_conv(module: nn.Module) -> bool:
    return (
        type(module) in POINTWISE
        and all(k == 1 for k in module.kernel_size)  # type: ignore[union-attr]
        and module.groups == 1
    )


def make_head(old: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier shaped like ``old`` with ``num_classes`` outputs.

    The new layer has ``old``'s input size, bias setting, device and dtype, and PyTorch's
    default initialisation.
    """
    head_out_features(old)  # validates the layer type
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    conv = type(old)
    return conv(
        old.in_channels, num_classes, 1, stride=old.stride, bias=old.bias is not None, **factory
    )


def default_stem_init(in_chans: int) -> str:
    """``"sum"`` for one channel, ``"repeat"`` otherwise (timm's rule)."""
    return "sum" if in_chans == 1 else "repeat"


#: How a 2-D kernel becomes a 3-D one (:func:`inflate_kernel`).
INFLATE_MODES = ("spread", "center")


def inflatable(weight: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``weight`` is ``target``'s kernel with one dimension less: 2-D for 3-D.

    The output channels and the spatial sizes after the depth must agree; the input
    channels may differ (a stem then has its channels adapted as well).
    """
    return (
        weight.dim() >= 3
        and target.dim() == weight.dim() + 1
        and weight.shape[:1] == target.shape[:1]
        and weight.shape[2:] == target.shape[3:]
    )


def inflate_kernel(weight: torch.Tensor, depth: int, mode: str) -> torch.Tensor:
    """A ``(out, in, kh, kw)`` kernel inflated to ``(out, in, depth, kh, kw)``.

    Args:
        weight: The 2-D (or, in general, N-D) convolution weight.
        depth: Kernel size along the new leading spatial dimension.
        mode: ``"spread"`` divides the kernel evenly over the depth, so that a volume
            constant along depth gives the 2-D activations away from the depth borders;
            ``"center"`` puts it in the centre slice and zeros elsewhere, so that every
            slice is convolved on its own (exact everywhere).

    Raises:
        AdaptError: For an unknown ``mode``.
    """
    if mode not in INFLATE_MODES:
        raise AdaptError(f"inflate={mode!r} is not one of {INFLATE_MODES}")
    inflated = weight.unsqueeze(2)
    if mode == "spread":
        return inflated.expand(-1, -1, depth, *weight.shape[2:]).div(depth).contiguous()
    out = weight.new_zeros(*weight.shape[:2], depth, *weight.shape[2:])
    out[:, :, depth // 2] = weight
    return out


def adapt_conv_weight(weight: torch.Tensor, in_chans: int, init: StemInit) -> torch.Tensor:
    """Derive a convolution weight for ``in_chans`` input channels from a pretrained one.

    Args:
        weight: Pretrained weight, shape ``(out, base_chans, *kernel)``.
        in_chans: Number of input channels wanted.
        init: ``"sum"``: every new channel is the sum of the pretrained filters divided by
            ``in_chans``, so an image whose channels all equal a gray image gives the
            pretrained output for that gray image replicated to RGB. ``"repeat"``: cycle the
            pretrained channels and rescale by ``base_chans / in_chans`` (timm's rule).
            ``"zeros"``: keep the pretrained channels, extra ones start at zero, so the
            output equals the pretrained output on the first ``base_chans`` channels.
            A channel map: new channel ``i`` copies pretrained channel ``init[i]`` (zeros
            for ``None``), without rescaling.

    Returns:
        A new tensor of shape ``(out, in_chans, *kernel)`` on ``weight``'s device and dtype.

    Raises:
        AdaptError: If the strategy is unknown or cannot produce ``in_chans`` channels.
    """
    base = weight.shape[1]
    if isinstance(init, str):
        if init == "sum":
            summed = weight.sum(dim=1, keepdim=True) / in_chans
            return summed.expand(-1, in_chans, *weight.shape[2:]).clone()
        if init == "repeat":
            repeats = math.ceil(in_chans / base)
            repeated = weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))
            return repeated[:, :in_chans] * (base / in_chans)
        if init == "zeros":
            if in_chans < base:
                raise AdaptError(
                    f"stem_init='zeros' keeps the {base} pretrained channels and needs "
                    f"in_chans >= {base}, got {in_chans}; use 'sum', 'repeat' or a channel map"
                )
            return _from_channel_map(weight, list(range(base)) + [None] * (in_chans - base))
        raise AdaptError(f"unknown stem_init {init!r}; use one of {STRATEGIES} or a channel map")
    channel_map = list(init)
    if len(channel_map) != in_chans:
        raise AdaptError(
            f"stem_init channel map has {len(channel_map)} entries, in_chans is {in_chans}"
        )
    return _from_channel_map(weight, channel_map)


def _from_channel_map(weight: torch.Tensor, channel_map: list[int | None]) -> torch.Tensor:
    base = weight.shape[1]
    columns = []
    for source in channel_map:
        if source is None:
            columns.append(torch.zeros_like(weight[:, :1]))
        elif isinstance(source, int) and not isinstance(source, bool) and 0 <= source < base:
            columns.append(weight[:, source : source + 1])
        else:
            raise AdaptError(
                f"stem_init channel map entry {source!r} is not None or a channel in 0..{base - 1}"
            )
    return torch.cat(columns, dim=1)


def stem_in_chans(weight: torch.Tensor, layout: StemLayout = PLAIN_STEM) -> int:
    """Input channels that a stem weight of this ``layout`` reads."""
    return weight.shape[1] // layout.fold


def adapt_stem_weight(
    weight: torch.Tensor, in_chans: int, init: StemInit, layout: StemLayout = PLAIN_STEM
) -> torch.Tensor:
    """:func:`adapt_conv_weight` for a stem whose input dimension may fold positions.

    The weight is viewed as ``(out, channels, fold, *kernel)``, adapted along the channels
    and flattened back in its own layout (see :class:`~zooadapt.StemLayout`).

    Raises:
        AdaptError: If the weight's input size is not a multiple of ``layout.fold``.
    """
    if layout.fold == 1:
        return adapt_conv_weight(weight, in_chans, init)
    out, inner, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    if inner % layout.fold:
        raise AdaptError(f"stem input size {inner} is not a multiple of its fold {layout.fold}")
    channels = inner // layout.fold
    if layout.channels_last:
        view = weight.reshape(out, layout.fold, channels, *kernel).transpose(1, 2)
    else:
        view = weight.reshape(out, channels, layout.fold, *kernel)
    adapted = adapt_conv_weight(view, in_chans, init)
    if layout.channels_last:
        adapted = adapted.transpose(1, 2)
    return adapted.reshape(out, in_chans * layout.fold, *kernel).contiguous()


@dataclass(frozen=True)
class StemStats:
    """Per-channel input statistics before and after a stem is adapted.

    Args:
        mean: Means the pretrained stem was trained with, one per pretrained channel.
        std: Their standard deviations.
        new_mean: Means the adapted stem's input will be normalised with.
        new_std: Their standard deviations.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    new_mean: tuple[float, ...]
    new_std: tuple[float, ...]

    def fits(self, base: int, in_chans: int) -> bool:
        """Whether these statistics describe a stem going from ``base`` to ``in_chans``."""
        return len(self.mean) == len(self.std) == base and len(self.new_mean) == in_chans

    def needs_bias(self) -> bool:
        """Whether folding a ``sum`` stem adds a constant (the means are not all equal)."""
        average = sum(self.new_mean) / len(self.new_mean)
        return any(mean != average for mean in self.mean)


def adapt_stem(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_chans: int,
    init: StemInit,
    layout: StemLayout = PLAIN_STEM,
    stats: StemStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`adapt_stem_weight`, with the input statistics folded in for ``"sum"``.

    ``"sum"`` promises that an image whose channels all equal a gray image gives the
    pretrained output for that gray image replicated to RGB. With per-channel
    normalisation that holds only if the stem undoes the pretrained statistics and
    applies the new ones: the filters are taken in pixel units (``W_c / std_c``),
    summed, rescaled by each new channel's std, and the mean offsets become a bias
    (added when the stem had none). Other strategies copy each channel's statistics with
    its filter, so nothing needs folding.

    Returns:
        The new weight and bias (``bias`` unchanged unless folding needs one).
    """
    resolved = init if init is not None else default_stem_init(in_chans)
    base = stem_in_chans(weight, layout)
    if resolved != "sum" or stats is None or not stats.fits(base, in_chans):
        return adapt_stem_weight(weight, in_chans, resolved, layout), bias
    work = weight.float()
    pixel = work / _columns(stats.std, layout, work)
    new_pixel = adapt_stem_weight(pixel, in_chans, "sum", layout)
    new_weight = (new_pixel * _columns(stats.new_std, layout, work)).to(weight.dtype)
    if not stats.needs_bias():
        return new_weight, bias
    dims = tuple(range(1, work.dim()))
    offset = (new_pixel * _columns(stats.new_mean, layout, work)).sum(dims) - (
        pixel * _columns(stats.mean, layout, work)
    ).sum(dims)
    offset = offset.to(weight.dtype)
    return new_weight, offset if bias is None else bias.detach() + offset


def _columns(values: Sequence[float], layout: StemLayout, like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` laid out along a stem weight's input dimension."""
    column = torch.tensor(values, dtype=like.dtype, device=like.device)
    if layout.fold > 1:
        column = (
            column.repeat(layout.fold)
            if layout.channels_last
            else column.repeat_interleave(layout.fold)
        )
    return column.reshape(1, -1, *([1] * (like.dim() - 2)))


def check_stem(layer: nn.Module, path: str) -> nn.Module:
    """Return ``layer`` if zooadapt can change its input channels, else raise AdaptError."""
    conv = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1
    if not (conv or isinstance(layer, nn.Linear)):
        raise AdaptError(
            f"stem {path!r} is {type(layer).__name__}; zooadapt can only change the input "
            "channels of an ungrouped convolution or a linear patch embedding"
        )
    return layer


def set_stem_weight(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Install ``weight`` and ``bias`` (``None``: no bias) in the stem layer, in place.

    Parameters are installed as they are (so a revert restores the very objects); other
    tensors become parameters as trainable as the layer's weight was.
    """
    trainable = layer.weight.requires_grad
    layer.weight = _parameter(weight, trainable)
    layer.bias = None if bias is None else _parameter(bias, trainable)
    if isinstance(layer, nn.Linear):
        layer.in_features = weight.shape[1]
    else:
        layer.in_channels = weight.shape[1]


def _parameter(tensor: torch.Tensor, trainable: bool) -> nn.Parameter:
    if isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=trainable)
