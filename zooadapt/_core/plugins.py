"""The plugin manager: entry-point discovery and a typed facade over the hooks.

Core code never calls ``pm.hook.*``; it calls :meth:`PluginManager.families`,
:meth:`PluginManager.zoos` and :meth:`PluginManager.rename_rules`, which call each hook
implementation themselves so that a failure is reported with the plugin's name.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

import zooadapt.hookspecs as hookspecs
from zooadapt.errors import PluginError, PluginWarning
from zooadapt.types import Family, RenameRule, Zoo

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "Declared",
    "FailedPlugin",
    "PluginManager",
    "get_plugin_manager",
    "make_plugin_manager",
    "skip_plugin",
    "strict_plugins",
]

PROJECT = "zooadapt"
T = TypeVar("T")


@dataclass(frozen=True)
class Declared(Generic[T]):
    """Something a plugin declared, with the name of the plugin that declared it."""

    item: T
    plugin: str


@dataclass(frozen=True)
class FailedPlugin:
    """An entry-point plugin that could not be loaded, and why."""

    name: str
    dist: str
    error: str


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable, "").strip()
    return {name.strip() for name in value.split(",") if name.strip()} if value else None


_FORCE_STRICT: contextvars.ContextVar[bool] = contextvars.ContextVar("strict", default=False)


def _strict() -> bool:
    if _FORCE_STRICT.get():
        return True
    return os.environ.get("ZOOADAPT_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


@contextlib.contextmanager
def strict_plugins() -> Iterator[None]:
    """Within the block, a broken plugin raises as with ``ZOOADAPT_STRICT_PLUGINS=1``."""
    token = _FORCE_STRICT.set(True)
    try:
        yield
    finally:
        _FORCE_STRICT.reset(token)


def _dist_label(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name}=={dist.version}" if dist is not None else "unknown distribution"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with zooadapt's hookspecs, safe loading and a typed facade."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.failed: list[FailedPlugin] = []
        self.distributions: dict[str, str] = {}

    # -- registration ----------------------------------------------------------------

    def add(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin`` and validate its hooks at once.

        Args:
            plugin: A module or object with ``@hookimpl`` functions.
            name: Plugin name; defaults to the module's name.

        Returns:
            The name the plugin was registered under.

        Raises:
            PluginError: If a hook is misspelled or has arguments no hookspec offers.
        """
        if self.is_registered(plugin) or (name is not None and self.has_plugin(name)):
            raise PluginError(f"plugin {name or plugin!r} is already registered", plugin=name)
        try:
            registered = self.register(plugin, name=name)
            self.check_pending()
        except (pluggy.PluginValidationError, ValueError) as err:
            if self.is_registered(plugin):
                self.unregister(plugin)
            raise PluginError(f"plugin {name or plugin!r} is invalid: {err}", plugin=name) from err
        if registered is None:
            raise PluginError(
                f"plugin {name!r} is blocked (ZOOADAPT_DISABLE_PLUGINS or ZOOADAPT_PLUGINS)",
                plugin=name,
            )
        return registered

    def load_entrypoints(self) -> None:
        """Load every plugin of the ``zooadapt`` entry-point group, sorted by name.

        ``ZOOADAPT_PLUGINS=a,b`` loads only the named plugins and
        ``ZOOADAPT_DISABLE_PLUGINS=a,b`` skips those; both apply to built-in and
        third-party plugins alike. A plugin that fails to import or validate is skipped
        with a :class:`PluginWarning` naming it, unless ``ZOOADAPT_STRICT_PLUGINS=1``.
        Loading again skips plugins already registered.
        """
        allowed = _env_names("ZOOADAPT_PLUGINS")
        blocked = _env_names("ZOOADAPT_DISABLE_PLUGINS") or set()
        seen = {failure.name for failure in self.failed}
        for ep in _entry_points():
            if ep.name in blocked or (allowed and ep.name not in allowed):
                if not self.is_blocked(ep.name):
                    self.set_blocked(ep.name)  # pluggy's own block: later adds are refused
                continue
            if ep.name in seen or self.has_plugin(ep.name):
                continue
            seen.add(ep.name)
            self._load_entrypoint(ep)

    def _load_entrypoint(self, ep: EntryPoint) -> None:
        dist = _dist_label(ep)
        try:
            self.add(ep.load(), name=ep.name)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one broken plugin must not break all
            message = f"zooadapt: skipping plugin {ep.name!r} ({dist}): {err!r}"
            if _strict():
                raise PluginError(message, plugin=ep.name) from err
            warnings.warn(message, PluginWarning, stacklevel=3)
            self.failed.append(FailedPlugin(ep.name, dist, repr(err)))
            return
        self.distributions[ep.name] = dist

    # -- typed facade ----------------------------------------------------------------

    def _collect(self, hook_name: str, kind: type[T], **kwargs: Any) -> list[Declared[T]]:
        hook = getattr(self.hook, hook_name)
        results: list[Declared[T]] = []
        for impl in reversed(hook.get_hookimpls()):  # pluggy's call order
            call_kwargs = {key: kwargs[key] for key in impl.argnames}
            try:
                items = list(impl.function(**call_kwargs) or ())
            except Exception as err:  # noqa: BLE001 - one broken plugin must not break all
                skip_plugin(f"failed in {hook_name}: {err!r}", impl.plugin_name, err)
                continue
            for item in items:
                if isinstance(item, kind):
                    results.append(Declared(item, impl.plugin_name))
                else:
                    skip_plugin(
                        f"returned {type(item).__name__} from {hook_name}, expected "
                        f"{kind.__name__}; that item is skipped",
                        impl.plugin_name,
                    )
        return results

    def families(self) -> list[Declared[Family]]:
        """Every declared family with its plugin; names are unique.

        Raises:
            PluginError: If a plugin fails, or two plugins declare the same family name.
        """
        return _unique(self._collect("zooadapt_families", Family), "family", self._builtin())

    def zoos(self) -> list[Declared[Zoo]]:
        """Every declared zoo with its plugin, in lookup order (``Zoo.order``, then name)."""
        zoos = _unique(self._collect("zooadapt_zoos", Zoo), "zoo", self._builtin())
        return sorted(zoos, key=lambda d: (d.item.order, d.item.name))

    def rename_rules(self, family: Family, model: nn.Module | None = None) -> list[RenameRule]:
        """The family's own rename rules, then those other plugins add for it.

        ``model`` is needed for a family whose rules are a function of the model.
        """
        extra = self._collect("zooadapt_rename_rules", RenameRule, family=family.name)
        return [*family.rename_rules_of(model), *(d.item for d in extra)]

    def _builtin(self) -> set[str]:
        """Names of the plugins that come with zooadapt itself."""
        return {name for name, dist in self.distributions.items() if dist.startswith("zooadapt==")}

    def plugin_info(self) -> list[dict[str, Any]]:
        """Describe every registered plugin (name, distribution, hooks) for display."""
        families = {d.item.name: d.plugin for d in self.families()}
        zoos = {d.item.name: d.plugin for d in self.zoos()}
        info = []
        registered = [(n, p) for n, p in self.list_name_plugin() if p is not None]
        for name, plugin in sorted(registered, key=lambda item: item[0]):
            hooks = sorted(c.name for c in self.get_hookcallers(plugin) or ())
            info.append(
                {
                    "name": name,
                    "dist": self.distributions.get(name, "not installed"),
                    "hooks": hooks,
                    "families": sorted(f for f, p in families.items() if p == name),
                    "zoos": sorted(z for z, p in zoos.items() if p == name),
                }
            )
        return info


def skip_plugin(problem: str, plugin: str, cause: BaseException | None = None) -> None:
    """Warn that ``plugin``'s contribution is skipped, or raise with ``ZOOADAPT_STRICT_PLUGINS``.

    Raises:
        PluginError: Naming the plugin, when ``ZOOADAPT_STRICT_PLUGINS=1``.
    """
    message = f"zooadapt: plugin {plugin!r} {problem}"
    if _strict():
        raise PluginError(message, plugin=plugin) from cause
    warnings.warn(message, PluginWarning, stacklevel=3)


def _unique(declared: Iterable[Declared[T]], what: str, builtin: set[str]) -> list[Declared[T]]:
    """One entry per name: a built-in plugin's wins, else the first; the other is skipped."""
    by_name: dict[str, Declared[T]] = {}
    for entry in declared:
        name = entry.item.name  # type: ignore[attr-defined]
        if name not in by_name:
            by_name[name] = entry
            continue
        kept, other = by_name[name], entry
        if other.plugin in builtin and kept.plugin not in builtin:
            kept, other = other, kept
        by_name[name] = kept
        skip_plugin(
            f"declares {what} {name!r}, as plugin {kept.plugin!r} does; {kept.plugin!r}'s "
            f"is used (disable one with ZOOADAPT_DISABLE_PLUGINS)",
            other.plugin,
        )
    return list(by_name.values())


def _entry_points() -> list[EntryPoint]:
    """The group's entry points sorted by name; of two with one name, zooadapt's own wins.

    The other is skipped with a :class:`PluginWarning` naming both distributions, so a
    third-party plugin can never silently replace a built-in one.
    """
    chosen: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=PROJECT), key=lambda ep: (ep.name, _dist_label(ep))):
        kept = chosen.setdefault(ep.name, ep)
        if kept is ep:
            continue
        if _dist_label(ep).startswith("zooadapt=="):
            chosen[ep.name], kept, ep = ep, ep, kept
        skip_plugin(
            f"from {_dist_label(ep)} has the name of the plugin from {_dist_label(kept)}, "
            "which is loaded instead",
            ep.name,
        )
    return list(chosen.values())


def make_plugin_manager(*plugins: object, entrypoints: bool = False) -> PluginManager:
    """Build a plugin manager holding exactly ``plugins`` (hermetic, for tests).

    Args:
        *plugins: Modules or objects with ``@hookimpl`` functions.
        entrypoints: Also load every installed entry-point plugin.

    Returns:
        A new :class:`PluginManager`.
    """
    pm = PluginManager()
    if entrypoints:
        pm.load_entrypoints()
    for plugin in plugins:
        pm.add(plugin)
    return pm


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The shared plugin manager with every installed plugin (loaded once, then cached)."""
    return make_plugin_manager(entrypoints=True)
