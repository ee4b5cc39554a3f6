"""Plan head and stem surgery up front, apply it in one go, and undo it on failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zooadapt.errors import AdaptError
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

__all__ = ["Plan", "plan_surgery"]


@dataclass
class Plan:
    """Changes computed up front, applied together and revertible."""

    heads: list[tuple[str, nn.Module, nn.Module]] = field(default_factory=list)
    reset_head: Any = None
    stem: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None
    attributes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> None:
        """Make the planned changes."""
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
        """Undo :meth:`apply`, restoring the original modules and weights."""
        for path, old, _ in self.heads:
            set_submodule(model, path, old)
        if self.stem is not None:
            conv, old_weight, _ = self.stem
            set_stem_weight(conv, old_weight)
        for name, (old_value, _) in self.attributes.items():
            setattr(model, name, old_value)


def plan_surgery(
    model: nn.Module,
    family: Family,
    anat: Anatomy,
    num_classes: int | None,
    in_chans: int | None,
    stem_init: StemInit | None,
) -> Plan:
    """Compute the new heads and stem weight for ``model``, changing nothing yet.

    Raises:
        AdaptError: If the request cannot be carried out (no stem, a bad ``stem_init``).
    """
    plan = Plan()
    if num_classes is not None:
        _plan_heads(plan, model, family, anat.head, num_classes)
    if in_chans is not None or stem_init is not None:
        _plan_stem(plan, model, family, anat, in_chans, stem_init)
    return plan


def _plan_heads(
    plan: Plan, model: nn.Module, family: Family, heads: Sequence[str], num_classes: int
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
    plan: Plan,
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
