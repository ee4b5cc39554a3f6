"""``za.transforms``: the preprocessing pipeline of a model's data config, for any channels.

The pipeline is ``torchvision.transforms.v2``: it takes PIL images, numpy arrays
(``HxW`` or ``HxWxC``) and tensors (``CxHxW``, or a batch), of integer or float dtype.
A volumetric (3-D) config gives :class:`NormalizeVolume` alone: resampling, cropping and
augmenting volumes belong to MONAI's transforms (``Spacing``, ``ResizeWithPadOrCrop``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from zooadapt._core.plugins import PluginManager
from zooadapt.data import data_config
from zooadapt.errors import DataError
from zooadapt.types import DataConfig, Family

__all__ = ["MatchChannels", "NormalizeVolume", "Resize", "ToImageOrPIL", "pipeline", "transforms"]


def transforms(
    model: nn.Module | None = None,
    train: bool = False,
    *,
    config: DataConfig | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> v2.Compose:
    """The preprocessing for ``model``: what its (adapted) data config says.

    Eval (``train=False``): resize (the shorter side, keeping the aspect ratio), center
    crop, scale to float in ``[0, 1]``, normalise per channel. For the unadapted zoo
    model this is the zoo's own pipeline (torchvision's ``weights.transforms()``).
    Train: ``RandomResizedCrop`` at the input size and a horizontal flip instead of the
    resize and crop. Images with other channels than the model's are converted when
    that is unambiguous (RGB to gray, gray to RGB, RGBA without alpha).

    Args:
        model: The model (not needed when ``config`` is given).
        train: Augment for training instead of the deterministic eval pipeline.
        config: Use this data config instead of ``za.data_config(model)``.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.

    A volumetric (3-D) config gives :class:`NormalizeVolume`: float32 and the per-channel
    statistics, nothing resampled or cropped (``train`` adds nothing either); bring volumes
    to the model's input size with MONAI's transforms first.

    Raises:
        DataError: If neither a model nor a config is given.
    """
    if config is None:
        if model is None:
            raise DataError("transforms needs a model or a config")
        config = data_config(model, family=family, plugin_manager=plugin_manager)
    return pipeline(config, train=train)


def pipeline(config: DataConfig, *, train: bool = False) -> v2.Compose:
    """The ``torchvision.transforms.v2`` pipeline of ``config`` (see :func:`transforms`)."""
    if len(config.spatial_size) == 3:
        return v2.Compose([NormalizeVolume(config.mean, config.std)])
    if len(config.spatial_size) != 2:
        raise DataError(
            f"za.transforms builds 2-D image and 3-D volume pipelines; this config is "
            f"{len(config.spatial_size)}-D ({config.source})"
        )
    interpolation = InterpolationMode(config.interpolation)
    crop = list(config.spatial_size)
    steps: list[Any] = [ToImageOrPIL()]
    if train:
        steps += [
            v2.RandomResizedCrop(crop, interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps += [*_fit(config, interpolation), v2.CenterCrop(crop)]
    steps += [
        v2.ToImage(),
        MatchChannels(config.in_chans),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ]
    return v2.Compose(steps)


def _fit(config: DataConfig, interpolation: InterpolationMode) -> list[Any]:
    """The resize before the crop, by ``crop_mode``."""
    resize = list(config.resize)
    if config.crop_mode == "squash":
        return [Resize(resize * 2 if len(resize) == 1 else resize, interpolation)]
    if config.crop_mode == "border":  # the longest side fits; CenterCrop pads with zeros
        return [Resize(None, interpolation, max_size=max(resize))]
    if len(set(resize)) == 1:  # the shorter side, keeping the aspect ratio
        return [Resize(resize[:1], interpolation)]
    return [Resize(resize, interpolation)]


#: PIL modes the pipeline reads as they are; others (palette, CMYK, ...) become RGB.
PIL_MODES = ("L", "RGB", "RGBA", "I;16", "I", "F")


class ToImageOrPIL(nn.Module):
    """Arrays and tensors become ``tv_tensors.Image``; PIL images stay PIL (in a readable mode).

    PIL images are resized by PIL, as torchvision's weight presets do.
    """

    def forward(self, image: Any) -> Any:
        """Convert ``image``."""
        from PIL import Image

        if isinstance(image, Image.Image):
            return image if image.mode in PIL_MODES else image.convert("RGB")
        try:
            return v2.functional.to_image(image)
        except TypeError as err:
            raise DataError(
                f"cannot read a {type(image).__name__} as an image: give a PIL image, a "
                "numpy array (HxW or HxWxC) or a tensor (CxHxW)"
            ) from err


class Resize(nn.Module):
    """Resize as torchvision's weight presets (``weights.transforms()``) do.

    PIL images are resized by PIL; tensors in float, rounded back for integer images
    (the uint8 kernel of ``v2.Resize`` can differ from that by one intensity level).

    Args:
        size: As for ``v2.Resize`` (one value: the shorter side).
        interpolation: Interpolation mode.
        max_size: Bound on the longer side (with ``size=None``: fit it exactly).
    """

    def __init__(
        self,
        size: list[int] | None,
        interpolation: InterpolationMode,
        max_size: int | None = None,
    ) -> None:
        super().__init__()
        self.size, self.interpolation, self.max_size = size, interpolation, max_size

    def forward(self, image: Any) -> Any:
        """Resize ``image`` (a PIL image, or ``...xCxHxW``)."""
        if not isinstance(image, torch.Tensor):
            return v2.functional.resize(
                image,
                self.size,
                interpolation=self.interpolation,
                max_size=self.max_size,
                antialias=True,
            )
        work = image.as_subclass(torch.Tensor)
        resized = v2.functional.resize(
            work if work.is_floating_point() else work.float(),
            self.size,
            interpolation=self.interpolation,
            max_size=self.max_size,
            antialias=True,
        )
        if not work.is_floating_point():
            top = 1 if work.dtype == torch.bool else torch.iinfo(work.dtype).max
            resized = resized.round_().clamp_(0, top).to(work.dtype)
        return tv_tensors.Image(resized)

    def extra_repr(self) -> str:
        """Show size and interpolation."""
        return f"size={self.size}, interpolation={self.interpolation.value}"


class NormalizeVolume(nn.Module):
    """A volume as float32, normalised per channel: ``(x - mean[c]) / std[c]``.

    Takes tensors or arrays, ``CxDxHxW``, a batch of them, or ``DxHxW`` for one channel,
    in the intensity units the statistics are in (the defaults, 0 and 1, keep them).

    Args:
        mean: Per-channel mean.
        std: Per-channel standard deviation.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, volume: Any) -> torch.Tensor:
        """Normalise ``volume``; a channel count other than the statistics' is a DataError."""
        x = torch.as_tensor(volume).to(torch.float32)
        x = x[None] if x.dim() == 3 else x
        if x.dim() < 4 or x.shape[-4] != len(self.mean):
            raise DataError(
                f"the volume has shape {tuple(x.shape)}; the model reads {len(self.mean)}-channel "
                "volumes, CxDxHxW (or DxHxW for one channel)"
            )
        shape = (len(self.mean), 1, 1, 1)
        mean = torch.tensor(self.mean).view(shape)
        return (x - mean) / torch.tensor(self.std).view(shape)

    def extra_repr(self) -> str:
        """Show the statistics."""
        return f"mean={list(self.mean)}, std={list(self.std)}"


class MatchChannels(nn.Module):
    """Give an image the model's channel count, or raise a DataError.

    RGB becomes gray by ITU-R 601 luma (as PIL's ``convert("L")``), gray is replicated
    to RGB, RGBA loses its alpha.

    Args:
        channels: Channels the model reads.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Convert ``image`` (``...xCxHxW``) to :attr:`channels` channels."""
        have = image.shape[-3]
        if have == self.channels:
            return image
        if have == 4 and self.channels in (1, 3):  # drop alpha
            image, have = image[..., :3, :, :], 3
        if have == 3 and self.channels == 1:
            image = v2.functional.rgb_to_grayscale(image.as_subclass(torch.Tensor))
        elif have == 1 and self.channels == 3:
            image = image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
        elif have != self.channels:
            raise DataError(
                f"the image has {have} channels, the model reads {self.channels}; give "
                f"{self.channels}-channel images (or adapt the model with in_chans={have})"
            )
        return tv_tensors.Image(image)

    def extra_repr(self) -> str:
        """Show the channel count."""
        return f"channels={self.channels}"
