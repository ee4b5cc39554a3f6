"""The torchvision zoo: every classification model of ``torchvision.models``."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zooadapt import DataConfig, Weights, Zoo, build_on_meta, hookimpl, read_state_dict

ZOO = "torchvision"


def _architectures() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights(arch: str) -> list[Weights]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    default = enum.DEFAULT
    found = []
    for entry in enum:
        file_name = entry.url.rsplit("/", 1)[-1]
        stem = file_name.rsplit(".", 1)[0]
        sha = stem.rsplit("-", 1)[-1] if "-" in stem else ""
        found.append(
            Weights(
                model=f"{ZOO}/{arch}",
                tag=entry.name,
                url=entry.url,
                file=_hub_checkpoints() / file_name,
                sha256=sha,
                default=entry is default,
                num_classes=len(entry.meta.get("categories") or []) or None,
                data_config=_data_config(entry),
                labels=tuple(entry.meta.get("categories") or ()) or None,
            )
        )
    return found


def _data_config(entry: Any) -> DataConfig | None:
    """The eval preprocessing of torchvision weights, read from ``entry.transforms()``."""
    preset = entry.transforms()
    crop, resize = getattr(preset, "crop_size", None), getattr(preset, "resize_size", None)
    if not crop or not resize:
        return None
    mean, std = tuple(preset.mean), tuple(preset.std)
    return DataConfig(
        input_size=(len(mean), *(crop * 2 if len(crop) == 1 else crop)),
        mean=mean,
        std=std,
        interpolation=preset.interpolation.value,
        crop_pct=crop[0] / resize[0],
        resize_size=tuple(resize),
        source=f"torchvision {entry.name} weights",
    )


def _build(arch: str, weights: Weights | None = None, **kwargs: Any) -> Any:
    """Run torchvision's own builder, so that its pretrained-specific settings apply.

    With weights, the builder runs on the meta device and its download-and-unpickle step
    is redirected to the verified local file (read with ``weights_only=True``, memory
    mapped) whose tensors are installed as they are: no random initialisation, no second
    copy. Builders that need real tensors while constructing are run normally instead.
    """
    from torchvision.models import get_model

    if weights is None:
        return get_model(arch, **kwargs)
    state = read_state_dict(weights.file)
    with _weights_from(state, assign=True):
        model = build_on_meta(lambda: get_model(arch, weights=weights.tag, **kwargs))
    if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return model
    with _weights_from(state, assign=False):
        return get_model(arch, weights=weights.tag, **kwargs)


@contextlib.contextmanager
def _weights_from(state: dict[str, Any], *, assign: bool) -> Iterator[None]:
    """Make torchvision's weights enum return ``state``; optionally load by assignment."""
    import torch
    from torchvision.models import _api

    original_fetch = _api.load_state_dict_from_url
    original_load = torch.nn.Module.load_state_dict
    _api.load_state_dict_from_url = lambda *args, **kw: state
    if assign:
        torch.nn.Module.load_state_dict = functools.partialmethod(original_load, assign=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original_fetch
        torch.nn.Module.load_state_dict = original_load


@hookimpl
def zooadapt_zoos() -> list[Zoo]:
    """Torchvision's classification builders, searched before other zoos."""
    return [Zoo(name=ZOO, models=_architectures, build=_build, weights=_weights, order=10)]
