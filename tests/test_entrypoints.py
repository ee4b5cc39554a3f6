"""Entry-point discovery, the way a third party installs a plugin: a dist-info on sys.path."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import zooadapt as za
from zooadapt._core.plugins import FailedPlugin, PluginManager

BUILTINS = {"resnet", "torchvision", "generic", "mobilenet", "vit"}
ENV_VARS = ("ZOOADAPT_PLUGINS", "ZOOADAPT_DISABLE_PLUGINS", "ZOOADAPT_STRICT_PLUGINS")

GOOD_PLUGIN = '''
"""A third-party family plugin for TinyNet."""

from torch import nn

import zooadapt as za


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 4, 3)
        self.out = nn.Linear(4, 2)


@za.hookimpl
def zooadapt_families():
    yield za.Family(
        name="tpgood",
        classes=("tp_good_plugin.TinyNet",),
        head="out",
        stem="entry",
        groups={"stem": r"^entry\\.", "head": r"^out\\."},
    )


@za.hookimpl
def zooadapt_rename_rules(family):
    if family == "resnet":
        yield za.RenameRule(r"^trunk\\.", "", name="tpgood: strip trunk.")
'''

BROKEN_PLUGIN = 'raise RuntimeError("tp_broken_plugin cannot be imported")\n'


def write_dist(
    root: Path, name: str, entry_points: list[tuple[str, str]], modules: dict[str, str]
) -> None:
    """Write modules and a ``<name>-0.1.dist-info`` declaring ``zooadapt`` entry points."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points)
    (info / "entry_points.txt").write_text(f"[zooadapt]\n{lines}")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No plugin selection from the outer environment; forget the modules tests import."""
    for variable in ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    before = set(sys.modules)
    yield
    for module in set(sys.modules) - before:
        if module.startswith("tp_"):
            del sys.modules[module]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A good and a broken third-party plugin distribution, installed on sys.path."""
    write_dist(
        tmp_path, "tp-good-plugin", [("tpgood", "tp_good_plugin")], {"tp_good_plugin": GOOD_PLUGIN}
    )
    write_dist(
        tmp_path,
        "tp-broken-plugin",
        [("tpbroken", "tp_broken_plugin")],
        {"tp_broken_plugin": BROKEN_PLUGIN},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def load(expect_broken: bool = True) -> PluginManager:
    """A fresh manager with every entry point loaded; only ``tpbroken`` may warn."""
    pm = PluginManager()
    if expect_broken:
        with pytest.warns(za.PluginWarning, match="tpbroken") as record:
            pm.load_entrypoints()
        assert len(record) == 1
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", za.PluginWarning)
            pm.load_entrypoints()
    return pm


def plugin_names(pm: PluginManager) -> set[str]:
    return {name for name, plugin in pm.list_name_plugin() if plugin is not None}


def family_names(pm: PluginManager) -> set[str]:
    return {d.item.name for d in pm.families()}


# -- a good third-party plugin ----------------------------------------------------------


def test_third_party_plugin_is_registered_under_its_entry_point_name(site: Path) -> None:
    pm = load()
    assert "tpgood" in plugin_names(pm)
    assert pm.get_plugin("tpgood") is sys.modules["tp_good_plugin"]
    declared = {d.item.name: d.plugin for d in pm.families()}
    assert declared["tpgood"] == "tpgood"
    # The built-in plugins are discovered through the very same entry-point group.
    assert plugin_names(pm) >= BUILTINS
    assert declared["resnet"] == "resnet"
    assert declared["generic"] == "generic"
    assert {d.item.name for d in pm.zoos()} >= {"torchvision"}


def test_distributions_record_where_each_plugin_comes_from(site: Path) -> None:
    pm = load()
    assert pm.distributions["tpgood"] == "tp-good-plugin==0.1"
    assert pm.distributions["resnet"] == f"zooadapt=={za.__version__}"
    assert "tpbroken" not in pm.distributions
    info = {entry["name"]: entry for entry in pm.plugin_info()}
    assert info["tpgood"]["dist"] == "tp-good-plugin==0.1"
    assert info["tpgood"]["families"] == ["tpgood"]
    assert info["tpgood"]["hooks"] == ["zooadapt_families", "zooadapt_rename_rules"]
    assert "tpbroken" not in info


def test_third_party_family_owns_its_model_and_adds_rename_rules_to_others(site: Path) -> None:
    pm = load()
    tiny = sys.modules["tp_good_plugin"].TinyNet()
    anatomy = za.anatomy(tiny, plugin_manager=pm)
    assert (anatomy.family, anatomy.plugin) == ("tpgood", "tpgood")  # beats "generic"
    assert anatomy.head == ("out",)
    assert anatomy.groups == {
        "stem": ["entry.weight", "entry.bias"],
        "head": ["out.weight", "out.bias"],
    }
    resnet = next(d.item for d in pm.families() if d.item.name == "resnet")
    assert [rule.name for rule in pm.rename_rules(resnet)][-1] == "tpgood: strip trunk."
    generic = next(d.item for d in pm.families() if d.item.name == "generic")
    assert all(rule.name != "tpgood: strip trunk." for rule in pm.rename_rules(generic))


# -- a broken third-party plugin --------------------------------------------------------


def test_broken_plugin_is_skipped_with_a_warning_naming_it(site: Path) -> None:
    pm = PluginManager()
    with pytest.warns(za.PluginWarning) as record:
        pm.load_entrypoints()
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert "'tpbroken'" in messages[0]
    assert "tp-broken-plugin==0.1" in messages[0]
    assert "cannot be imported" in messages[0]
    assert record[0].filename == __file__  # points at the caller of load_entrypoints
    assert len(pm.failed) == 1
    failed = pm.failed[0]
    assert isinstance(failed, FailedPlugin)
    assert (failed.name, failed.dist) == ("tpbroken", "tp-broken-plugin==0.1")
    assert "RuntimeError" in failed.error
    assert "tpbroken" not in plugin_names(pm)
    assert "tp_broken_plugin" not in sys.modules


def test_other_plugins_still_work_next_to_a_broken_one(site: Path) -> None:
    pm = load()
    assert {"tpgood", "resnet", "generic"} <= family_names(pm)
    model = za.adapt("resnet18", num_classes=3, pretrained=False, plugin_manager=pm)
    assert model.fc.out_features == 3
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_strict_mode_raises_naming_the_broken_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ZOOADAPT_STRICT_PLUGINS", value)
    pm = PluginManager()
    with warnings.catch_warnings():
        warnings.simplefilter("error", za.PluginWarning)
        with pytest.raises(za.PluginError) as info:
            pm.load_entrypoints()
    assert "'tpbroken'" in str(info.value)
    assert "tp-broken-plugin==0.1" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_strict_mode_off_values_only_warn(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ZOOADAPT_STRICT_PLUGINS", value)
    pm = load()
    assert [f.name for f in pm.failed] == ["tpbroken"]


def test_plugins_that_fail_to_import_or_validate_are_all_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    misspelled = """
        import zooadapt as za

        @za.hookimpl
        def zooadapt_familes():
            return []
    """
    importerror = 'raise ImportError("needs a package that is not installed")\n'
    write_dist(
        tmp_path,
        "tp-mixed-plugins",
        [
            ("tpmissing", "tp_module_that_does_not_exist"),
            ("tpmisspelled", "tp_misspelled_plugin"),
            ("tpimporterror", "tp_importerror_plugin"),
            ("tpgood", "tp_good_plugin"),
        ],
        {
            "tp_misspelled_plugin": misspelled,
            "tp_importerror_plugin": importerror,
            "tp_good_plugin": GOOD_PLUGIN,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager()
    with pytest.warns(za.PluginWarning) as record:
        pm.load_entrypoints()
    # Entry points are loaded sorted by name, whatever their order in entry_points.txt.
    assert [f.name for f in pm.failed] == ["tpimporterror", "tpmissing", "tpmisspelled"]
    assert [str(w.message).split("'")[1] for w in record] == [
        "tpimporterror",
        "tpmissing",
        "tpmisspelled",
    ]
    assert "zooadapt_familes" in pm.failed[2].error
    assert "ModuleNotFoundError" in pm.failed[1].error
    assert "ImportError" in pm.failed[0].error
    # The invalid plugin left nothing behind, so the plugins after it loaded normally.
    assert plugin_names(pm).isdisjoint({"tpmissing", "tpmisspelled", "tpimporterror"})
    assert not pm.is_registered(sys.modules["tp_misspelled_plugin"])
    assert {"tpgood", "vit", "vgg"} <= family_names(pm)
    assert pm.distributions["vit"] == f"zooadapt=={za.__version__}"


# -- choosing plugins with environment variables ----------------------------------------


def test_disable_plugins_blocks_third_party_and_builtin_plugins(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOADAPT_DISABLE_PLUGINS", "tpbroken, resnet")
    pm = load(expect_broken=False)
    assert pm.failed == []
    assert "resnet" not in plugin_names(pm)
    assert "tpbroken" not in plugin_names(pm)
    assert "resnet" not in family_names(pm)
    assert "resnet" not in pm.distributions
    assert {"tpgood", "generic", "vgg"} <= family_names(pm)
    assert "tp_broken_plugin" not in sys.modules  # a blocked plugin is not even imported


def test_plugins_variable_loads_only_the_named_plugins(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOADAPT_PLUGINS", "tpgood,generic")
    pm = load(expect_broken=False)
    assert plugin_names(pm) == {"tpgood", "generic"}
    assert family_names(pm) == {"tpgood", "generic"}
    assert pm.zoos() == []
    assert pm.failed == []
    assert set(pm.distributions) == {"tpgood", "generic"}
    # Without the resnet family, a ResNet falls back to the generic family.
    from torchvision.models import resnet18

    assert za.anatomy(resnet18(), plugin_manager=pm).family == "generic"


def test_disable_wins_over_plugins(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOADAPT_PLUGINS", "tpgood,generic,tpbroken")
    monkeypatch.setenv("ZOOADAPT_DISABLE_PLUGINS", "tpbroken,generic")
    pm = load(expect_broken=False)
    assert plugin_names(pm) == {"tpgood"}


# -- deterministic loading ----------------------------------------------------------------


def test_entry_points_are_loaded_sorted_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = "LOADED = []\n"
    template = """
        import tp_order_log
        import zooadapt as za

        tp_order_log.LOADED.append(__name__)


        @za.hookimpl
        def zooadapt_families():
            yield za.Family(
                name=__name__, head="fc", stem=None, groups={{"all": "."}}, classes=("{cls}",)
            )
    """
    modules = {f"tp_order_{x}": template.format(cls=f"nowhere.{x}") for x in "zam"}
    write_dist(
        tmp_path,
        "tp-order-plugins",
        [("tporder_z", "tp_order_z"), ("tporder_a", "tp_order_a"), ("tporder_m", "tp_order_m")],
        {"tp_order_log": log, **modules},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = load(expect_broken=False)
    assert sys.modules["tp_order_log"].LOADED == ["tp_order_a", "tp_order_m", "tp_order_z"]
    assert {"tporder_a", "tporder_m", "tporder_z"} <= plugin_names(pm)
    assert {"tp_order_a", "tp_order_m", "tp_order_z"} <= family_names(pm)


def test_loading_twice_gives_the_same_plugins_and_families(site: Path) -> None:
    first, second = load(), load()
    assert sorted((d.item.name, d.plugin) for d in first.families()) == sorted(
        (d.item.name, d.plugin) for d in second.families()
    )
    assert plugin_names(first) == plugin_names(second)
    assert first.distributions == second.distributions
    assert first.failed == second.failed


def test_make_plugin_manager_loads_entry_points_only_when_asked(site: Path) -> None:
    pm = za.make_plugin_manager()
    assert pm.list_name_plugin() == []
    assert pm.families() == []
    with pytest.warns(za.PluginWarning, match="tpbroken"):
        pm = za.make_plugin_manager(entrypoints=True)
    assert {"tpgood", "resnet"} <= family_names(pm)


def test_loading_again_into_the_same_manager_changes_nothing(site: Path) -> None:
    pm = load()
    families = sorted((d.item.name, d.plugin) for d in pm.families())
    failed = list(pm.failed)
    pm.load_entrypoints()
    assert sorted((d.item.name, d.plugin) for d in pm.families()) == families
    assert pm.failed == failed
