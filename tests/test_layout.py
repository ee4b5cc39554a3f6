"""The package layout the next engineer relies on: ``zooadapt._core`` never imports the
public modules, and ``zooadapt`` never imports ``zooadapt_plugins``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The vocabulary every module may use: they import nothing else of zooadapt.
VOCABULARY = {"zooadapt.errors", "zooadapt.types", "zooadapt.hookspecs"}


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute, also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def zooadapt_imports(path: Path) -> set[str]:
    return {name for name in imported(path) if name == "zooadapt" or name.startswith("zooadapt.")}


def test_private_modules_import_only_private_modules_and_the_vocabulary():
    offenders = {}
    for path in sorted((ROOT / "zooadapt" / "_core").glob("*.py")):
        bad = {
            name
            for name in zooadapt_imports(path)
            if not name.startswith("zooadapt._core")
            and not any(name == v or name.startswith(v + ".") for v in VOCABULARY)
        }
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_vocabulary_imports_nothing_else_of_zooadapt():
    for module in VOCABULARY:
        path = ROOT / (module.replace(".", "/") + ".py")
        others = {n for n in zooadapt_imports(path) if not any(n.startswith(v) for v in VOCABULARY)}
        assert others == set(), module


def test_the_core_never_imports_the_built_in_plugins():
    for path in (ROOT / "zooadapt").rglob("*.py"):
        assert not any(n.startswith("zooadapt_plugins") for n in imported(path)), path


def test_the_checker_sees_a_violation(tmp_path):
    """The scan itself works: a private module importing a public one is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from zooadapt.adapt import adapt\n", encoding="utf-8")
    assert zooadapt_imports(bad) == {"zooadapt.adapt", "zooadapt.adapt.adapt"}


def test_modules_stay_small():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in (ROOT / "zooadapt").rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 900} == {}
