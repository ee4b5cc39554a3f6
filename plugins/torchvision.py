"""The torchvision zoo: every classification model of ``torchvision.models``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zooadapt import Weights, Zoo, hookimpl, read_state_dict

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
            )
        )
    return found


def _build(arch: str, weights: Weights | None = None, **kwargs: Any) -> Any:
    """Run torchvision's own builder, so that its pretrained-specific settings apply.

    The builder's download-and-unpickle step is redirected to the verified local file,
    read with ``weights_only=True``.
    """
    from torchvision.models import _api, get_model

    if weights is None:
        return get_model(arch, **kwargs)
    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = lambda *args, **kw: read_state_dict(weights.file)
    try:
        return get_model(arch, weights=weights.tag, **kwargs)
    finally:
        _api.load_state_dict_from_url = original


@hookimpl
def zooadapt_zoos() -> list[Zoo]:
    """Torchvision's classification builders, searched before other zoos."""
    return [Zoo(name=ZOO, models=_architectures, build=_build, weights=_weights, order=10)]
