"""Registry names: listing models across zoos and resolving a name to one zoo's model.

An unqualified name is looked up in ascending ``Zoo.order`` (torchvision before timm); a
qualified ``zoo/name`` always wins (the zoo is what precedes the first ``/``, so a
Hugging Face ``hf/org/name`` keeps its slash); timm-style ``name.tag`` selects
pretrained weights.
Nothing is cached: the registry is live, so zoos and models added later are found.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass

from zooadapt._core.plugins import Declared, PluginManager, get_plugin_manager
from zooadapt.errors import ModelNotFoundError, PluginError, ZooAdaptError
from zooadapt.types import Zoo

__all__ = ["ModelRef", "list_models", "resolve_name"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved registry name: the zoo, the architecture and an optional weights tag."""

    zoo: Declared[Zoo]
    arch: str
    tag: str | None = None

    @property
    def qualified(self) -> str:
        """``zoo/arch``."""
        return f"{self.zoo.item.name}/{self.arch}"


def _zoo_architectures(declared: Declared[Zoo]) -> frozenset[str]:
    """The zoo's names, asked afresh every time: a model registered later is found."""
    try:
        return frozenset(declared.item.models())
    except Exception as err:
        raise PluginError(
            f"plugin {declared.plugin!r} failed listing zoo {declared.item.name!r}: {err!r}",
            plugin=declared.plugin,
        ) from err


def list_models(pattern: str = "*", *, plugin_manager: PluginManager | None = None) -> list[str]:
    """Qualified names (``zoo/arch``) of every model of every installed zoo.

    Args:
        pattern: fnmatch pattern, matched against the qualified and the bare name.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        Sorted qualified names, zoo by zoo in lookup order.
    """
    pm = plugin_manager or get_plugin_manager()
    found = []
    for zoo in pm.zoos():
        for arch in sorted(_zoo_architectures(zoo)):
            qualified = f"{zoo.item.name}/{arch}"
            if fnmatch.fnmatchcase(qualified, pattern) or fnmatch.fnmatchcase(arch, pattern):
                found.append(qualified)
    return found


def resolve_name(name: str, pm: PluginManager) -> ModelRef:
    """Resolve a registry name to the zoo that builds it.

    ``zoo/arch`` asks that zoo alone, and its ``Zoo.find`` for names it does not list; an
    existing directory is offered to every zoo's ``find``; any other name is looked up
    in every zoo's list, in ``Zoo.order``.

    Raises:
        ModelNotFoundError: With the closest known names, if nothing matches.
    """
    zoos = pm.zoos()
    prefix, slash, rest = name.partition("/")
    named = [z for z in zoos if slash and z.item.name == prefix]
    if named:
        ref = _listed(named[0], rest) or _found(named[0], rest)
        if ref is None:
            raise ModelNotFoundError(_not_found_message(name, pm))
        return ref
    if os.path.isdir(name):
        for zoo in zoos:
            if ref := _found(zoo, name):
                return ref
    for zoo in zoos:
        if ref := _listed(zoo, name):
            return ref
    if slash:
        known = ", ".join(z.item.name for z in zoos) or "none installed"
        raise ModelNotFoundError(
            f"unknown model {name!r}: no zoo lists it and no zoo is named {prefix!r} "
            f"(zoos: {known})"
        )
    raise ModelNotFoundError(_not_found_message(name, pm))


def _listed(zoo: Declared[Zoo], arch: str) -> ModelRef | None:
    """``arch`` if the zoo lists it, or ``base.tag`` with a listed ``base``."""
    archs = _zoo_architectures(zoo)
    if arch in archs:
        return ModelRef(zoo, arch)
    base, dot, tag = arch.partition(".")
    if dot and base in archs:
        return ModelRef(zoo, base, tag)
    return None


def _found(zoo: Declared[Zoo], name: str) -> ModelRef | None:
    """What the zoo's ``find`` makes of a name it does not list."""
    if zoo.item.find is None:
        return None
    try:
        arch = zoo.item.find(name)
    except ZooAdaptError:
        raise
    except Exception as err:
        raise PluginError(
            f"plugin {zoo.plugin!r} failed finding {name!r} in zoo {zoo.item.name!r}: {err!r}",
            plugin=zoo.plugin,
        ) from err
    return None if arch is None else ModelRef(zoo, arch)


def _not_found_message(name: str, pm: PluginManager) -> str:
    candidates = list_models(plugin_manager=pm)
    if not candidates:
        return f"unknown model {name!r}: no zoo plugins are installed; did you `pip install -e .`?"
    bare: dict[str, list[str]] = {}
    for qualified in candidates:  # zoo by zoo, in lookup order
        bare.setdefault(qualified.rpartition("/")[2], []).append(qualified)
    close = difflib.get_close_matches(name.rpartition("/")[2], list(bare), n=5, cutoff=0.6)
    names = [q for c in close for q in bare[c]][:6]
    hint = f"; did you mean {', '.join(names)}?" if names else ""
    return f"unknown model {name!r}{hint} (`zooadapt list` shows all {len(candidates)})"
