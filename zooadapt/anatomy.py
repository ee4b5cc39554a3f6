"""Which family owns a model, and what that family says about the instance."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from zooadapt.errors import (
    AmbiguousFamilyError,
    FamilyNotFoundError,
    PluginError,
    ZooAdaptError,
)
from zooadapt.manager import Declared, PluginManager, get_plugin_manager
from zooadapt.types import Anatomy, Family
from zooadapt.wrappers import unwrap

__all__ = ["anatomy", "class_name", "describe", "family_rank", "select_family"]

T = TypeVar("T")

EXACT_CLASS, SUBCLASS, PREDICATE, FALLBACK, NO_MATCH = 3, 2, 1, 0, -1


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


def _call(declared: Declared[Family], what: str, func: Callable[[], T]) -> T:
    """Run ``func``; a non-zooadapt exception becomes a PluginError naming the plugin."""
    try:
        return func()
    except ZooAdaptError:
        raise
    except Exception as err:
        raise PluginError(
            f"plugin {declared.plugin!r} failed in family {declared.item.name!r} ({what}): {err!r}"
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
    ranked = [(_call(d, "match", lambda d=d: family_rank(d.item, model)), d) for d in declared]
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


def _no_family_message(model: nn.Module, declared: list[Declared[Family]]) -> str:
    hint = (
        "write a family plugin for it or pass family=Family(...)"
        if declared
        else "no family plugins are installed; did you `pip install -e .`?"
    )
    return f"no family understands {class_name(type(model))}: {hint}"


def assign_groups(
    model: nn.Module, patterns: tuple[tuple[str, str], ...], owner: str
) -> dict[str, list[str]]:
    """Map each parameter name to the one group whose regex it matches.

    Raises:
        PluginError: If a parameter matches no group or several (the family is wrong).
    """
    groups: dict[str, list[str]] = {name: [] for name, _ in patterns}
    compiled = [(name, re.compile(pattern)) for name, pattern in patterns]
    for param_name, _ in model.named_parameters():
        hits = [name for name, regex in compiled if regex.search(param_name)]
        if len(hits) != 1:
            problem = "matches no group" if not hits else f"matches groups {hits}"
            raise PluginError(
                f"{owner}: parameter {param_name!r} of {type(model).__qualname__} {problem}; "
                f"groups: {dict(patterns)}"
            )
        groups[hits[0]].append(param_name)
    return groups


def present_heads(model: nn.Module, family: Family) -> tuple[str, ...]:
    """Required head paths plus the aux head paths that exist on this instance."""
    aux = tuple(path for path in family.aux_heads if _find(model, path) is not None)
    return family.head_paths(model) + aux


def _find(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def describe(
    model: nn.Module, pm: PluginManager, family: str | Family | None = None
) -> tuple[Declared[Family], Anatomy]:
    """The owning family (with its plugin) and the anatomy it declares for ``model``."""
    model = unwrap(model)
    declared = select_family(model, pm, family)
    fam = declared.item
    owner = f"family {fam.name!r} (plugin {declared.plugin!r})"
    heads = _call(declared, "head", lambda: present_heads(model, fam))
    stems = _call(declared, "stem", lambda: fam.stem_paths(model))
    layout = _call(declared, "stem_layout", lambda: fam.stem_layout_of(model))
    for path in (*heads, *stems):
        if _find(model, path) is None:
            raise PluginError(f"{owner}: module path {path!r} does not exist in the model")
    patterns = _call(declared, "groups", lambda: fam.group_patterns(model))
    groups = assign_groups(model, patterns, owner)
    stem = stems[0] if stems else None
    return declared, Anatomy(fam.name, declared.plugin, heads, stem, groups, stems, layout)


def anatomy(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> Anatomy:
    """Describe ``model`` as its family plugin declares it.

    Args:
        model: A model instance.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        The :class:`Anatomy`: family, plugin, head paths, stem path and freeze groups.

    Raises:
        FamilyNotFoundError: If no family understands the model.
        PluginError: If the family's declarations do not fit the instance.
    """
    return describe(model, plugin_manager or get_plugin_manager(), family)[1]
