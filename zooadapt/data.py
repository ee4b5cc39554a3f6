"""``za.data_config``: how to feed a model, kept consistent with its adapted stem.

A model's :class:`~zooadapt.DataConfig` comes, in this order, from what was recorded on
it (the zoo weights ``adapt`` loaded, ``adapt``'s own adaptation, the file ``za.load``
read), from its family's declaration (timm's ``pretrained_cfg``), or from the ImageNet
defaults at the model's input size. ``adapt`` gives new input channels the statistics
that match what its ``stem_init`` made of the stem (:func:`adapted_config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from zooadapt._core.anatomy import anatomy, call_family, describe
from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt._core.surgery import STRATEGIES, StemInit, default_stem_init
from zooadapt.errors import AdaptError, DataError
from zooadapt.types import Anatomy, DataConfig, Family

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "adapted_config",
    "data_config",
    "default_config",
    "pretrained_config",
    "record_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RECORD = "_zooadapt_data_config"


def data_config(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> DataConfig:
    """How to feed ``model``: input size, per-channel mean/std, interpolation and crop.

    Args:
        model: A model instance (wrappers are looked through).
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.

    Returns:
        The recorded config while it fits the model's input channels, else the family's
        (or the ImageNet default) with statistics derived for the current channels.
    """
    model = unwrap(model)
    anat = anatomy(model, family=family, plugin_manager=plugin_manager)
    recorded: DataConfig | None = model.__dict__.get(_RECORD)
    if recorded is not None and anat.in_chans in (None, recorded.in_chans):
        return recorded
    config = pretrained_config(model)
    if anat.in_chans is not None and anat.in_chans != config.in_chans:
        config = adapted_config(config, anat.in_chans, default_stem_init(anat.in_chans))
    return config


def pretrained_config(model: nn.Module) -> DataConfig:
    """The config the family declares for ``model``'s pretrained weights, else the default."""
    declared, anat = describe(model)
    config = call_family(declared, "data_config", lambda: declared.item.data_config_of(model))
    return config if config is not None else default_config(anat)


def default_config(anat: Anatomy) -> DataConfig:
    """ImageNet statistics, bilinear, ``crop_pct`` 0.875, at the model's input size.

    Volumes (3 spatial dimensions) get zero mean and unit std, uncropped.
    """
    chans = 3 if anat.spatial_dims == 2 else anat.in_chans or 1
    if anat.spatial_dims == 2:
        mean, std, crop_pct = IMAGENET_MEAN, IMAGENET_STD, 0.875
    else:
        mean, std, crop_pct = (0.0,) * chans, (1.0,) * chans, 1.0
    return DataConfig(
        input_size=(chans, *anat.input_size),
        mean=mean,
        std=std,
        crop_pct=crop_pct,
        source="zooadapt default (ImageNet statistics)" if anat.spatial_dims == 2 else "default",
    )


def record_config(model: nn.Module, config: DataConfig | None) -> None:
    """Remember ``config`` on ``model`` (``None`` forgets it); copies of the model keep it."""
    model = unwrap(model)
    if config is None:
        model.__dict__.pop(_RECORD, None)
    else:
        model.__dict__[_RECORD] = config


def adapted_config(
    config: DataConfig,
    in_chans: int,
    stem_init: StemInit,
    mean: Sequence[float | None] | None = None,
    std: Sequence[float | None] | None = None,
) -> DataConfig:
    """``config`` for ``in_chans`` channels whose stem was rebuilt with ``stem_init``.

    Each new channel gets the statistics of the pretrained channel its filters come
    from (``repeat`` cycles them, a channel map copies them). ``sum`` channels, and
    channels that start from zeros, get the average of the pretrained statistics; the
    ``sum`` stem is then folded to match (:func:`stem_stats`). ``mean``/``std`` entries
    that are not ``None`` replace the derived ones (statistics of your own bands).

    Raises:
        DataError: If ``mean`` or ``std`` does not give one entry per channel.
    """
    base = config.in_chans
    sources = _channel_sources(base, in_chans, stem_init)
    average_mean = sum(config.mean) / base
    average_std = sum(config.std) / base
    new_mean = [average_mean if s is None else config.mean[s] for s in sources]
    new_std = [average_std if s is None else config.std[s] for s in sources]
    new_mean = _override(new_mean, mean, "mean")
    new_std = _override(new_std, std, "std")
    changed = (in_chans, tuple(new_mean), tuple(new_std)) != (base, config.mean, config.std)
    return dataclasses.replace(
        config,
        input_size=(in_chans, *config.spatial_size),
        mean=tuple(new_mean),
        std=tuple(new_std),
        source=f"{config.source}, adapted to {_channels(in_chans)}" if changed else config.source,
    )


def _channels(count: int) -> str:
    return f"{count} channel{'' if count == 1 else 's'}"


def _channel_sources(base: int, in_chans: int, stem_init: StemInit) -> list[int | None]:
    """For each new channel, the pretrained channel its statistics come from (None: mixed)."""
    if isinstance(stem_init, str):
        if stem_init == "sum":
            return [None] * in_chans
        if stem_init == "repeat":
            return [i % base for i in range(in_chans)]
        if stem_init == "zeros":
            return [i if i < base else None for i in range(in_chans)]
        raise AdaptError(
            f"unknown stem_init {stem_init!r}; use one of {STRATEGIES} or a channel map"
        )
    channel_map = list(stem_init)
    if len(channel_map) != in_chans:
        raise AdaptError(
            f"stem_init channel map has {len(channel_map)} entries, in_chans is {in_chans}"
        )
    return [s if isinstance(s, int) and 0 <= s < base else None for s in channel_map]


def _override(values: list[float], given: Sequence[float | None] | None, name: str) -> list[float]:
    if given is None:
        return values
    if isinstance(given, (str, bytes)) or len(given) != len(values):
        raise DataError(
            f"{name}={given!r} must give one value (or None to keep the derived one) for "
            f"each of the {len(values)} input channels"
        )
    return [
        value if entry is None else float(entry) for value, entry in zip(values, given, strict=True)
    ]
