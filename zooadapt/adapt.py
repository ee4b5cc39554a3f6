"""``za.adapt``: build or take a model and make it fine-tune-ready, as named steps."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import describe, manager_of
from zooadapt._core.distributed import unwrap
from zooadapt._core.files import read_state_dict
from zooadapt._core.meta import build_on_meta, gc_paused
from zooadapt._core.names import ModelRef, resolve_name
from zooadapt._core.plan import plan_surgery
from zooadapt._core.plugins import PluginManager, get_plugin_manager
from zooadapt._core.pretrained import ensure_local, select_weights
from zooadapt._core.surgery import StemInit
from zooadapt.errors import AdaptError, PluginError, ZooAdaptError
from zooadapt.freeze import FreezeSpec
from zooadapt.freeze import freeze as freeze_model
from zooadapt.freeze import select as select_frozen
from zooadapt.loading import (
    GENERIC_RULES,
    Targets,
    head_rows,
    load_state,
    materialize,
    rename_keys,
    stem_channels,
)
from zooadapt.types import Family, Weights

__all__ = ["adapt", "adapted_from"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
_ORIGIN = "_zooadapt_origin"


@dataclass(frozen=True)
class _Request:
    """What the caller asked ``adapt`` to do to the model's head and stem."""

    num_classes: int | None
    in_chans: int | None
    stem_init: StemInit | None
    freeze: FreezeSpec
    family: str | Family | None
    pm: PluginManager | None  # None: the model's own (recorded) or the shared manager


@gc_paused()
def adapt(
    model: str | nn.Module,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem_init: StemInit | None = None,
    pretrained: bool | str | os.PathLike[str] = True,
    freeze: FreezeSpec = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    trust_pickle: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """Return ``model`` ready to fine-tune: weights loaded, head and stem adapted.

    Args:
        model: A registry name (``"resnet152"``, ``"torchvision/resnet152"``) or a module,
            which is changed in place (wrappers such as DataParallel are accepted).
        num_classes: Outputs of every declared head (aux heads too). ``None`` keeps the
            head, or takes the class count of a checkpoint given as ``pretrained``.
        in_chans: Input channels; the stem is rebuilt from the pretrained filters.
            ``None`` keeps them, or takes the channel count of a checkpoint.
        stem_init: ``"sum"`` (default for 1 channel), ``"repeat"`` (default otherwise),
            ``"zeros"``, or a channel map; see :func:`zooadapt._core.surgery.adapt_conv_weight`.
        pretrained: ``True`` for the zoo's default weights, ``False`` for random
            initialisation, a weights tag (``"IMAGENET1K_V1"``), or a checkpoint path.
            A module argument keeps its own weights unless a path is given.
        freeze: Freeze spec passed to :func:`zooadapt.freeze` (``"backbone"``, a group
            name, a group count, a list of groups or regexes), with BatchNorm frozen.
        device: Where the result lives. ``"meta"`` builds without allocating memory and
            without loading weights.
        dtype: Floating-point dtype of the result.
        family: Force the family by name, or pass a :class:`Family` for an unknown model.
        plugin_manager: Defaults to the shared manager with every installed plugin.
        trust_pickle: Unpickle any object in a ``pretrained`` file (only for files you
            trust: unpickling can run code); inert types need no trust.
        **model_kwargs: Passed to the zoo's builder.

    Returns:
        The zoo's own module class, changed in place (never a wrapper).

    Raises:
        ZooAdaptError: A subclass naming the model, argument, file or plugin at fault; a
            module argument is then left exactly as it was.
    """
    _check_count("num_classes", num_classes)
    _check_count("in_chans", in_chans)
    request = _Request(num_classes, in_chans, stem_init, freeze, family, plugin_manager)
    on_meta = device is not None and torch.device(device).type == "meta"
    path = pretrained if _is_path(pretrained) and not on_meta else None
    checkpoint = (
        read_state_dict(path, trust_pickle=trust_pickle)  # type: ignore[arg-type]
        if path is not None
        else None
    )
    if isinstance(model, nn.Module):
        _check_module_arguments(pretrained, model_kwargs)
        _adapt_in_place(unwrap(model), request, checkpoint, str(path), assign=False)
        return _finish(model, request, device, dtype)
    if not isinstance(model, str):
        raise AdaptError(f"model must be a registry name or nn.Module, got {type(model).__name__}")
    ref = resolve_name(model, request.pm or get_plugin_manager())
    if checkpoint is not None:
        module = _from_checkpoint(ref, model_kwargs, request, checkpoint, str(path))
    else:
        module = _from_zoo(ref, pretrained, on_meta, model_kwargs)
        _adapt_in_place(module, request, None, "", assign=False)
    setattr(module, _ORIGIN, {"model": ref.qualified, "model_kwargs": dict(model_kwargs)})
    return _finish(module, request, device, dtype)


def adapted_from(model: nn.Module) -> dict[str, Any] | None:
    """The registry name and builder arguments ``adapt`` built ``model`` from, if any."""
    return getattr(unwrap(model), _ORIGIN, None)


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdaptError(f"{name} must be a positive int, got {value!r}")


def _check_module_arguments(pretrained: object, model_kwargs: dict[str, Any]) -> None:
    if model_kwargs:
        raise AdaptError(f"model keyword arguments {sorted(model_kwargs)} need a model name")
    if isinstance(pretrained, str) and not _is_path(pretrained):
        raise AdaptError(
            f"pretrained={pretrained!r} names zoo weights; a module argument takes "
            "True/False or a checkpoint path"
        )


def _is_path(pretrained: object) -> bool:
    if isinstance(pretrained, os.PathLike):
        return True
    return isinstance(pretrained, str) and (
        os.sep in pretrained
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
        or Path(pretrained).exists()
    )


def _finish(
    model: nn.Module, request: _Request, device: Any, dtype: torch.dtype | None
) -> nn.Module:
    if request.freeze is not None:
        freeze_model(model, request.freeze, family=request.family, plugin_manager=request.pm)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# -- building ------------------------------------------------------------------------------


def _from_zoo(
    ref: ModelRef, pretrained: object, on_meta: bool, model_kwargs: dict[str, Any]
) -> nn.Module:
    """Build from the zoo: on meta, with random weights, or with its pretrained weights."""
    if on_meta:
        return build_on_meta(lambda: _build(ref, None, model_kwargs))
    if pretrained is False or pretrained is None:  # random init, whatever tag the name has
        return _build(ref, None, model_kwargs)
    weights = select_weights(ref, pretrained)  # type: ignore[arg-type]
    local = dataclasses.replace(weights, file=ensure_local(weights, ref))
    return _build(ref, local, model_kwargs)


def _from_checkpoint(
    ref: ModelRef,
    model_kwargs: dict[str, Any],
    request: _Request,
    checkpoint: dict[str, torch.Tensor],
    source: str,
) -> nn.Module:
    """Build on meta and install the checkpoint's tensors: no random init, no second copy.

    Builders whose constructors compute tensors that no checkpoint holds are built for real.
    """
    builder: Callable[[], nn.Module] = lambda: _build(ref, None, model_kwargs)  # noqa: E731
    module = build_on_meta(builder)
    heads = _adapt_in_place(module, request, checkpoint, source, assign=True)
    if not materialize(module, heads):
        return module
    module = builder()
    _adapt_in_place(module, request, checkpoint, source, assign=False)
    return module


def _build(ref: ModelRef, weights: Weights | None, kwargs: dict[str, Any]) -> nn.Module:
    zoo = ref.zoo
    try:
        module = zoo.item.build(ref.arch, weights, **kwargs)
    except ZooAdaptError:
        raise
    except TypeError as err:
        raise AdaptError(f"{ref.qualified} does not accept {sorted(kwargs)}: {err}") from err
    except Exception as err:
        raise PluginError(
            f"plugin {zoo.plugin!r} failed building {ref.qualified!r}: {err!r}", plugin=zoo.plugin
        ) from err
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"plugin {zoo.plugin!r} built {type(module).__name__} for {ref.qualified!r}",
            plugin=zoo.plugin,
        )
    return module


# -- adapting --------------------------------------------------------------------------------


def _adapt_in_place(
    model: nn.Module,
    request: _Request,
    checkpoint: dict[str, torch.Tensor] | None,
    source: str,
    *,
    assign: bool,
) -> tuple[str, ...]:
    """Replace heads, rebuild the stem, then load ``checkpoint``; undo all on failure.

    Returns:
        The head paths.
    """
    declared, anat = describe(model, request.pm, request.family)
    num_classes, in_chans = request.num_classes, request.in_chans
    rules = [*GENERIC_RULES, *manager_of(model).rename_rules(declared.item)]
    if checkpoint is not None:
        renamed, _ = rename_keys(checkpoint, rules, model.state_dict())
        num_classes = num_classes or head_rows(renamed, anat.head)
        in_chans = in_chans or stem_channels(renamed, anat)
        _check_count(f"the class count of {source}'s head", num_classes)
        _check_count(f"the input channels of {source}'s stem", in_chans)
    plan = plan_surgery(model, declared.item, anat, num_classes, in_chans, request.stem_init)
    if request.freeze is not None:  # validate the spec before anything changes
        select_frozen(anat.groups, request.freeze, [n for n, _ in model.named_parameters()])
    targets = Targets.of(anat, request.stem_init, new_heads=plan.replaces_heads)
    try:
        plan.apply(model)  # inside: a reset_head that fails half-way is undone too
        if checkpoint is not None:
            load_state(
                model, checkpoint, rules=rules, targets=targets, source=source, assign=assign
            )
    except BaseException:
        plan.revert(model)
        raise
    return anat.head
