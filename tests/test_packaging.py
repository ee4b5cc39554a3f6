"""Built-in plugins are installed and registered exactly like third-party ones."""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import zooadapt as za

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _plugin_modules() -> set[str]:
    return {p.stem for p in (ROOT / "plugins").glob("*.py") if not p.stem.startswith("_")}


def test_every_builtin_plugin_module_has_an_entry_point():
    declared = PYPROJECT["project"]["entry-points"]["zooadapt"]
    assert {v.removeprefix("zooadapt_plugins.") for v in declared.values()} == _plugin_modules()


def test_the_installed_distribution_registers_them_in_the_zooadapt_group():
    installed = {ep.value for ep in distribution("zooadapt").entry_points if ep.group == "zooadapt"}
    assert installed == {f"zooadapt_plugins.{m}" for m in _plugin_modules()}, (
        "re-run `pip install -e .` after adding a plugin module"
    )
    loaded = {name for name, _ in za.get_plugin_manager().list_name_plugin()}
    assert loaded >= {
        ep.name for ep in distribution("zooadapt").entry_points if ep.group == "zooadapt"
    }


def test_builtins_use_only_the_public_api():
    public = set(za.__all__)
    for path in (ROOT / "plugins").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zooadapt"):
                if node.module == "zooadapt":
                    assert {a.name for a in node.names} <= public, path.name
                else:
                    assert node.module.startswith("zooadapt_plugins"), f"{path.name}: {node.module}"


def test_core_never_imports_the_builtin_plugins():
    for path in (ROOT / "zooadapt").glob("*.py"):
        assert "zooadapt_plugins" not in path.read_text(), path.name


def test_every_package_is_listed():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "zooadapt").rglob("__init__.py")
    } | {"zooadapt_plugins"}
    assert packages == found
