"""One broken plugin never breaks the others: every kind of failure is skipped with a
``PluginWarning`` naming the plugin (``ZOOADAPT_STRICT_PLUGINS=1`` raises instead), and
zooadapt, built-in families included, keeps working."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
from torch import nn

import zooadapt as za
from zooadapt._core.plugins import PluginManager


def _family(name: str, **fields) -> za.Family:
    return za.Family(name=name, head="fc", stem="conv", groups={"all": r".*"}, **fields)


class RaisesInHook:
    @za.hookimpl
    def zooadapt_families(self):
        raise RuntimeError("hook exploded")


class ReturnsADict:
    @za.hookimpl
    def zooadapt_families(self):
        return [{"name": "dict", "head": "fc"}]


class InvalidRegex:
    @za.hookimpl
    def zooadapt_families(self):
        yield _family("badregex", rename_rules=(za.RenameRule(r"([", ""),))


class FailsMidway:
    @za.hookimpl
    def zooadapt_families(self):
        yield _family("first")
        raise KeyError("midway")


class MatchRaises:
    @za.hookimpl
    def zooadapt_families(self):
        def match(model):
            raise AttributeError("match exploded")

        yield _family("matcher", match=match)


class BadBackReference:
    @za.hookimpl
    def zooadapt_rename_rules(self, family):
        yield za.RenameRule(r"^module\.", r"\3")


class ClaimsResnet:
    @za.hookimpl
    def zooadapt_families(self):
        yield _family("resnet")


BROKEN = [RaisesInHook, ReturnsADict, InvalidRegex, FailsMidway, MatchRaises, BadBackReference]


@pytest.mark.parametrize("broken", BROKEN, ids=lambda cls: cls.__name__)
def test_a_broken_plugin_is_skipped_and_resnet18_still_adapts(broken, monkeypatch):
    monkeypatch.delenv("ZOOADAPT_STRICT_PLUGINS", raising=False)
    pm = za.make_plugin_manager(entrypoints=True)
    name = pm.add(broken())
    with pytest.warns(za.PluginWarning, match=re.escape(repr(name))):
        model = za.adapt("resnet18", num_classes=3, pretrained=False, plugin_manager=pm)
    assert za.anatomy(model).family == "resnet" and model.fc.out_features == 3


@pytest.mark.parametrize("broken", BROKEN, ids=lambda cls: cls.__name__)
def test_strict_plugins_raise_naming_the_plugin(broken, strict_plugins):
    pm = za.make_plugin_manager(entrypoints=True)
    name = pm.add(broken())
    with pytest.raises(za.PluginError) as info:
        za.adapt("resnet18", num_classes=3, pretrained=False, plugin_manager=pm)
    assert info.value.plugin == name and name in str(info.value)


def test_a_family_name_taken_by_a_built_in_keeps_the_built_in(monkeypatch):
    monkeypatch.delenv("ZOOADAPT_STRICT_PLUGINS", raising=False)
    pm = za.make_plugin_manager(entrypoints=True)
    name = pm.add(ClaimsResnet())
    with pytest.warns(za.PluginWarning, match=rf"{re.escape(repr(name))} declares family 'resnet'"):
        families = {d.item.name: d.plugin for d in pm.families()}
    assert families["resnet"] == "resnet"


def _dist(root, name, entry_point, module, source):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[zooadapt]\n{entry_point} = {module}\n")


def test_an_entry_point_named_like_a_built_in_never_replaces_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOOADAPT_STRICT_PLUGINS", raising=False)
    source = "import zooadapt as za\n\n@za.hookimpl\ndef zooadapt_families():\n    return []\n"
    _dist(tmp_path, "aaa-impostor", "resnet", "tp_impostor", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager()
    with pytest.warns(za.PluginWarning, match=r"aaa-impostor==0.1.*zooadapt=="):
        pm.load_entrypoints()
    assert pm.distributions["resnet"].startswith("zooadapt==")
    assert "resnet" in {d.item.name for d in pm.families()}
    sys.modules.pop("tp_impostor", None)


def test_sys_exit_at_import_is_contained(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOOADAPT_STRICT_PLUGINS", raising=False)
    _dist(tmp_path, "tp-exits", "tpexits", "tp_exits", "import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager()
    with pytest.warns(za.PluginWarning, match="tpexits.*SystemExit"):
        pm.load_entrypoints()
    assert [f.name for f in pm.failed] == ["tpexits"]
    assert "resnet" in {d.item.name for d in pm.families()}
    sys.modules.pop("tp_exits", None)


def test_a_bad_back_reference_is_refused_when_the_rule_is_made():
    with pytest.raises(re.error, match=r"replacement '\\\\3' does not fit pattern"):
        za.RenameRule(r"^module\.", r"\3")
    model = nn.Linear(2, 2)
    with pytest.raises(za.CheckpointError, match="not a valid regex"):
        za.load_weights(model, "unused.pth", rules=[(r"^(a)", r"\2")])
