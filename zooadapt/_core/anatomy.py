"""Which family owns a model, and the one description of the model it gives.

:func:`anatomy` is the single place a model's facts are worked out: head(s), stem(s),
freeze groups, class count, input channels, spatial dimensions and default input size.
The first call resolves the family (by class, by ``family=``, or through a given plugin
manager) and records it on the model with the description; later calls, from any public
function, reuse both while the model's parameters keep their names and shapes, and
recompute the description with the same family when they change (``adapt`` does so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from zooadapt._core.checks import assign_groups, check_declared, find
from zooadapt._core.distributed import unwrap
from zooadapt._core.meta import shape_key
from zooadapt._core.plugins import Declared, PluginManager, get_plugin_manager, skip_plugin
from zooadapt._core.surgery import head_out_features, is_replaceable_head, stem_in_chans
from zooadapt.errors import (
    AdaptError,
    AmbiguousFamilyError,
    FamilyNotFoundError,
    PluginError,
    ZooAdaptError,
)
from zooadapt.types import Anatomy, Family

__all__ = [
    "Resolved",
    "anatomy",
    "class_name",
    "describe",
    "family_rank",
    "manager_of",
    "present_heads",
    "select_family",
    "spatial_size",
]

T = TypeVar("T")

EXACT_CLASS, SUBCLASS, PREDICATE, FALLBACK, NO_MATCH = 3, 2, 1, 0, -1
DEFAULT_SIDE = {1: 1024, 2: 224, 3: 96}
_RECORD = "_zooadapt_resolved"


def class_name(cls: type) -> str:
    """Qualified name of a class, as families list it: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def family_rank(family: Family, model: nn.Module) -> int:
    """How specifically ``family`` claims ``model`` (higher wins, -1 for no claim)."""
    names = [class_name(cls) for cls in type(model).__mro__]
    if names[0] in family.classes:
        return EXACT_CLASS
    if any(name in family.classes for name in names[1:]):
        return SUBCLASS
    if family.match is not None and family.match(model):
        return PREDICATE
    return FALLBACK if family.fallback else NO_MATCH


def call_family(declared: Declared[Family], what: str, func: Callable[[], T]) -> T:
    """Run ``func``; a non-zooadapt exception becomes a PluginError naming the plugin."""
    try:
        return func()
    except ZooAdaptError:
        raise
    except Exception as err:
        raise PluginError(
            f"plugin {declared.plugin!r} failed in family {declared.item.name!r} ({what}): {err!r}",
            plugin=declared.plugin,
        ) from err


def select_family(
    model: nn.Module, pm: PluginManager, family: str | Family | None = None
) -> Declared[Family]:
    """Choose the family that owns ``model``: the most specific claim wins.

    Args:
        model: The model instance.
        pm: Plugin manager to ask.
        family: Force a family by name, or pass a :class:`Family` directly.

    Raises:
        FamilyNotFoundError: If no family claims the model, or ``family`` is unknown.
        AmbiguousFamilyError: If two families claim it equally specifically.
    """
    if isinstance(family, Family):
        return Declared(family, "<caller>")
    declared = pm.families()
    if family is not None:
        for entry in declared:
            if entry.item.name == family:
                return entry
        names = ", ".join(sorted(d.item.name for d in declared)) or "none"
        raise FamilyNotFoundError(f"no family named {family!r}; installed families: {names}")
    ranked = [(_rank(d, model), d) for d in declared]
    ranked = [(rank, d) for rank, d in ranked if rank > NO_MATCH]
    if not ranked:
        raise FamilyNotFoundError(_no_family_message(model, declared))
    best = max(rank for rank, _ in ranked)
    winners = [d for rank, d in ranked if rank == best]
    if len(winners) > 1:
        claims = " and ".join(f"family {d.item.name!r} (plugin {d.plugin!r})" for d in winners)
        raise AmbiguousFamilyError(
            f"{claims} claim {type(model).__qualname__} equally; pass family=<name> to choose"
        )
    return winners[0]


def _rank(declared: Declared[Family], model: nn.Module) -> int:
    """How ``declared`` claims ``model``; a family whose ``match`` raises is skipped."""
    try:
        return family_rank(declared.item, model)
    except Exception as err:  # noqa: BLE001 - one broken plugin must not break all
        skip_plugin(
            f"failed in family {declared.item.name!r} (match): {err!r}; the family is skipped",
            declared.plugin,
            err,
        )
        return NO_MATCH


def _no_family_message(model: nn.Module, declared: list[Declared[Family]]) -> str:
    hint = (
        "write a family plugin for it or pass family=Family(...)"
        if declared
        else "no family plugins are installed; did you `pip install -e .`?"
    )
    return f"no family understands {class_name(type(model))}: {hint}"


def present_heads(model: nn.Module, family: Family) -> tuple[str, ...]:
    """Required head paths plus the aux head paths that exist on this instance."""
    aux = tuple(path for path in family.aux_heads if find(model, path) is not None)
    return family.head_paths(model) + aux


@dataclass(frozen=True)
class Resolved:
    """The family resolved for a model, and the description it gave, kept on the model.

    Copies of the model (``copy.deepcopy``) share it; pickling the model drops it.
    """

    declared: Declared[Family]
    pm: PluginManager | None
    anatomy: Anatomy
    key: tuple[Any, ...]

    def __deepcopy__(self, memo: dict[int, Any]) -> Resolved:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_forgotten, ())


def _forgotten() -> None:
    return None


def manager_of(model: nn.Module) -> PluginManager:
    """The plugin manager ``model``'s family was resolved with, else the shared one."""
    record: Resolved | None = unwrap(model).__dict__.get(_RECORD)
    pm = record.pm if record is not None else None
    return pm if pm is not None else get_plugin_manager()


def describe(
    model: nn.Module,
    pm: PluginManager | None = None,
    family: str | Family | None = None,
) -> tuple[Declared[Family], Anatomy]:
    """The owning family (with its plugin) and the anatomy it declares for ``model``.

    Without ``family`` and ``pm``, the family recorded on the model by an earlier call is
    used; otherwise the given ones are resolved and recorded.
    """
    model = unwrap(model)
    record: Resolved | None = model.__dict__.get(_RECORD)
    key = shape_key(model)  # the description holds while names and shapes do
    reuse = record is not None and family is None and (pm is None or pm is record.pm)
    if reuse and record.key == key:  # type: ignore[union-attr]
        return record.declared, record.anatomy  # type: ignore[union-attr]
    if reuse:
        declared, pm = record.declared, record.pm  # type: ignore[union-attr]
    else:
        if pm is None and record is not None:  # a family named anew: the model's manager
            pm = record.pm
        declared = select_family(model, pm or get_plugin_manager(), family)
    anat = _anatomy_of(model, declared)
    model.__dict__[_RECORD] = Resolved(declared, pm, anat, key)  # one atomic store
    return declared, anat


def _anatomy_of(model: nn.Module, declared: Declared[Family]) -> Anatomy:
    fam = declared.item
    heads = call_family(declared, "head", lambda: present_heads(model, fam))
    stems = call_family(declared, "stem", lambda: fam.stem_paths(model))
    layout = call_family(declared, "stem_layout", lambda: fam.stem_layout_of(model))
    patterns = call_family(declared, "groups", lambda: fam.group_patterns(model))
    check_declared(model, fam, declared.plugin, heads, stems, patterns)
    groups = assign_groups(model, patterns, fam.name, declared.plugin)
    stem = stems[0] if stems else None
    dims = call_family(declared, "spatial_dims", lambda: fam.spatial_dims_of(model, stem))
    size = call_family(declared, "input_size", lambda: fam.input_size_of(model))
    return Anatomy(
        family=fam.name,
        plugin=declared.plugin,
        head=heads,
        stem=stem,
        groups=groups,
        stems=stems,
        stem_layout=layout,
        num_classes=_num_classes(model, heads),
        in_chans=_in_chans(model, stem, layout),
        spatial_dims=dims,
        input_size=_input_size(size, dims, declared.plugin),
    )


def _num_classes(model: nn.Module, heads: tuple[str, ...]) -> int | None:
    if not heads:
        return None
    head = model.get_submodule(heads[0])
    return head_out_features(head) if is_replaceable_head(head) else None


def _in_chans(model: nn.Module, stem: str | None, layout: Any) -> int | None:
    if stem is None:
        return None
    weight = getattr(model.get_submodule(stem), "weight", None)
    return stem_in_chans(weight, layout) if weight is not None else None


def _input_size(size: tuple[int, ...] | None, dims: int, plugin: str) -> tuple[int, ...]:
    if size is None:
        return (DEFAULT_SIDE.get(dims, 224),) * dims
    size = tuple(int(v) for v in size)
    if len(size) != dims or any(v < 1 for v in size):
        raise PluginError(
            f"plugin {plugin!r}: input_size {size} does not fit {dims} spatial dimensions",
            plugin=plugin,
        )
    return size


def spatial_size(value: object, dims: int, what: str = "input_size") -> tuple[int, ...] | None:
    """Normalise an input size: ``None``, an int for every dimension, or a tuple of ``dims``.

    Raises:
        AdaptError: If ``value`` is none of these, or not positive.
    """
    if value is None:
        return None
    size = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        isinstance(size, (tuple, list))
        and len(size) == dims
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return tuple(size)
    shape = {2: "(height, width)", 3: "(depth, height, width)"}.get(dims, f"{dims} sizes")
    raise AdaptError(f"{what} must be a positive int or {shape} for this model, got {value!r}")


def anatomy(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> Anatomy:
    """Describe ``model`` as its family plugin declares it.

    The family found (or given) is remembered on the model, so later calls of any
    zooadapt function on it need neither ``family`` nor ``plugin_manager``.

    Args:
        model: A model instance (wrappers such as DDP are looked through).
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.

    Returns:
        The :class:`Anatomy`: family, heads, stems, groups, ``num_classes``, ``in_chans``,
        ``spatial_dims`` and the default ``input_size``.

    Raises:
        FamilyNotFoundError: If no family understands the model.
        PluginError: If the family's declarations do not fit the instance.
    """
    return describe(model, plugin_manager, family)[1]
