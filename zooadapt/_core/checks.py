"""Validation of what a family declares for a model, in one place.

:func:`zooadapt._core.anatomy.describe` runs these before it describes a model (so before
any change), and the conformance kit in :mod:`zooadapt.testing` reports with the same code.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from torch import nn

from zooadapt._core.surgery import is_replaceable_head
from zooadapt.errors import PluginError
from zooadapt.types import Family

__all__ = [
    "assign_groups",
    "check_declared",
    "declared_problems",
    "duplicate_groups",
    "find",
    "group_problems",
    "head_problems",
]


def find(model: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path``, or ``None``."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def declared_problems(
    model: nn.Module,
    family: Family,
    heads: Sequence[str],
    stems: Sequence[str],
    patterns: Sequence[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Every ``(check, message)`` problem with the paths and group names a family declares."""
    problems: list[tuple[str, str]] = []
    for path in (*heads, *stems):
        if find(model, path) is None:
            kind = "head" if path in heads else "stem"
            problems.append((kind, f"module path {path!r} does not exist in the model"))
    for path in heads:
        problems += [("head", m) for m in head_problems(model, family, path)]
    problems += [("groups", m) for m in duplicate_groups(patterns)]
    return problems


def duplicate_groups(patterns: Sequence[tuple[str, str]]) -> list[str]:
    """One message per group name declared more than once."""
    counts = Counter(name for name, _ in patterns)
    return [
        f"group name {name!r} is declared {count} times"
        for name, count in sorted(counts.items())
        if count > 1
    ]


def head_problems(model: nn.Module, family: Family, path: str) -> list[str]:
    """Why the head at ``path`` cannot be replaced (empty if it can, or does not exist)."""
    layer = find(model, path)
    if layer is None or is_replaceable_head(layer):
        return []
    if isinstance(layer, nn.Identity):
        if family.reset_head is not None:
            return []
        return [
            f"head {path!r} is an nn.Identity (a headless model) and the family declares no "
            "reset_head to build one; declare reset_head, or point head at a real layer"
        ]
    if family.reset_head is not None:
        return []
    return [
        f"head {path!r} is a {type(layer).__name__}; zooadapt replaces nn.Linear and 1x1 "
        "nn.Conv2d heads: point head at that layer, or declare reset_head"
    ]


def check_declared(
    model: nn.Module,
    family: Family,
    plugin: str,
    heads: Sequence[str],
    stems: Sequence[str],
    patterns: Sequence[tuple[str, str]],
) -> None:
    """Raise one :class:`PluginError` listing every problem :func:`declared_problems` finds."""
    problems = declared_problems(model, family, heads, stems, patterns)
    if problems:
        listed = "; ".join(message for _, message in problems)
        owner = f"family {family.name!r} (plugin {plugin!r})"
        raise PluginError(
            f"{owner} does not fit {type(model).__qualname__}: {listed}", plugin=plugin
        )


def group_problems(
    model: nn.Module, patterns: Sequence[tuple[str, str]]
) -> tuple[dict[str, list[str]], list[str]]:
    """Assign every parameter to the one group whose regex it matches.

    Returns:
        The groups (name -> parameter names) and one message per parameter that matches
        no group or several.
    """
    groups: dict[str, list[str]] = {name: [] for name, _ in patterns}
    compiled = [(name, re.compile(pattern)) for name, pattern in patterns]
    problems = []
    for param_name, _ in model.named_parameters():
        hits = [name for name, regex in compiled if regex.search(param_name)]
        if len(hits) == 1:
            groups[hits[0]].append(param_name)
        else:
            problem = "matches no group" if not hits else f"matches groups {hits}"
            problems.append(f"parameter {param_name!r} {problem}")
    return groups, problems


def assign_groups(
    model: nn.Module, patterns: Sequence[tuple[str, str]], family: str, plugin: str
) -> dict[str, list[str]]:
    """Map each parameter name to the one group whose regex it matches.

    Raises:
        PluginError: If a parameter matches no group or several (the family is wrong).
    """
    groups, problems = group_problems(model, patterns)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PluginError(
            f"family {family!r} (plugin {plugin!r}): {problems[0]} of "
            f"{type(model).__qualname__}{more}; groups: {dict(patterns)}",
            plugin=plugin,
        )
    return groups
