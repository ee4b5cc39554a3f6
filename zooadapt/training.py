"""Training checkpoints that resume exactly: weights, freeze state, optimizer groups.

A resumed run gets back the same trainable set, the same frozen norm layers, and an
optimizer whose groups hold the same parameters (by name) with the same state, so a run
that unfroze stages mid-training continues as if it had never stopped.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.distributed import (
    full_optimizer_state_dict,
    full_state_dict,
    is_sharded,
    is_writer,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    unwrap,
)
from zooadapt._core.files import (
    atomic_write,
    check_regular_file,
    load_torch,
    reading,
    unpickling_message,
)
from zooadapt._core.meta import meta_copy
from zooadapt._core.plugins import PluginManager
from zooadapt.errors import CheckpointError, ZooAdaptError
from zooadapt.freeze import freeze_state, load_freeze_state
from zooadapt.loading import load_state
from zooadapt.optim import SETTINGS, foreign_tensors
from zooadapt.saving import describe_adapted, rebuild
from zooadapt.types import Family

__all__ = ["Training", "load_training", "save_training"]

FORMAT = "zooadapt-training/1"


@dataclass
class Training:
    """What :func:`load_training` restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_training(
    model: nn.Module,
    path: str | os.PathLike[str],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **extra: Any,
) -> Path:
    """Write a resumable training checkpoint atomically.

    In a distributed run, a DDP-wrapped or FSDP2-sharded model's checkpoint is written by
    global rank 0 alone, full and unwrapped, as :func:`zooadapt.save` does (call it on
    every rank for a sharded model: weights and optimizer state are gathered collectively).

    The model comes first and the path second, as in :func:`zooadapt.save`.

    Args:
        model: The model being trained (wrappers such as DDP are accepted).
        path: Destination file (a torch file readable with ``weights_only=True``).
        optimizer: Its optimizer; every parameter it holds must belong to ``model``.
        scheduler: Optional learning-rate scheduler (anything with ``state_dict``).
        family: Force the model's family by name, or pass a :class:`Family`; by default
            the one resolved for the model before.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.
        **extra: Plain data to restore too (epoch, step, a schedule's ``state_dict()``).

    Returns:
        The path (written by this process or, in a distributed run, by rank 0).
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"save_training takes the model first and the path second, as za.save does: "
            f"save_training(model, path, optimizer); got {type(model).__name__} first"
        )
    root = unwrap(model)
    foreign = foreign_tensors(optimizer, root)
    if foreign:
        raise CheckpointError(
            f"the optimizer holds {foreign} tensors that are not parameters of "
            f"{type(root).__name__}"
        )
    names = {id(p): n for n, p in root.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    adapted = describe_adapted(root, family=family, plugin_manager=plugin_manager)
    weights = full_state_dict(root)  # collective for a sharded model, as is the next line
    optimizer_state = _optimizer_state(root, optimizer, groups)
    if not is_writer(model):
        return Path(path)
    _check_readable(extra, scheduler)
    payload = {
        "format": FORMAT,
        "adapted": adapted,
        "model": {k: v.detach().cpu() for k, v in weights.items()},
        "freeze": freeze_state(root),
        "optimizer": {
            "class": type(optimizer).__name__,
            "defaults": dict(optimizer.defaults),
            "settings": dict(getattr(optimizer, SETTINGS, {})),
            "groups": groups,
            "state_dict": optimizer_state,
        },
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra,
    }
    with atomic_write(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def _check_readable(extra: dict[str, Any], scheduler: Any) -> None:
    """Refuse, at save time, any value :func:`load_training` could not read back safely.

    Raises:
        CheckpointError: Naming the value and the type that would be refused.
    """
    values = dict(extra)
    if scheduler is not None:
        values["scheduler"] = scheduler.state_dict()
    for name, value in values.items():
        buffer = io.BytesIO()
        try:
            torch.save(value, buffer)
            buffer.seek(0)
            load_torch(buffer)
        except Exception as err:  # noqa: BLE001 - any value that does not round-trip
            reason = unpickling_message(f"extra value {name!r}", err)
            raise CheckpointError(
                f"{reason.split(', which')[0]}, which za.load_training cannot read safely; "
                "store plain data (numbers, strings, lists, dicts, tensors)"
            ) from err


def _optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, groups: list[list[str]]
) -> dict[str, Any]:
    """``optimizer.state_dict()``, gathered in full first if ``model`` is sharded."""
    if not is_sharded(model):
        return optimizer.state_dict()
    by_name = full_optimizer_state_dict(model, optimizer)
    if not by_name:  # ranks other than 0 get nothing
        return {}
    index = {name: i for i, name in enumerate(n for names in groups for n in names)}
    return {
        "state": {index[name]: state for name, state in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def _by_name(state_dict: dict[str, Any], groups: list[list[str]]) -> dict[str, Any]:
    """The name-keyed form of an index-keyed optimizer state dict (for sharded models)."""
    names = [n for group in groups for n in group]
    return {
        "state": {names[i]: state for i, state in state_dict["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state_dict["param_groups"]
        ],
    }


def load_training(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    optimizer_class: type[torch.optim.Optimizer] | None = None,
    plugin_manager: PluginManager | None = None,
) -> Training:
    """Resume from :func:`save_training`'s file.

    To resume a distributed run, call it on every rank. With DDP, let it rebuild the
    model and wrap ``Training.model`` afterwards. With FSDP2, build and shard the model
    first and pass it as ``model``: each rank loads its shards and the optimizer is built
    over the sharded parameters.

    Args:
        path: The training checkpoint.
        model: The model to restore into; by default it is rebuilt from the registry name
            it was adapted from.
        scheduler: ``scheduler(optimizer)`` builds the scheduler whose state is restored.
        optimizer_class: Needed only for optimizers outside ``torch.optim``.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        The restored :class:`Training` (model, optimizer, scheduler, extra).

    Everything is checked before ``model`` changes: weights, freeze state, optimizer and
    scheduler are first restored into a meta-device copy of it (no memory), so a
    checkpoint that does not fit leaves ``model`` exactly as it was.

    Raises:
        CheckpointError: If the file is not a zooadapt training checkpoint, does not fit
            the model (weights, groups, freeze state, optimizer or scheduler state), or the
            model cannot be rebuilt.
    """
    check_regular_file(path, "training checkpoint")
    with reading(f"training checkpoint {path}", str(path)):
        payload = load_torch(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zooadapt training checkpoint (za.save_training)")
    if model is not None and not is_sharded(model):  # rehearse on a meta copy first
        rehearsal = meta_copy(unwrap(model))
        _checked(path, lambda: _restore(payload, path, rehearsal, scheduler, optimizer_class, None))
    return _checked(
        path, lambda: _restore(payload, path, model, scheduler, optimizer_class, plugin_manager)
    )


def _checked(path: str | os.PathLike[str], restore: Callable[[], Training]) -> Training:
    """Run ``restore``; an error that is not zooadapt's names the file it came from."""
    try:
        return restore()
    except ZooAdaptError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path} does not fit: {type(err).__name__}: {err}; the model was left unchanged"
        ) from err


def _restore(
    payload: dict[str, Any],
    path: str | os.PathLike[str],
    model: nn.Module | None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None,
    optimizer_class: type[torch.optim.Optimizer] | None,
    plugin_manager: PluginManager | None,
) -> Training:
    """Weights, freeze state, optimizer and scheduler, in that order."""
    restored = _restore_model(payload, path, model, plugin_manager)
    load_freeze_state(restored, payload["freeze"])
    optimizer = _restore_optimizer(restored, payload["optimizer"], optimizer_class)
    sched = scheduler(optimizer) if scheduler is not None else None
    if sched is not None and payload["scheduler"] is not None:
        sched.load_state_dict(payload["scheduler"])
    return Training(restored, optimizer, sched, payload["extra"])


def _restore_model(
    payload: dict[str, Any],
    path: str | os.PathLike[str],
    model: nn.Module | None,
    plugin_manager: PluginManager | None,
) -> nn.Module:
    info = payload["adapted"]
    if model is not None and is_sharded(model):
        load_full_state_dict(model, payload["model"])
        return unwrap(model)
    if model is not None:  # exactly the saved tensors: nothing renamed, no head dropped
        load_state(unwrap(model), payload["model"], source=str(path))
        return unwrap(model)
    if not info["model"]:
        raise CheckpointError(
            f"{path} holds a model that was not built from a registry name; "
            "pass model=<your model> to load_training"
        )
    return rebuild(info, path, plugin_manager=plugin_manager)


def _restore_optimizer(
    model: nn.Module, saved: dict[str, Any], optimizer_class: type[torch.optim.Optimizer] | None
) -> torch.optim.Optimizer:
    cls = optimizer_class or getattr(torch.optim, saved["class"], None)
    if cls is None:
        raise CheckpointError(
            f"optimizer {saved['class']} is not in torch.optim; pass optimizer_class=..."
        )
    params = dict(model.named_parameters())
    groups = [{"params": [params[name] for name in names]} for names in saved["groups"]]
    sharded = is_sharded(model)
    if sharded:  # torch.distributed.checkpoint restores only the group keys already there
        for group, stored in zip(groups, saved["state_dict"]["param_groups"], strict=True):
            group.update({k: v for k, v in stored.items() if k != "params"})
    accepted = inspect.signature(cls).parameters
    defaults = {k: v for k, v in saved["defaults"].items() if k in accepted}
    optimizer = cls(groups, **defaults)
    if sharded:
        by_name = _by_name(saved["state_dict"], saved["groups"])
        load_full_optimizer_state_dict(model, optimizer, by_name)
    else:
        optimizer.load_state_dict(saved["state_dict"])
    if saved.get("settings"):  # what za.optimizer was given, for later za.unfreeze calls
        settings = saved["settings"]
        optimizer.__dict__[SETTINGS] = {**settings, "no_decay": tuple(settings["no_decay"])}
    return optimizer
