"""Meta-tests: every hookspec is documented in the plugin guide and exercised by a test.

Hookspecs are discovered by introspection (the functions pluggy's hookspec marker marked),
so a new hook fails these tests until the guide shows its exact signature, its docstring
has an example, and some test implements or calls it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import zooadapt as za
from zooadapt import hookspecs
from zooadapt.types import Family, Zoo

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
EXAMPLE_PLUGIN = ROOT / "examples" / "zooadapt-tinynet" / "src" / "zooadapt_tinynet"
SPEC_MARKER = f"{hookspecs.hookspec.project_name}_spec"
QUOTE = re.compile(r"<!-- quote: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)\n```", re.DOTALL)


def discovered() -> dict[str, Callable[..., object]]:
    """Every function of zooadapt.hookspecs marked with the hookspec marker."""
    return {
        name: func
        for name, func in vars(hookspecs).items()
        if inspect.isfunction(func) and hasattr(func, SPEC_MARKER)
    }


HOOKSPECS = discovered()


class _Raw:
    """An annotation shown as written (hookspecs use postponed, string annotations)."""

    def __init__(self, text: object) -> None:
        self.text = text if isinstance(text, str) else inspect.formatannotation(text)

    def __repr__(self) -> str:
        return str(self.text)


def signature_line(func: Callable[..., object]) -> str:
    """``def name(arg: type, ...) -> return type:``, as the hookspec declares it."""
    sig = inspect.signature(func)
    params = [
        p.replace(annotation=_Raw(p.annotation)) if p.annotation is not p.empty else p
        for p in sig.parameters.values()
    ]
    returns = sig.return_annotation
    sig = sig.replace(
        parameters=params,
        return_annotation=_Raw(returns) if returns is not sig.empty else sig.empty,
    )
    return f"def {func.__name__}{sig}:"


def guide() -> str:
    return GUIDE.read_text()


def test_the_discovery_finds_exactly_the_hooks_the_plugin_manager_has() -> None:
    hooks = {name for name in vars(za.make_plugin_manager().hook) if name.startswith("zooadapt_")}
    assert set(HOOKSPECS) == hooks
    assert {"zooadapt_families", "zooadapt_zoos", "zooadapt_rename_rules"} <= set(HOOKSPECS)


def test_signature_lines_are_built_as_written() -> None:
    line = signature_line(HOOKSPECS["zooadapt_rename_rules"])
    assert line == "def zooadapt_rename_rules(family: str) -> Iterable[RenameRule]:"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_the_guide_shows_the_exact_signature(name: str) -> None:
    line = signature_line(HOOKSPECS[name])
    lines = [text.strip() for text in guide().splitlines()]
    assert line in lines, f"docs/writing-a-plugin.md lacks the line: {line}"
    assert f"### `{name}`" in lines, f"docs/writing-a-plugin.md has no section for {name}"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_the_hookspec_docstring_has_an_example(name: str) -> None:
    doc = inspect.getdoc(HOOKSPECS[name]) or ""
    sections = [line.strip() for line in doc.splitlines()]
    assert "Example:" in sections or "Examples:" in sections, f"{name} has no Example section"
    assert "Returns:" in sections, f"{name} does not say what it returns"
    assert f"def {name}(" in doc, f"{name}'s example does not implement it"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_some_test_implements_or_calls_the_hook(name: str) -> None:
    usage = re.compile(rf"def {name}\(|\.{name}\(")
    users = [
        path.relative_to(ROOT)
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != Path(__file__).resolve() and usage.search(path.read_text())
    ]
    assert users, f"no test under tests/ implements or calls {name}"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_the_guide_example_plugin_implements_the_hook(name: str) -> None:
    source = (EXAMPLE_PLUGIN / "__init__.py").read_text()
    assert re.search(rf"@za\.hookimpl\ndef {name}\(", source), name


def test_the_guide_names_no_hook_that_does_not_exist() -> None:
    mentioned = set(re.findall(r"\bzooadapt_[a-z_]+(?=\()", guide()))
    assert mentioned <= set(HOOKSPECS)


def test_the_guide_quotes_the_example_verbatim() -> None:
    quotes = list(QUOTE.finditer(guide()))
    assert len(quotes) >= 6
    for quote in quotes:
        path = ROOT / quote["path"]
        assert path.is_file(), quote["path"]
        assert quote["code"] in path.read_text(), f"stale quote of {quote['path']}"


@pytest.mark.parametrize(
    "topic",
    [
        "ZOOADAPT_PLUGINS",
        "ZOOADAPT_DISABLE_PLUGINS",
        "ZOOADAPT_STRICT_PLUGINS",
        "zooadapt plugins",
        "[project.entry-points.zooadapt]",
        "zooadapt.testing",
        "check_family",
        "check_plugin",
        "StemLayout",
        "idempotent",
        "exact class",
        "subclass",
        "match predicate",
        "fallback",
    ],
)
def test_the_guide_covers(topic: str) -> None:
    assert topic in guide()


@pytest.mark.parametrize("cls", [Family, Zoo])
def test_the_guide_has_a_row_for_every_field(cls: type) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(cls) if f"| `{f.name}` |" not in text]
    assert not missing, f"docs/writing-a-plugin.md has no table row for {cls.__name__}.{missing}"
