"""Optimizers whose parameter groups follow the model's freeze groups.

Every group carries its real ``lr`` (no ``lr_scale`` that only some schedulers read), only
``requires_grad`` tensors are included, and norm weights, biases and other 1-D tensors get
no weight decay.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zooadapt._core.adapters import is_adapter
from zooadapt._core.anatomy import anatomy
from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt.errors import OptimizerError
from zooadapt.types import Family

__all__ = ["LearningRate", "optimizer", "optimizer_class", "param_groups"]

#: A number for every group, ``(low, high)`` spread from the first trainable group to the
#: head, or a mapping group name -> lr.
LearningRate = float | tuple[float, float] | Mapping[str, float]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def model_groups(
    model: nn.Module,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> dict[str, list[str]]:
    """The model's freeze groups (name -> parameter names), input to output, head last."""
    return anatomy(unwrap(model), family=family, plugin_manager=plugin_manager).groups


def optimizer_class(name_or_class: str | type[torch.optim.Optimizer]) -> type:
    """Resolve ``"adamw"``, ``"SGD"`` or an optimizer class to the class.

    Raises:
        OptimizerError: If ``torch.optim`` has no optimizer of that name (case-insensitive).
    """
    if isinstance(name_or_class, type) and issubclass(name_or_class, torch.optim.Optimizer):
        return name_or_class
    known = {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type)
        and issubclass(cls, torch.optim.Optimizer)
        and cls is not torch.optim.Optimizer
    }
    if isinstance(name_or_class, str) and name_or_class.lower() in known:
        return known[name_or_class.lower()]
    names = ", ".join(sorted(cls.__name__ for cls in known.values()))
    raise OptimizerError(f"unknown optimizer {name_or_class!r}; torch.optim has: {names}")


#: Attribute of an optimizer built by :func:`optimizer`: the settings that
#: :func:`zooadapt.unfreeze` applies to the groups it adds.
SETTINGS = "_zooadapt_settings"


def group_lrs(
    trainable: Sequence[str],
    valid: Sequence[str],
    lr: LearningRate,
    layer_decay: float | None = None,
) -> list[float]:
    """The real learning rate of each trainable group (input to output).

    Args:
        trainable: Names of the groups that get an lr, input to output.
        valid: Every group name of the model (for the checks of a mapping).
        lr: A number, a ``(low, high)`` range spread geometrically from the first
            trainable group (``low``) to the last (``high``), or a mapping group -> lr.
        layer_decay: Multiply the lr of the i-th trainable group counted from the head
            (head = 0) by ``layer_decay ** i``; needs a number ``lr``.

    Raises:
        OptimizerError: If a value is invalid or a trainable group is missing from a mapping.
    """
    count = len(trainable)
    if isinstance(lr, Mapping):
        _check_mapping(lr, trainable, valid)
        lrs = [float(lr[name]) for name in trainable]
    elif isinstance(lr, (tuple, list)):
        lrs = _spread(lr, count)
    elif _is_number(lr):
        lrs = [float(lr)] * count
    else:
        raise OptimizerError(f"lr must be a number, a (low, high) tuple or a dict; got {lr!r}")
    if layer_decay is not None:
        if not _is_number(lr):
            raise OptimizerError("layer_decay needs a single number lr (the head's)")
        if not _is_number(layer_decay) or layer_decay <= 0:
            raise OptimizerError(f"layer_decay must be a positive number, got {layer_decay!r}")
        lrs = [value * layer_decay ** (count - 1 - i) for i, value in enumerate(lrs)]
    bad = [value for value in lrs if not (math.isfinite(value) and value >= 0)]
    if bad:
        raise OptimizerError(f"learning rates must be finite and non-negative, got {bad}")
    return lrs


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_mapping(lr: Mapping[str, float], trainable: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [name for name in lr if name not in valid]
    missing = [name for name in trainable if name not in lr]
    if unknown or missing:
        problem = f"unknown groups {unknown}" if unknown else f"no lr for trainable {missing}"
        raise OptimizerError(f"lr dict: {problem}; groups: {', '.join(valid)}")


def _spread(lr: Sequence[float], count: int) -> list[float]:
    if len(lr) != 2 or not all(_is_number(v) for v in lr):
        raise OptimizerError(f"an lr range is a (low, high) pair of numbers, got {lr!r}")
    low, high = float(lr[0]), float(lr[1])
    if not (0 < low <= high and math.isfinite(high)):
        raise OptimizerError(f"an lr range needs 0 < low <= high, got ({low}, {high})")
    if count == 1:
        return [high]
    ratio = high / low
    inner = [low * ratio ** (k / (count - 1)) for k in range(1, count - 1)]
    return [low, *inner, high]


def no_decay_names(model: nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Parameter names that get no weight decay.

    Norm layers' parameters, biases, any tensor with fewer than two dimensions, and the
    names matched by the ``extra`` regexes (e.g. ``r"pos_embedding|class_token"``).
    """
    patterns = [re.compile(p) for p in extra]
    names = set()
    for module_name, module in unwrap(model).named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if (
                isinstance(module, NORM_TYPES)
                or param_name == "bias"
                or param.ndim <= 1
                or any(p.search(name) for p in patterns)
            ):
                names.add(name)
    return names


def split_group(
    name: str,
    named: Sequence[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    no_decay: set[str],
) -> list[dict[str, Any]]:
    """One optimizer group, or its parts: decayed, ``.no_decay``, and ``.lora``.

    LoRA adapters get a part of their own (decayed like the weights), so that the
    group's base tensors, unfrozen later, join under the group's own name.
    """
    adapters = [p for n, p in named if is_adapter(n)]
    base = [(n, p) for n, p in named if not is_adapter(n)]
    if weight_decay <= 0:
        parts = [(name, [p for _, p in base], 0.0), (f"{name}.lora", adapters, 0.0)]
    else:
        decay = [p for n, p in base if n not in no_decay]
        skip = [p for n, p in base if n in no_decay]
        parts = [
            (name, decay, weight_decay),
            (f"{name}.no_decay", skip, 0.0),
            (f"{name}.lora", adapters, weight_decay),
        ]
    return [
        {"name": part, "params": params, "lr": lr, "weight_decay": wd}
        for part, params, wd in parts
        if params
    ]


def build_groups(
    model: nn.Module,
    groups: Mapping[str, Sequence[str]],
    names: Iterable[str],
    *,
    lr: LearningRate,
    weight_decay: float,
    layer_decay: float | None = None,
    no_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer groups for the parameters ``names``, one (or two) per freeze group.

    Raises:
        OptimizerError: If ``names`` is empty or a learning rate or weight decay is invalid.
    """
    if not _is_number(weight_decay) or weight_decay < 0:
        raise OptimizerError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    wanted = set(names)
    params = dict(unwrap(model).named_parameters())
    members = {
        group: [(n, params[n]) for n in param_names if n in wanted]
        for group, param_names in groups.items()
    }
    members = {group: named for group, named in members.items() if named}
    if not members:
        raise OptimizerError("no trainable parameters: every parameter is frozen")
    lrs = group_lrs(list(members), list(groups), lr, layer_decay)
    skip = no_decay_names(model, no_decay) if weight_decay > 0 else set()
    out = []
    for (group, named), group_lr in zip(members.items(), lrs, strict=True):
        out.extend(split_group(group, named, group_lr, float(weight_decay), skip))
    return out


def param_groups(
    model: nn.Module,
    *,
    lr: LearningRate,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
    no_decay: Iterable[str] = (),
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for any ``torch.optim`` optimizer, named after the freeze groups.

    Only tensors with ``requires_grad`` are included. Each group has a ``"name"`` (the
    freeze group), its real ``"lr"`` and ``"weight_decay"``. With ``weight_decay > 0``,
    a group is split into ``name`` (decayed) and ``name + ".no_decay"`` (norm weights,
    biases, any 1-D tensor, and ``no_decay`` matches). LoRA adapters are the part
    ``name + ".lora"`` (decayed); empty parts are left out.

    Args:
        model: A model (wrappers such as DDP are looked through).
        lr: A number for every group; a ``(low, high)`` range spread geometrically from the
            first trainable group (``low``, exactly) to the head (``high``, exactly); or a
            dict group name -> lr that names every trainable group.
        weight_decay: Decay of the decayed parts.
        layer_decay: Group i, counting trainable groups from the head (= 0), gets
            ``lr * layer_decay ** i``, written into its ``"lr"``. Needs a number ``lr``.
        no_decay: Extra parameter-name regexes that get no weight decay.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        A list of dicts, input to output, ready for ``torch.optim.SGD(groups, ...)``.

    Raises:
        OptimizerError: If nothing is trainable or a learning rate is invalid.

    Example:
        >>> za.freeze(model, "layer2")
        >>> groups = za.param_groups(model, lr=(1e-5, 1e-3), weight_decay=0.05)
        >>> [g["name"] for g in groups][:2]
        ['layer3', 'layer3.no_decay']
    """
    groups = model_groups(model, family, plugin_manager)
    trainable = [n for n, p in unwrap(model).named_parameters() if p.requires_grad]
    return build_groups(
        model,
        groups,
        trainable,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        no_decay=no_decay,
    )


def _default_weight_decay(cls: type) -> float | None:
    """The class's own ``weight_decay`` default, or ``None`` if it takes none."""
    try:
        parameter = inspect.signature(cls).parameters.get("weight_decay")
    except (TypeError, ValueError):
        return 0.0
    if parameter is None:
        return None
    default = parameter.default
    return float(default) if _is_number(default) else 0.0


def optimizer(
    model: nn.Module,
    opt: str | type[torch.optim.Optimizer] = "adamw",
    *,
    lr: LearningRate,
    weight_decay: float | None = None,
    layer_decay: float | None = None,
    no_decay: Iterable[str] = (),
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build an optimizer over the trainable parameters, one named group per freeze group.

    Args:
        model: A model (wrappers such as DDP are looked through).
        opt: A ``torch.optim`` class or its name, case-insensitive (``"adamw"``,
            ``"SGD"``); everywhere in zooadapt ``opt`` names an optimizer class and
            ``optimizer`` is an optimizer instance.
        lr: As in :func:`param_groups`. The optimizer's default lr (used by
            :func:`zooadapt.unfreeze` for new groups when it gets no ``lr``) is the head's.
        weight_decay: ``None`` uses the optimizer class's own default (AdamW: 0.01,
            SGD: 0). It also becomes the optimizer's default.
        layer_decay: As in :func:`param_groups`.
        no_decay: Extra parameter-name regexes that get no weight decay.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.
        **kwargs: Passed to the optimizer class (``momentum=0.9``, ``betas=...``).

    Returns:
        The optimizer; ``[g["name"] for g in opt.param_groups]`` lists its groups.

    Raises:
        OptimizerError: If the optimizer is unknown, nothing is trainable, a learning rate is
            invalid, or the class takes no weight decay but one was asked for.

    Example:
        >>> opt = za.optimizer(model, "sgd", lr=0.01, layer_decay=0.7, momentum=0.9)
    """
    cls = optimizer_class(opt)
    default = _default_weight_decay(cls)
    decay = (default or 0.0) if weight_decay is None else weight_decay
    if default is None and decay:
        raise OptimizerError(f"{cls.__name__} takes no weight_decay, got {decay}")
    groups = param_groups(
        model,
        lr=lr,
        weight_decay=decay,
        layer_decay=layer_decay,
        no_decay=no_decay,
        family=family,
        plugin_manager=plugin_manager,
    )
    if default is not None:
        kwargs["weight_decay"] = decay
    built = cls(groups, lr=groups[-1]["lr"], **kwargs)
    built.__dict__[SETTINGS] = {"no_decay": tuple(no_decay), "layer_decay": layer_decay}
    return built


def add_groups(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    groups: Mapping[str, Sequence[str]],
    names: Sequence[str],
    *,
    lr: LearningRate | None = None,
) -> list[dict[str, Any]]:
    """Build (without adding) the groups that put parameters ``names`` into ``optimizer``.

    Weight decay and the no-decay split follow ``optimizer.defaults["weight_decay"]``
    and the ``no_decay`` regexes :func:`optimizer` was given. ``lr=None`` uses
    ``optimizer.defaults["lr"]`` (the head's), scaled by :func:`optimizer`'s
    ``layer_decay`` for the group's depth below the head once ``names`` train too.
    """
    if not names:
        return []
    settings = optimizer.__dict__.get(SETTINGS, {})
    decay = optimizer.defaults.get("weight_decay", 0.0)
    decay = float(decay) if _is_number(decay) else 0.0
    rate = optimizer.defaults["lr"] if lr is None else lr
    if isinstance(rate, torch.Tensor):
        rate = float(rate)
    if lr is None and settings.get("layer_decay") is not None:
        rate = _decayed(model, groups, names, float(rate), settings["layer_decay"])
    no_decay = settings.get("no_decay", ())
    return build_groups(model, groups, names, lr=rate, weight_decay=decay, no_decay=no_decay)


def _decayed(
    model: nn.Module,
    groups: Mapping[str, Sequence[str]],
    names: Sequence[str],
    head_lr: float,
    layer_decay: float,
) -> dict[str, float]:
    """Learning rates of the groups of ``names`` by depth below the head, as ``optimizer``."""
    new = set(names)
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad} | new
    order = [g for g, members in groups.items() if any(n in trainable for n in members)]
    rates = group_lrs(order, list(groups), head_lr, layer_decay)
    return {
        g: rate for g, rate in zip(order, rates, strict=True) if any(n in new for n in groups[g])
    }


def foreign_tensors(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """How many tensors ``optimizer`` holds that are not parameters of ``model``."""
    own = {id(p) for p in unwrap(model).parameters()}
    return sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)


def held_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    """Identities of every tensor ``optimizer`` holds."""
    return {id(p) for g in optimizer.param_groups for p in g["params"]}
