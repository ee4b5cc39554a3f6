"""Checking a whole plugin: ``check_plugin`` and ``plugin_report``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import select_family as _select_family
from zooadapt._core.meta import build_on_meta
from zooadapt._core.plugins import PluginManager, make_plugin_manager, strict_plugins
from zooadapt.errors import ZooAdaptError
from zooadapt.testing._family import family_report
from zooadapt.testing._report import (
    _FAILED,
    DEFAULT_INPUT,
    ConformanceReport,
    ModelSource,
    Sample,
    _attempt,
    _names,
)
from zooadapt.types import Family, Weights, Zoo

# -- checking a whole plugin ---------------------------------------------------------------


def check_plugin(
    plugin: object,
    models: Mapping[str, ModelSource | Sample | Sequence[ModelSource | Sample]] | None = None,
    *,
    zoo_models: int | Iterable[str] = 2,
    input_shape: tuple[int, ...] = DEFAULT_INPUT,
    num_classes: int = 3,
    in_chans: int | None = 1,
    device: str | torch.device | None = None,
) -> ConformanceReport:
    """Check a plugin on its own: its hooks, each zoo, and each family on its models.

    The plugin is registered alone with :func:`zooadapt.make_plugin_manager`. Each
    declared zoo must list models (a zoo with ``Zoo.find`` may list none: a hub lists what
    is cached), build its first ``zoo_models`` models (or the ones named) on the meta
    device and describe their weights consistently. Each declared
    family is checked with :func:`check_family` on the models given for it in ``models``,
    or else on a model of the plugin's zoos that it owns; a family left without a model is
    a problem.

    Args:
        plugin: The plugin module or object.
        models: Family name -> a model, a factory, a :class:`Sample`, or a list of them.
        zoo_models: How many models of each zoo to build, or the names to build.
        input_shape: Default ``(N, C, H, W)`` input for the families' models.
        num_classes: Classes of the new heads.
        in_chans: Input channels of the adapted stems; ``None`` keeps them.
        device: Default device for the families' models (``"meta"`` to save memory).

    Returns:
        The :class:`ConformanceReport`, if no problem was found.

    Raises:
        ConformanceError: Listing every problem found.

    Example:
        >>> check_plugin(zooadapt_tinynet, {"tinynet": zooadapt_tinynet.TinyNet})
    """
    return plugin_report(
        plugin,
        models,
        zoo_models=zoo_models,
        input_shape=input_shape,
        num_classes=num_classes,
        in_chans=in_chans,
        device=device,
    ).raise_if_failed()


@strict_plugins()  # the kit reports a broken plugin instead of skipping it
def plugin_report(
    plugin: object,
    models: Mapping[str, ModelSource | Sample | Sequence[ModelSource | Sample]] | None = None,
    *,
    zoo_models: int | Iterable[str] = 2,
    input_shape: tuple[int, ...] = DEFAULT_INPUT,
    num_classes: int = 3,
    in_chans: int | None = 1,
    device: str | torch.device | None = None,
) -> ConformanceReport:
    """Run the checks of :func:`check_plugin` and return the report without raising."""
    report = ConformanceReport(f"plugin {_plugin_label(plugin)!r}")
    pm = _register(plugin, report)
    if pm is None:
        return report
    report.subject = f"plugin {pm.get_name(plugin)!r}"
    families = _attempt(report, "plugin", "zooadapt_families", lambda: _declared(pm.families))
    zoos = _attempt(report, "plugin", "zooadapt_zoos", lambda: _declared(pm.zoos))
    if families is _FAILED or zoos is _FAILED:
        return report
    samples = _samples(models or {}, families, report)
    defaults = Sample(model=nn.Identity(), input_shape=input_shape, device=device)
    zoo_built = _check_zoos(zoos, zoo_models, pm, report)
    for name in families:
        cases = samples.get(name) or zoo_built.get(name, [])
        if not cases:
            report.add(
                "plugin",
                f"family {name!r} was not checked: give a model for it, e.g. "
                f"check_plugin(plugin, {{{name!r}: MyNet}})",
            )
        for case in cases:
            options = _options(case, defaults, num_classes, in_chans)
            report.merge(family_report(name, case.model, plugin_manager=pm, **options))
    return report


def _plugin_label(plugin: object) -> str:
    return getattr(plugin, "__name__", type(plugin).__name__)


def _register(plugin: object, report: ConformanceReport) -> PluginManager | None:
    try:
        pm = make_plugin_manager(plugin)
    except ZooAdaptError as err:
        report.add("plugin", f"registering the plugin failed: {err}")
        return None
    if not pm.get_hookcallers(plugin):
        report.add(
            "plugin",
            "the plugin implements no zooadapt hook: decorate zooadapt_families, "
            "zooadapt_zoos or zooadapt_rename_rules with @zooadapt.hookimpl",
        )
    return pm


def _declared(collect: Callable[[], Sequence[Any]]) -> dict[str, Any]:
    """Name -> item of what the plugin declares (families or zoos)."""
    return {entry.item.name: entry.item for entry in collect()}


def _samples(
    models: Mapping[str, Any], families: Mapping[str, Family], report: ConformanceReport
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {}
    for name, given in models.items():
        if name not in families:
            declared = ", ".join(sorted(families)) or "none"
            report.add(
                "plugin",
                f"a model was given for family {name!r}, which the plugin does not declare; "
                f"it declares: {declared}",
            )
            continue
        items = list(given) if isinstance(given, (list, tuple)) else [given]
        samples[name] = [item if isinstance(item, Sample) else Sample(item) for item in items]
    return samples


def _options(
    case: Sample, defaults: Sample, num_classes: int, in_chans: int | None
) -> dict[str, Any]:
    return {
        "input_shape": case.input_shape or defaults.input_shape,
        "device": case.device if case.device is not None else defaults.device,
        "rules_checkpoint": case.rules_checkpoint,
        "num_classes": num_classes,
        "in_chans": in_chans,
    }


def _check_zoos(
    zoos: Mapping[str, Zoo],
    selection: int | Iterable[str],
    pm: PluginManager,
    report: ConformanceReport,
) -> dict[str, list[Sample]]:
    """Check every zoo; returns family name -> a zoo-built model it owns (one per family)."""
    wanted = None if isinstance(selection, int) else {_arch(n) for n in selection}
    owned: dict[str, list[Sample]] = {}
    found: set[str] = set()
    for zoo in zoos.values():
        names = _zoo_names(zoo, report)
        chosen = names[:selection] if wanted is None else [n for n in names if n in wanted]
        found.update(chosen)
        for arch in chosen:
            model = _check_zoo_model(zoo, arch, report)
            if model is None:
                continue
            owner = _owner(model, pm)
            if owner is None:
                report.notes.append(f"no family of the plugin owns {zoo.name}/{arch}")
            elif owner not in owned:
                owned[owner] = [Sample(model, device="meta")]
    for arch in sorted((wanted or set()) - found):
        report.add("zoo", f"no zoo of the plugin lists the model {arch!r}")
    return owned


def _arch(name: str) -> str:
    return name.rpartition("/")[2]


def _zoo_names(zoo: Zoo, report: ConformanceReport) -> list[str]:
    names = _attempt(report, "zoo", f"zoo {zoo.name!r}'s models()", lambda: list(zoo.models()))
    if names is _FAILED:
        return []
    if not names and zoo.find is None:
        report.add("zoo", f"zoo {zoo.name!r} lists no models")
    elif not names:  # a hub zoo lists what is cached, which may be nothing
        report.notes.append(f"zoo {zoo.name!r} lists no models; none checked")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        report.add("zoo", f"zoo {zoo.name!r} lists {_names(repeated)} more than once")
    bad = [n for n in names if not isinstance(n, str) or not n or n.startswith("/")]
    if bad:
        report.add("zoo", f"zoo {zoo.name!r} lists invalid model names {_names(map(str, bad))}")
    return [n for n in names if n not in bad]


def _check_zoo_model(zoo: Zoo, arch: str, report: ConformanceReport) -> nn.Module | None:
    qualified = f"{zoo.name}/{arch}"
    model = _attempt(
        report,
        "zoo",
        f"building {qualified!r} on the meta device",
        lambda: build_on_meta(lambda: zoo.build(arch, None)),
    )
    if model is _FAILED:
        return None
    if not isinstance(model, nn.Module):
        report.add("zoo", f"zoo {zoo.name!r} built {type(model).__name__} for {arch!r}")
        return None
    weights = _attempt(
        report, "zoo", f"zoo {zoo.name!r}'s weights({arch!r})", lambda: list(zoo.weights(arch))
    )
    if weights is not _FAILED:
        _check_weights(qualified, weights, report)
    return model


def _check_weights(qualified: str, weights: list[Any], report: ConformanceReport) -> None:
    for entry in weights:
        if not isinstance(entry, Weights):
            report.add("zoo", f"weights of {qualified!r} hold {type(entry).__name__}, not Weights")
            return
        if entry.model != qualified:
            report.add(
                "zoo", f"weights {entry.tag!r} of {qualified!r} name the model {entry.model!r}"
            )
    tags = [w.tag for w in weights]
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        report.add("zoo", f"weights of {qualified!r} repeat the tags {_names(repeated)}")
    defaults = [w.tag for w in weights if w.default]
    if len(defaults) > 1:
        report.add("zoo", f"weights of {qualified!r} have several defaults: {_names(defaults)}")


def _owner(model: nn.Module, pm: PluginManager) -> str | None:
    try:
        return _select_family(model, pm).item.name
    except ZooAdaptError:
        return None
