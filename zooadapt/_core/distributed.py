"""Accept wrapped and sharded models anywhere: DataParallel, DDP, ``torch.compile``, FSDP2.

DDP decides when it is built which parameters it synchronises: those with
``requires_grad`` then. After :func:`zooadapt.freeze` or :func:`zooadapt.unfreeze` change
that set on a DDP-wrapped model, wrap it again on every rank with :func:`rewrap`;
otherwise newly unfrozen parameters train apart on each rank, and newly frozen ones make
the next backward fail. FSDP2 (``fully_shard``) follows ``requires_grad`` at every step
and needs nothing of the kind.

Checkpoints of a DDP-wrapped or sharded model are written by global rank 0 only; those of
a sharded model are first gathered collectively (:func:`full_state_dict`).
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from zooadapt.errors import FreezeError

__all__ = [
    "ddp_of",
    "full_optimizer_state_dict",
    "full_state_dict",
    "is_sharded",
    "is_writer",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "rewrap",
    "trainable_ids",
    "unwrap",
    "warn_if_ddp_is_stale",
]

DDP = nn.parallel.DistributedDataParallel
_MIB = 1024 * 1024


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DDP / ``torch.compile`` wrappers (``model`` if none).

    FSDP2 (``fully_shard``) keeps the model's own class and needs no unwrapping.
    """
    while True:
        if isinstance(model, (nn.DataParallel, DDP)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel wrapper in ``model``'s chain of wrappers, if any."""
    while True:
        if isinstance(model, DDP):
            return model
        if isinstance(model, nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return None


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 (``fully_shard``) shards ``model`` or any module inside it."""
    if "torch.distributed.fsdp" not in sys.modules:  # nothing can be sharded yet
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in unwrap(model).modules())


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_writer(model: nn.Module) -> bool:
    """Whether this process writes ``model``'s checkpoints.

    In an initialised process group, a DDP-wrapped or sharded model is written by global
    rank 0 alone; every other model by whichever process asks.
    """
    if not _distributed() or (ddp_of(model) is None and not is_sharded(model)):
        return True
    return torch.distributed.get_rank() == 0


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s complete, unwrapped state dict.

    That is the module's own ``state_dict()``, except for a sharded model: its tensors are
    gathered collectively onto the CPU, so call it on every rank; only rank 0 gets them
    (the others get an empty dict).
    """
    root = unwrap(model)
    if not is_sharded(root):
        return root.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(root, options=_full_options())


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state of a sharded ``model``, gathered like :func:`full_state_dict`.

    Tensors are keyed by parameter name, as ``torch.distributed.checkpoint`` returns them.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), optimizer, options=_full_options())


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a complete state dict into a sharded ``model`` (every rank passes all of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(unwrap(model), state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a name-keyed complete optimizer state into ``optimizer`` of a sharded model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(unwrap(model), optimizer, state, options=options)


def trainable_ids(model: nn.Module) -> set[int]:
    """Identities of ``model``'s parameters that require gradients."""
    return {id(p) for p in unwrap(model).parameters() if p.requires_grad}


def warn_if_ddp_is_stale(model: nn.Module, before: Iterable[int]) -> None:
    """Warn if ``model`` is DDP-wrapped and its trainable set is no longer ``before``."""
    if ddp_of(model) is not None and trainable_ids(model) != set(before):
        warnings.warn(
            "the trainable parameters of this DistributedDataParallel model changed, but "
            "DDP synchronises only those that were trainable when it was built; wrap it "
            "again on every rank before the next step: model = za.rewrap(model)",
            UserWarning,
            stacklevel=3,
        )


def rewrap(model: nn.Module, **overrides: Any) -> nn.Module:
    """A new DistributedDataParallel around the same module, synchronising what trains now.

    Call it on every rank (building DDP is collective) after a freeze or unfreeze of a
    DDP-wrapped model, and train with the result. Parameters, the optimizer and the
    module's hooks stay as they are; the new wrapper copies the old one's settings
    (``process_group``, ``device_ids``, ``output_device``, ``dim``, buffer syncing,
    bucket sizes, ``find_unused_parameters``, ``gradient_as_bucket_view``,
    ``static_graph``) and its Python communication hooks.

    Args:
        model: A DistributedDataParallel model; any other model is returned as it is.
        **overrides: DistributedDataParallel arguments that replace the copied ones.

    Returns:
        The new wrapper (or ``model`` itself if it is not DDP-wrapped).

    Raises:
        FreezeError: If DDP sits inside another wrapper (such as ``torch.compile``: rewrap
            the DDP, then compile again), or uses delayed all-reduce or DDP's own mixed
            precision, whose hooks on the module cannot be moved to a new wrapper.

    Example:
        >>> za.unfreeze(model, "layer4", optimizer=opt)
        >>> model = za.rewrap(model)
    """
    if not isinstance(model, DDP):
        if ddp_of(model) is not None:
            raise FreezeError(
                f"DistributedDataParallel sits inside {type(model).__name__}; rewrap the "
                "DDP model itself, then wrap it again (e.g. torch.compile)"
            )
        return model
    if model._delay_all_reduce_params or getattr(model, "mixed_precision", None) is not None:
        raise FreezeError(
            "cannot rewrap a DistributedDataParallel that uses delayed all-reduce or DDP "
            "mixed precision; build a new DistributedDataParallel(model.module, ...)"
        )
    settings = {**_ddp_settings(model), **overrides}
    with warnings.catch_warnings():  # broadcast_buffers=False is deprecated in newer torch
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        fresh = DDP(model.module, **settings)
    for hook, state in getattr(model, "_comm_hooks", []):
        fresh.register_comm_hook(state, hook)
    return fresh


def _ddp_settings(ddp: nn.parallel.DistributedDataParallel) -> dict[str, Any]:
    """The constructor arguments of ``ddp`` that this torch version accepts."""
    default_buckets = getattr(ddp, "bucket_bytes_cap_default", False)
    caps = getattr(ddp, "bucket_bytes_cap_list", [])
    settings: dict[str, Any] = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "dim": ddp.dim,
        "bucket_cap_mb": None if default_buckets else ddp.bucket_bytes_cap / _MIB,
        "bucket_cap_mb_list": [cap / _MIB for cap in caps] or None,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": ddp.static_graph,
        "skip_all_reduce_unused_params": getattr(ddp, "skip_all_reduce_unused_params", False),
        "batched_grad_copy": getattr(ddp, "batched_grad_copy", False),
    }
    if getattr(ddp, "device_mesh", None) is not None:
        settings["device_mesh"] = ddp.device_mesh
    else:
        settings["process_group"] = ddp.process_group
    if not ddp.broadcast_buffers:  # keep rank-local buffers: no sync at init either
        settings["broadcast_buffers"] = False
    accepted = inspect.signature(DDP).parameters
    return {k: v for k, v in settings.items() if k in accepted}
