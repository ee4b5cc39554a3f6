"""Training checkpoints that resume exactly: weights, freeze state, optimizer groups.

A resumed run gets back the same trainable set, the same frozen norm layers, and an
optimizer whose groups hold the same parameters (by name) with the same state, so a run
that unfroze stages mid-training continues as if it had never stopped.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt.errors import CheckpointError
from zooadapt.freeze import freeze_state, load_freeze_state
from zooadapt.loading import load_weights
from zooadapt.manager import PluginManager
from zooadapt.optim import foreign_tensors
from zooadapt.saving import atomic_write, describe_adapted, rebuild
from zooadapt.wrappers import unwrap

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
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    **extra: Any,
) -> Path:
    """Write a resumable training checkpoint atomically.

    Args:
        path: Destination file (a torch file readable with ``weights_only=True``).
        model: The model being trained (wrappers such as DDP are accepted).
        optimizer: Its optimizer; every parameter it holds must belong to ``model``.
        scheduler: Optional learning-rate scheduler (anything with ``state_dict``).
        **extra: Plain data to restore too (epoch, step, a schedule's ``state_dict()``).

    Returns:
        The path written.
    """
    model = unwrap(model)
    foreign = foreign_tensors(optimizer, model)
    if foreign:
        raise CheckpointError(
            f"the optimizer holds {foreign} tensors that are not parameters of "
            f"{type(model).__name__}"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    payload = {
        "format": FORMAT,
        "adapted": describe_adapted(model),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "freeze": freeze_state(model),
        "optimizer": {
            "class": type(optimizer).__name__,
            "defaults": dict(optimizer.defaults),
            "groups": groups,
            "state_dict": optimizer.state_dict(),
        },
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra,
    }
    with atomic_write(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def load_training(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    optimizer_class: type[torch.optim.Optimizer] | None = None,
    plugin_manager: PluginManager | None = None,
) -> Training:
    """Resume from :func:`save_training`'s file.

    Args:
        path: The training checkpoint.
        model: The model to restore into; by default it is rebuilt from the registry name
            it was adapted from.
        scheduler: ``scheduler(optimizer)`` builds the scheduler whose state is restored.
        optimizer_class: Needed only for optimizers outside ``torch.optim``.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        The restored :class:`Training` (model, optimizer, scheduler, extra).

    Raises:
        CheckpointError: If the file is not a zooadapt training checkpoint or the model
            cannot be rebuilt.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zooadapt training checkpoint (za.save_training)")
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
    if model is not None:
        load_weights(model, path, key="model", plugin_manager=plugin_manager)
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
    accepted = inspect.signature(cls).parameters
    defaults = {k: v for k, v in saved["defaults"].items() if k in accepted}
    optimizer = cls(groups, **defaults)
    optimizer.load_state_dict(saved["state_dict"])
    return optimizer
