"""Self-describing adapted checkpoints, written atomically.

``za.save`` writes safetensors whose metadata says how to rebuild the model (registry
name, builder arguments, class count, input channels) and how to use it (its data config
and class names); ``za.load`` rebuilds it from that alone.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import anatomy, class_name
from zooadapt._core.distributed import full_state_dict, is_writer, unwrap
from zooadapt._core.files import atomic_write, check_regular_file
from zooadapt._core.plugins import PluginManager
from zooadapt.adapt import adapt, adapted_from, sync_config
from zooadapt.data import data_config, record_config
from zooadapt.errors import AdaptError, CheckpointError, DataError, FamilyNotFoundError
from zooadapt.labels import labels, record_labels
from zooadapt.lora import is_adapter, lora_base_name, lora_settings
from zooadapt.types import DataConfig, Family

__all__ = [
    "checksum",
    "describe_adapted",
    "load",
    "read_metadata",
    "rebuild",
    "save",
    "verify_checksums",
]

FORMAT = "zooadapt/1"


def _version() -> str:
    from zooadapt import __version__

    return __version__


def describe_adapted(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> dict[str, Any]:
    """How to rebuild and use ``model``: name, builder arguments, classes, data config.

    The record holds the registry name, builder arguments, class count, input channels,
    data config and labels. Read from :func:`zooadapt.anatomy`, :func:`zooadapt.data_config` and
    :func:`zooadapt.labels`; a model no family understands is described by its class
    alone (``family``, ``num_classes``, ``in_chans``, ``data_config``, ``labels`` are
    ``None``).
    """
    model = unwrap(model)
    origin = adapted_from(model) or {}
    try:
        anat = anatomy(model, family=family, plugin_manager=plugin_manager)
    except FamilyNotFoundError:
        anat = None
    return {
        "format": FORMAT,
        "zooadapt_version": _version(),
        "model": origin.get("model", ""),
        "model_kwargs": origin.get("model_kwargs", {}),
        "class": class_name(type(model)),
        "family": anat.family if anat else None,
        "num_classes": anat.num_classes if anat else None,
        "in_chans": anat.in_chans if anat else None,
        "data_config": data_config(model).as_dict() if anat else None,
        "labels": _list(labels(model)) if anat else None,
        "weights": origin.get("weights"),
        "lora": lora_settings(model),
    }


def _list(names: tuple[str, ...] | None) -> list[str] | None:
    return None if names is None else list(names)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    adapters_only: bool = False,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> Path:
    """Write ``model``'s weights as safetensors with the metadata :func:`load` needs.

    In a distributed run, a DDP-wrapped or FSDP2-sharded model is written by global rank 0
    alone, as one full, unwrapped checkpoint that :func:`load` reads in a single process.
    Other ranks write nothing and return at once (use a barrier before they read it). A
    sharded model's weights are gathered collectively, so call it on every rank then;
    a DDP model may be saved from every rank or from rank 0 only.

    Args:
        model: An adapted model (wrappers such as DataParallel are accepted).
        path: Destination file, replaced atomically.
        adapters_only: For a model with LoRA adapters (:func:`zooadapt.lora`), write only
            the adapters, the head and the stem; the metadata names the base model and
            its weights, which :func:`load` rebuilds first.
        family: Force a family by name, or pass a :class:`Family`; by default the one
            the model's family was resolved with before.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.

    Returns:
        The path (written by this process or, in a distributed run, by rank 0).

    Raises:
        CheckpointError: If the model holds meta tensors or its builder arguments cannot
            be stored as JSON.
    """
    from safetensors.torch import save_file

    info = describe_adapted(model, family=family, plugin_manager=plugin_manager)
    if adapters_only:
        _check_adapters_only(model, info)
        info["adapters_only"] = True
    try:
        json.dumps(info)
    except TypeError as err:
        raise CheckpointError(f"cannot record builder arguments of {info['model']}: {err}") from err
    state = full_state_dict(model)  # collective for a sharded model
    if not is_writer(model):
        return Path(path)
    if adapters_only:
        state = adapters_only_state(model, state, family=family, plugin_manager=plugin_manager)
    tensors = _unique_contiguous(state)
    info["checksums"] = {key: checksum(tensor) for key, tensor in tensors.items()}
    with atomic_write(path) as temporary:
        save_file(tensors, str(temporary), metadata={"zooadapt": json.dumps(info)})
    return Path(path)


def _check_adapters_only(model: nn.Module, info: dict[str, Any]) -> None:
    if info["lora"] is None:
        raise CheckpointError(
            f"{type(unwrap(model)).__qualname__} has no LoRA adapters: adapters_only=True "
            "needs a model za.lora was applied to"
        )
    if not info["model"] or info["weights"] is None:
        raise CheckpointError(
            "adapters_only=True needs a base that za.load can rebuild: a model za.adapt built "
            "from a registry name with zoo weights (pretrained=True or a tag); save it whole"
        )


def adapters_only_state(
    model: nn.Module,
    state: dict[str, torch.Tensor] | None = None,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> dict[str, torch.Tensor]:
    """What ``save(..., adapters_only=True)`` writes: adapters, head and stem.

    Args:
        model: A model with LoRA adapters.
        state: Its full state dict (default ``model.state_dict()``).
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.
    """
    anat = anatomy(model, family=family, plugin_manager=plugin_manager)
    prefixes = tuple(f"{path}." for path in (*anat.head, *anat.stems))
    state = unwrap(model).state_dict() if state is None else state
    kept = lambda key: is_adapter(key) or lora_base_name(key).startswith(prefixes)  # noqa: E731
    return {k: t for k, t in state.items() if kept(k)}


def checksum(tensor: torch.Tensor) -> str:
    """CRC-32 of a tensor's bytes, as 8 hex digits."""
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(memoryview(data)):08x}"


def verify_checksums(path: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Check every tensor of a :func:`save` file against the checksums it records.

    Raises:
        CheckpointError: Naming the first tensor whose bytes differ (a flipped bit, a
            damaged copy), or one the file lacks.
    """
    from safetensors import safe_open

    expected = info.get("checksums")
    if not isinstance(expected, dict):
        return  # written before checksums were recorded
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            for key, value in expected.items():
                if key not in keys:
                    raise CheckpointError(f"{path} lacks tensor {key!r} that za.save wrote")
                if checksum(handle.get_tensor(key)) != value:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} does not match its checksum; the file is "
                        "damaged (copy it again; za.load(path, verify=False) skips the check)"
                    )
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own errors on a damaged file
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err


def _unique_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors, each with storage of its own: tied weights are written twice."""
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise CheckpointError(f"cannot save meta tensors (no data): {meta[:5]}")
    seen: set[int] = set()  # data pointers of the storages written so far
    out = {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # tied, or a view into a larger storage
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The zooadapt metadata of a file written by :func:`save`.

    Raises:
        CheckpointError: If the file is unreadable or was not written by :func:`save`.
    """
    from safetensors import safe_open

    check_regular_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    if "zooadapt" not in metadata:
        raise CheckpointError(
            f"{path} was not written by za.save; load it with "
            "za.adapt(name, pretrained=path) or za.load_weights(model, path)"
        )
    try:
        info = json.loads(metadata["zooadapt"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its zooadapt metadata is damaged ({err})") from err
    return _checked_metadata(path, info)


#: Metadata fields :func:`load` needs, and their types.
_FIELDS = {
    "model": str,
    "model_kwargs": dict,
    "num_classes": (int, type(None)),
    "in_chans": (int, type(None)),
}
#: Fields written since the data side was added; files without them load without them.
_OPTIONAL_FIELDS = {
    "data_config": (dict, type(None)),
    "labels": (list, type(None)),
    "weights": (str, type(None)),
    "lora": (dict, type(None)),
    "adapters_only": (bool, type(None)),
}


def _checked_metadata(path: str | os.PathLike[str], info: object) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: its zooadapt metadata is not a JSON object")
    if info.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has zooadapt format {info.get('format')!r}; this zooadapt "
            f"({_version()}) reads {FORMAT!r}: upgrade zooadapt to load it"
        )
    for name, kind in [*_FIELDS.items(), *_OPTIONAL_FIELDS.items()]:
        if not isinstance(info.get(name), kind):
            raise CheckpointError(
                f"{path}: zooadapt metadata field {name!r} is {info.get(name)!r}; the file "
                "is damaged"
            )
    names = info.get("labels")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: zooadapt metadata field 'labels' holds non-strings")
    _read_config(path, info.get("data_config"))
    _check_lora(path, info.get("lora"))
    return info


def _check_lora(path: str | os.PathLike[str], lora: dict[str, Any] | None) -> None:
    """Recorded adapters: ``r`` a positive int, numbers, and module names as strings."""
    if lora is None:
        return
    number = (int, float)
    fits = (
        isinstance(lora.get("r"), int)
        and not isinstance(lora.get("r"), bool)
        and lora["r"] > 0
        and isinstance(lora.get("alpha"), number)
        and isinstance(lora.get("dropout"), number)
        and isinstance(lora.get("targets"), list)
        and all(isinstance(t, str) for t in lora["targets"])
    )
    if not fits:
        raise CheckpointError(
            f"{path}: zooadapt metadata field 'lora' is {lora!r}, not adapters za.save "
            "recorded (r, alpha, dropout, targets); the file is damaged"
        )


def _read_config(path: str | os.PathLike[str], values: dict[str, Any] | None) -> DataConfig | None:
    if values is None:
        return None
    try:
        return DataConfig.from_dict(values)
    except DataError as err:
        raise CheckpointError(
            f"{path}: its zooadapt metadata field 'data_config' is invalid: {err}"
        ) from err


def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
    plugin_manager: PluginManager | None = None,
) -> nn.Module:
    """Rebuild the adapted model that :func:`save` wrote, without restating anything.

    Args:
        path: A file written by :func:`save`.
        device: Where the model lives.
        verify: Check every tensor against the CRC-32 :func:`save` recorded (0.09 s for
            vgg16's 512 MiB, ``benchmarks/README.md``); a flipped bit is a
            ``CheckpointError``.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Raises:
        CheckpointError: If the file was not written by :func:`save`, is damaged, or the
            model was an instance rather than a registry name (then use
            ``za.load_weights``).
    """
    info = read_metadata(path)
    if verify:
        verify_checksums(path, info)
    if not info.get("model"):
        raise CheckpointError(
            f"{path} holds a {info.get('family')} model that was not built from a registry "
            "name; build it yourself and call za.load_weights(model, path)"
        )
    return rebuild(info, path, device=device, plugin_manager=plugin_manager)


def rebuild(
    info: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    plugin_manager: PluginManager | None = None,
) -> nn.Module:
    """Adapt the registry model that :func:`describe_adapted` described, loading ``path``.

    The data config and labels the file records are restored on the model. A model with
    LoRA adapters is rebuilt (from its zoo weights, for an adapters-only file), given
    the same adapters, then loaded.
    """
    if info.get("lora"):
        model = _rebuild_with_adapters(info, path, device, plugin_manager)
    else:
        model = _rebuild_plain(info, path, device, plugin_manager)
    config = _read_config(path, info.get("data_config"))
    if config is not None:
        record_config(model, config)
    if "labels" in info:
        record_labels(model, info["labels"])
        sync_config(model)  # the model's own config names the restored labels too
    return model


def _rebuild_plain(
    info: dict[str, Any],
    path: str | os.PathLike[str],
    device: str | torch.device | None,
    plugin_manager: PluginManager | None,
) -> nn.Module:
    return adapt(
        info["model"],
        num_classes=info["num_classes"],
        in_chans=info["in_chans"],
        pretrained=Path(path),
        device=device,
        plugin_manager=plugin_manager,
        **info["model_kwargs"],
    )


def _rebuild_with_adapters(
    info: dict[str, Any],
    path: str | os.PathLike[str],
    device: str | torch.device | None,
    plugin_manager: PluginManager | None,
) -> nn.Module:
    """The base (zoo weights for an adapters-only file), the adapters, then the file."""
    from zooadapt.loading import load_weights

    only = bool(info.get("adapters_only"))
    settings = info["lora"]
    try:
        model = adapt(
            info["model"],
            num_classes=info["num_classes"],
            in_chans=info["in_chans"],
            pretrained=info["weights"] if only else False,
            lora={
                "r": settings["r"], "alpha": settings["alpha"], "dropout": settings["dropout"],
                "targets": [re.escape(name) for name in settings["targets"]],
            },
            plugin_manager=plugin_manager,
            **info["model_kwargs"],
        )  # fmt: skip
    except AdaptError as err:
        raise CheckpointError(
            f"{path}: the LoRA adapters it records cannot be rebuilt on {info['model']}: {err}"
        ) from err
    report = load_weights(model, path, strict=not only, plugin_manager=plugin_manager)
    if report.unexpected or report.mismatched:
        raise CheckpointError(f"{path} does not fit the rebuilt {info['model']}:\n{report}")
    return model.to(device) if device is not None else model
