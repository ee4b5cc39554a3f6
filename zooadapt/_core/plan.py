"""Plan head and stem surgery up front, apply it in one go, and undo it on failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import call_family
from zooadapt._core.plugins import Declared
from zooadapt._core.surgery import (
    StemInit,
    StemStats,
    adapt_stem,
    check_stem,
    default_stem_init,
    head_out_features,
    is_replaceable_head,
    make_head,
    set_stem_weight,
    set_submodule,
    stem_in_chans,
)
from zooadapt.errors import AdaptError, PluginError, ZooAdaptError
from zooadapt.types import Adaptation, Anatomy, Family, StemLayout

__all__ = [
    "CheckpointStem",
    "Plan",
    "get_attribute",
    "plan_surgery",
    "plan_sync",
    "set_attribute",
]


#: Module attributes that hold the module tree; copied, not shared, by a snapshot.
_TREE = ("_modules", "_parameters", "_buffers")


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Every module's attributes, so that a family's ``reset_head`` can be undone."""
    return [
        (module, {k: dict(v) if k in _TREE else v for k, v in vars(module).items()})
        for module in model.modules()
    ]


def _restore(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for module, attributes in snapshot:
        vars(module).clear()
        vars(module).update({k: dict(v) if k in _TREE else v for k, v in attributes.items()})


_Pair = tuple[torch.Tensor, "torch.Tensor | None"]


def get_attribute(model: nn.Module, path: str) -> Any:
    """The attribute at dotted ``path`` from ``model`` (``config.num_labels``)."""
    value: Any = model
    for part in path.split("."):
        value = getattr(value, part)
    return value


def set_attribute(model: nn.Module, path: str, value: Any) -> None:
    """Set the attribute at dotted ``path`` from ``model``."""
    owner_path, _, name = path.rpartition(".")
    setattr(get_attribute(model, owner_path) if owner_path else model, name, value)


@dataclass(frozen=True)
class CheckpointStem:
    """What a checkpoint holds for one stem: its input channels and whether it has a bias."""

    in_chans: int | None
    bias: bool


@dataclass
class Plan:
    """Changes computed up front, applied together and revertible."""

    heads: list[tuple[str, nn.Module, nn.Module]] = field(default_factory=list)
    reset_head: Any = None
    #: (layer, (old weight, old bias), (new weight, new bias)) per rebuilt stem.
    stems: list[tuple[nn.Module, _Pair, _Pair]] = field(default_factory=list)
    #: dotted attribute path -> (old value, new value), set in order, restored in reverse.
    attributes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    _before_reset: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list)

    @property
    def replaces_heads(self) -> bool:
        """Whether applying the plan gives the model new heads."""
        return bool(self.heads) or self.reset_head is not None

    def apply(self, model: nn.Module) -> None:
        """Make the planned changes."""
        for path, _, new in self.heads:
            set_submodule(model, path, new)
        if self.reset_head is not None:
            self._before_reset = _snapshot(model)
            self.reset_head(model)
        for layer, _, new in self.stems:
            set_stem_weight(layer, *new)
        for path, (_, new_value) in self.attributes.items():
            set_attribute(model, path, new_value)

    def revert(self, model: nn.Module) -> None:
        """Undo :meth:`apply` (also one that failed half-way): original modules and weights."""
        _restore(self._before_reset)
        for path, old, _ in self.heads:
            set_submodule(model, path, old)
        for layer, old, _ in self.stems:
            set_stem_weight(layer, *old)
        for path, (old_value, _) in reversed(self.attributes.items()):
            set_attribute(model, path, old_value)


def plan_surgery(
    model: nn.Module,
    family: Family,
    anat: Anatomy,
    num_classes: int | None,
    in_chans: int | None,
    stem_init: StemInit | None,
    *,
    rows: Sequence[int | None] | None = None,
    stats: StemStats | None = None,
    checkpoint: dict[str, CheckpointStem] | None = None,
) -> Plan:
    """Compute the new heads and stem weight for ``model``, changing nothing yet.

    Args:
        model: The model to change.
        family: Its family.
        anat: Its anatomy.
        num_classes: New class count, or ``None``.
        in_chans: New input channels, or ``None``.
        stem_init: Strategy for the stem's new channels.
        rows: For each new class, the pretrained head row it keeps (``None``: fresh).
        stats: Input statistics a ``sum`` stem is folded with.
        checkpoint: What a checkpoint that will be loaded next holds for each stem: a
            stem it gives at the new channel count is only reshaped (with a bias slot
            when it has one); the loader folds one it gives at another count.

    Raises:
        AdaptError: If the request cannot be carried out (no stem, a bad ``stem_init``).
    """
    plan = Plan()
    if num_classes is not None:
        if not anat.head and family.reset_head is None:
            raise AdaptError(
                f"{type(model).__qualname__} has no classifier head (family {family.name!r} "
                f"declares none), so num_classes={num_classes} cannot be applied; use it as a "
                "feature extractor under your own head, or choose a variant with a classifier"
            )
        if anat.head:
            _plan_heads(plan, model, family, anat.plugin, anat.head, num_classes, rows)
        else:  # a headless model whose family builds one (a MedicalNet ResNet)
            _check_fresh(model, rows)
            plan.reset_head = _reset_head(family, anat.plugin, num_classes, _factory(model))
    if in_chans is not None or stem_init is not None:
        _plan_stem(plan, model, family, anat, in_chans, stem_init, stats, checkpoint)
    return plan


def _plan_heads(
    plan: Plan,
    model: nn.Module,
    family: Family,
    plugin: str,
    heads: Sequence[str],
    num_classes: int,
    rows: Sequence[int | None] | None,
) -> None:
    layers = [model.get_submodule(path) for path in heads]
    if family.reset_head is not None and not all(map(is_replaceable_head, layers)):
        _check_fresh(model, rows)
        plan.reset_head = _reset_head(family, plugin, num_classes, _factory(model))
        return
    for path in heads:
        old = model.get_submodule(path)
        count = head_out_features(old)
        if count != num_classes or (rows is not None and list(rows) != list(range(count))):
            plan.heads.append((path, old, _new_head(old, num_classes, rows)))
    if plan.heads and isinstance(getattr(model, "num_classes", None), int):
        plan.attributes["num_classes"] = (model.num_classes, num_classes)


def _check_fresh(model: nn.Module, rows: Sequence[int | None] | None) -> None:
    """A head that ``reset_head`` builds anew has no pretrained rows to keep."""
    if rows is not None and any(row is not None for row in rows):
        raise AdaptError(f"{type(model).__qualname__} has no pretrained head rows to keep")


def _new_head(old: nn.Module, num_classes: int, rows: Sequence[int | None] | None) -> nn.Module:
    """A fresh head; the rows ``rows`` names are copied from ``old`` (the others stay fresh)."""
    new = make_head(old, num_classes)
    if rows is None:
        return new
    with torch.no_grad():
        for row, source in enumerate(rows):
            if source is None:
                continue
            new.weight[row] = old.weight[source]
            if new.bias is not None and old.bias is not None:
                new.bias[row] = old.bias[source]
    return new


def _factory(model: nn.Module) -> dict[str, Any]:
    first = next(model.parameters(), None)
    return {} if first is None else {"device": first.device, "dtype": first.dtype}


def _reset_head(family: Family, plugin: str, num_classes: int, factory: dict[str, Any]) -> Any:
    """The family's ``reset_head``, with the new heads moved to the model's device/dtype."""

    def reset(model: nn.Module) -> None:
        try:
            family.reset_head(model, num_classes)  # type: ignore[misc]
        except ZooAdaptError:
            raise
        except Exception as err:
            raise PluginError(
                f"plugin {plugin!r} failed in family {family.name!r} (reset_head): {err!r}",
                plugin=plugin,
            ) from err
        for path in family.head_paths(model):
            model.get_submodule(path).to(**factory)

    return reset


def _plan_stem(
    plan: Plan,
    model: nn.Module,
    family: Family,
    anat: Anatomy,
    in_chans: int | None,
    stem_init: StemInit | None,
    stats: StemStats | None,
    checkpoint: dict[str, CheckpointStem] | None,
) -> None:
    if not anat.stems:
        raise AdaptError(
            f"{type(model).__qualname__} has no input layer that zooadapt can adapt (family "
            f"{family.name!r} declares no stem), so in_chans cannot change"
        )
    changed = False
    for path in anat.stems:
        layer = check_stem(model.get_submodule(path), path)
        base = stem_in_chans(layer.weight, anat.stem_layout)
        target = in_chans or base
        if target == base and stem_init is None:
            continue
        saved = checkpoint.get(path) if checkpoint is not None else None
        new = _stem_tensors(layer, target, stem_init, anat.stem_layout, stats, saved)
        plan.stems.append((layer, (layer.weight, layer.bias), new))
        changed = changed or target != base
    if changed:
        for name, value in family.stem_overrides.items():
            plan.attributes[name] = (get_attribute(model, name), value)


def _stem_tensors(
    layer: nn.Module,
    target: int,
    stem_init: StemInit | None,
    layout: StemLayout,
    stats: StemStats | None,
    saved: CheckpointStem | None,
) -> _Pair:
    """The stem's new weight and bias; shaped like a checkpoint's when it gives them."""
    init = stem_init or default_stem_init(target)
    reshape_only = saved is not None and saved.in_chans == target
    with torch.no_grad():
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        new_weight, new_bias = adapt_stem(
            weight, bias, target, init, layout, None if reshape_only else stats
        )
    if reshape_only and saved.bias and new_bias is None:  # type: ignore[union-attr]
        new_bias = torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype)
    return new_weight, new_bias


def plan_sync(
    plan: Plan, model: nn.Module, declared: Declared[Family], adaptation: Adaptation
) -> None:
    """Add to ``plan`` the attributes the family's ``sync`` sets for ``adaptation``.

    Only values that differ from the model's are planned; a path that does not exist is
    a PluginError naming the plugin.
    """
    family = declared.item
    if family.sync is None:
        return
    settings = call_family(declared, "sync", lambda: dict(family.sync(model, adaptation)))
    for path, value in settings.items():
        old = call_family(declared, f"sync path {path!r}", lambda p=path: get_attribute(model, p))
        if path in plan.attributes:
            old = plan.attributes[path][0]
        if old is not value and old != value:
            plan.attributes[path] = (old, value)
