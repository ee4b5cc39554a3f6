"""The hooks a zooadapt plugin can implement: the one page plugin authors read.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, registered
through the ``zooadapt`` entry-point group::

    [project.entry-points.zooadapt]
    mynet = "zooadapt_mynet"

Hooks are always called with keyword arguments; an implementation may accept a subset of
them. Collect-all hooks have plural names and return iterables of the dataclasses in
:mod:`zooadapt.types`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from zooadapt.types import Family, RenameRule, Zoo

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("zooadapt")
hookimpl = pluggy.HookimplMarker("zooadapt")


@hookspec
def zooadapt_families() -> Iterable[Family]:
    r"""Declare the architecture families this plugin understands.

    All results are collected; ``Family.name`` must be unique across plugins. The family
    that owns a model is chosen by specificity (exact class, then subclass, then
    ``match``, then a ``fallback`` family), never by plugin order.

    Returns:
        Families with head path(s), stem path and ordered freeze groups.

    Example:
        @hookimpl
        def zooadapt_families():
            yield Family(
                name="mynet",
                classes=("mynet.model.MyNet",),
                head="classifier",
                stem="stem.conv",
                groups={"stem": r"^stem\\.", "body": r"^blocks\\.", "head": r"^classifier\\."},
            )
    """
    raise NotImplementedError


@hookspec
def zooadapt_zoos() -> Iterable[Zoo]:
    """Declare model zoos: named architectures, their builders and pretrained weights.

    All results are collected; ``Zoo.name`` must be unique across plugins.

    Returns:
        Zoos; unqualified model names are looked up in ascending ``Zoo.order``.

    Example:
        @hookimpl
        def zooadapt_zoos():
            yield Zoo(name="mynets", models=lambda: ["mynet_s"], build=build_mynet)
    """
    raise NotImplementedError


@hookspec
def zooadapt_rename_rules(family: str) -> Iterable[RenameRule]:
    r"""Add checkpoint key renames for a family (yours or another plugin's).

    Rules are applied after the generic wrapper prefixes and the family's own
    ``Family.rename_rules``, before the user's rules.

    Args:
        family: Name of the family whose checkpoint is being loaded.

    Returns:
        Rename rules, applied in order.

    Example:
        @hookimpl
        def zooadapt_rename_rules(family):
            if family == "resnet":
                yield RenameRule(r"^backbone\\.", "", name="strip backbone.")
    """
    raise NotImplementedError
