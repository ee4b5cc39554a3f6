"""``za.adapt``: build or take a model and make it fine-tune-ready, as named steps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt.anatomy import describe
from zooadapt.checkpoint import (
    Targets,
    generic_and,
    head_rows,
    load_state,
    read_state_dict,
    stem_channels,
)
from zooadapt.construct import build_on_meta
from zooadapt.errors import AdaptError, PluginError, ZooAdaptError
from zooadapt.manager import Declared, PluginManager, get_plugin_manager
from zooadapt.names import ModelRef, resolve_name
from zooadapt.surgery import (
    StemInit,
    adapt_conv_weight,
    check_stem,
    default_stem_init,
    head_out_features,
    make_head,
    set_stem_weight,
    set_submodule,
)
from zooadapt.types import Anatomy, Family
from zooadapt.weights import ensure_local, select_weights

__all__ = ["adapt"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def adapt(
    model: str | nn.Module,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem_init: StemInit | None = None,
    pretrained: bool | str | os.PathLike[str] = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Return ``model`` ready to fine-tune: weights loaded, head and stem adapted.

    Args:
        model: A registry name (``"resnet152"``, ``"torchvision/resnet152"``) or a module,
            which is changed in place.
        num_classes: Outputs of every declared head (aux heads too). ``None`` or the
            pretrained count keeps the pretrained head.
        in_chans: Input channels; the stem is rebuilt from the pretrained filters.
        stem_init: ``"sum"`` (default for 1 channel), ``"repeat"`` (default otherwise),
            ``"zeros"``, or a channel map; see :func:`zooadapt.surgery.adapt_conv_weight`.
        pretrained: ``True`` for the zoo's default weights, ``False`` for random
            initialisation, a weights tag (``"IMAGENET1K_V1"``), or a checkpoint path.
            A module argument keeps its own weights unless a path is given.
        device: Where the result lives. ``"meta"`` builds without allocating memory and
            without loading weights.
        dtype: Floating-point dtype of the result.
        family: Force the family by name, or pass a :class:`Family` for an unknown model.
        plugin_manager: Defaults to the shared manager with every installed plugin.
        **model_kwargs: Passed to the zoo's builder.

    Returns:
        The zoo's own module class, changed in place (never a wrapper).

    Raises:
        ZooAdaptError: A subclass naming the model, argument, file or plugin at fault.
    """
    _check_count("num_classes", num_classes)
    _check_count("in_chans", in_chans)
    pm = plugin_manager or get_plugin_manager()
    on_meta = device is not None and torch.device(device).type == "meta"
    module, checkpoint, source = _materialize(model, pretrained, on_meta, model_kwargs, pm)
    declared, anat = describe(module, pm, family)
    if checkpoint is not None:
        num_classes = num_classes or head_rows(checkpoint, anat.head)
        in_chans = in_chans or stem_channels(checkpoint, anat.stem)
    plan = _plan(module, declared.item, anat, num_classes, in_chans, stem_init)
    plan.apply(module)
    if checkpoint is not None:
        try:
            _load_checkpoint(module, checkpoint, declared.item, anat, stem_init, source, pm)
        except BaseException:
            plan.revert(module)
            raise
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    return module


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdaptError(f"{name} must be a positive int, got {value!r}")


# -- step 1: build or take the model -----------------------------------------------------


def _is_path(pretrained: object) -> bool:
    if isinstance(pretrained, os.PathLike):
        return True
    return isinstance(pretrained, str) and (
        os.sep in pretrained
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
        or Path(pretrained).exists()
    )


def _materialize(
    model: str | nn.Module,
    pretrained: bool | str | os.PathLike[str],
    on_meta: bool,
    model_kwargs: dict[str, Any],
    pm: PluginManager,
) -> tuple[nn.Module, dict[str, torch.Tensor] | None, str]:
    """The module, plus the checkpoint to load after adapting (when ``pretrained`` is a path)."""
    checkpoint = None
    source = str(pretrained)
    if _is_path(pretrained) and not on_meta:
        checkpoint = read_state_dict(pretrained)  # type: ignore[arg-type]
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise AdaptError(f"model keyword arguments {sorted(model_kwargs)} need a model name")
        if isinstance(pretrained, str) and not _is_path(pretrained):
            raise AdaptError(
                f"pretrained={pretrained!r} names zoo weights; a module argument takes "
                "True/False or a checkpoint path"
            )
        return model, checkpoint, source
    if not isinstance(model, str):
        raise AdaptError(f"model must be a registry name or nn.Module, got {type(model).__name__}")
    ref = resolve_name(model, pm)
    wants_weights = pretrained is not False and pretrained is not None and not _is_path(pretrained)
    if on_meta:
        return build_on_meta(lambda: _build(ref, None, model_kwargs)), None, source
    if checkpoint is not None or (not wants_weights and ref.tag is None):
        return _build(ref, None, model_kwargs), checkpoint, source
    weights = select_weights(ref, pretrained if wants_weights else True)  # type: ignore[arg-type]
    ensure_local(weights, ref)
    return _build(ref, weights, model_kwargs), None, str(weights.file)


def _build(ref: ModelRef, weights: Any, kwargs: dict[str, Any]) -> nn.Module:
    zoo: Declared[Any] = ref.zoo
    try:
        module = zoo.item.build(ref.arch, weights, **kwargs)
    except ZooAdaptError:
        raise
    except TypeError as err:
        raise AdaptError(f"{ref.qualified} does not accept {sorted(kwargs)}: {err}") from err
    except Exception as err:
        raise PluginError(
            f"plugin {zoo.plugin!r} failed building {ref.qualified!r}: {err!r}"
        ) from err
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"plugin {zoo.plugin!r} built {type(module).__name__} for {ref.qualified!r}"
        )
    return module


# -- step 2: plan the surgery, validating everything before the model changes -------------


@dataclass
class _Plan:
    """Changes computed up front, applied together and revertible."""

    heads: list[tuple[str, nn.Module, nn.Module]] = field(default_factory=list)
    reset_head: Any = None
    stem: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None
    attributes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> None:
        for path, _, new in self.heads:
            set_submodule(model, path, new)
        if self.reset_head is not None:
            self.reset_head(model)
        if self.stem is not None:
            conv, _, new_weight = self.stem
            set_stem_weight(conv, new_weight)
        for name, (_, new_value) in self.attributes.items():
            setattr(model, name, new_value)

    def revert(self, model: nn.Module) -> None:
        for path, old, _ in self.heads:
            set_submodule(model, path, old)
        if self.stem is not None:
            conv, old_weight, _ = self.stem
            set_stem_weight(conv, old_weight)
        for name, (old_value, _) in self.attributes.items():
            setattr(model, name, old_value)


def _plan(
    model: nn.Module,
    family: Family,
    anat: Anatomy,
    num_classes: int | None,
    in_chans: int | None,
    stem_init: StemInit | None,
) -> _Plan:
    plan = _Plan()
    if num_classes is not None:
        _plan_heads(plan, model, family, anat.head, num_classes)
    if in_chans is not None or stem_init is not None:
        _plan_stem(plan, model, family, anat, in_chans, stem_init)
    return plan


def _plan_heads(
    plan: _Plan, model: nn.Module, family: Family, heads: Sequence[str], num_classes: int
) -> None:
    if family.reset_head is not None:
        if any(head_out_features(model.get_submodule(p)) != num_classes for p in heads):
            plan.reset_head = lambda m: family.reset_head(m, num_classes)  # type: ignore[misc]
        return
    for path in heads:
        old = model.get_submodule(path)
        if head_out_features(old) != num_classes:
            plan.heads.append((path, old, make_head(old, num_classes)))
    if plan.heads and isinstance(getattr(model, "num_classes", None), int):
        plan.attributes["num_classes"] = (model.num_classes, num_classes)


def _plan_stem(
    plan: _Plan,
    model: nn.Module,
    family: Family,
    anat: Anatomy,
    in_chans: int | None,
    stem_init: StemInit | None,
) -> None:
    if anat.stem is None:
        raise AdaptError(f"family {family.name!r} declares no stem, so in_chans cannot change")
    conv = check_stem(model.get_submodule(anat.stem), anat.stem)
    base = conv.weight.shape[1]
    target = in_chans or base
    if target == base and stem_init is None:
        return
    with torch.no_grad():
        weight = conv.weight.detach()
        new_weight = adapt_conv_weight(weight, target, stem_init or default_stem_init(target))
    plan.stem = (conv, weight, new_weight)
    if target != base:
        for name, value in family.stem_overrides.items():
            plan.attributes[name] = (getattr(model, name), value)


# -- step 3: load a local checkpoint into the adapted model --------------------------------


def _load_checkpoint(
    model: nn.Module,
    checkpoint: dict[str, torch.Tensor],
    family: Family,
    anat: Anatomy,
    stem_init: StemInit | None,
    source: str,
    pm: PluginManager,
) -> None:
    rules = generic_and(pm.rename_rules(family))
    targets = Targets(heads=anat.head, stem=anat.stem, stem_init=stem_init)
    load_state(model, checkpoint, rules=rules, targets=targets, source=source)
