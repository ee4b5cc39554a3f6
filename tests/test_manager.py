"""The plugin manager's typed facade and family selection, with hermetic plugin managers."""

from __future__ import annotations

import itertools

import pytest
from torch import nn
from zooadapt_plugins import generic

import zooadapt as za
from zooadapt import Family, RenameRule, Zoo, hookimpl
from zooadapt._core.anatomy import class_name, select_family
from zooadapt._core.plugins import Declared

# -- tiny models (module level, so that their qualified names have no ``<locals>``) -----


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)


class Child(Base):
    pass


class Unrelated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3)
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


GROUPS = {"stem": r"^stem\.", "body": r"^body\.", "head": r"^fc\."}


def family(name: str, **kwargs: object) -> Family:
    """A family for ``Base``-shaped models; ``kwargs`` override any field."""
    fields = {"head": "fc", "stem": "stem", "groups": GROUPS, **kwargs}
    return Family(name=name, **fields)


def plugin(plugin_name: str, *families: Family, zoos: tuple[Zoo, ...] = ()) -> type:
    """A plugin class (registered under its ``__name__``) declaring ``families``/``zoos``."""

    def zooadapt_families():
        return list(families)

    def zooadapt_zoos():
        return list(zoos)

    hooks: dict[str, object] = {}
    if families:
        hooks["zooadapt_families"] = staticmethod(hookimpl(zooadapt_families))
    if zoos:
        hooks["zooadapt_zoos"] = staticmethod(hookimpl(zooadapt_zoos))
    return type(plugin_name, (), hooks)


def zoo(name: str, order: int = 100) -> Zoo:
    return Zoo(
        name=name, models=lambda: [f"{name}_net"], build=lambda arch, weights: Base(), order=order
    )


EXACT = family("exact", classes=(class_name(Child),))
SUBCLASS = family("subclass", classes=(class_name(Base),))
PREDICATE = family("predicate", match=lambda model: isinstance(model, Base))
FALLBACK = family("fallback", fallback=True)


# -- families() and zoos() -------------------------------------------------------------


def test_no_plugins_means_no_families_or_zoos() -> None:
    pm = za.make_plugin_manager()
    assert pm.families() == []
    assert pm.zoos() == []
    assert pm.plugin_info() == []


def test_families_are_declared_with_their_plugin_name() -> None:
    first = family("first")
    second = family("second")
    pm = za.make_plugin_manager(plugin("PluginOne", first), plugin("PluginTwo", second))
    declared = {d.item.name: d for d in pm.families()}
    assert set(declared) == {"first", "second"}
    assert declared["first"] == Declared(first, "PluginOne")
    assert declared["second"] == Declared(second, "PluginTwo")
    assert declared["first"].item is first


def test_plugin_class_with_decorated_methods_is_a_plugin() -> None:
    class Written:
        @staticmethod
        @hookimpl
        def zooadapt_families():
            yield family("written")

    pm = za.make_plugin_manager(Written)
    assert [(d.item.name, d.plugin) for d in pm.families()] == [("written", "Written")]


def test_zoos_are_declared_with_plugin_and_sorted_by_order_then_name() -> None:
    pm = za.make_plugin_manager(
        plugin("ZooA", zoos=(zoo("zeta", order=5), zoo("beta", order=50))),
        plugin("ZooB", zoos=(zoo("alpha", order=50), zoo("last"))),
    )
    zoos = pm.zoos()
    assert [(d.item.name, d.plugin) for d in zoos] == [
        ("zeta", "ZooA"),
        ("alpha", "ZooB"),
        ("beta", "ZooA"),
        ("last", "ZooB"),
    ]
    assert all(isinstance(d.item, Zoo) for d in zoos)


@pytest.mark.usefixtures("strict_plugins")
def test_same_family_name_in_two_plugins_is_an_error_naming_both() -> None:
    pm = za.make_plugin_manager(
        plugin("AlphaPlugin", family("dup")), plugin("BetaPlugin", family("dup"))
    )
    with pytest.raises(za.PluginError) as info:
        pm.families()
    message = str(info.value)
    assert "'dup'" in message
    assert "AlphaPlugin" in message
    assert "BetaPlugin" in message


@pytest.mark.usefixtures("strict_plugins")
def test_same_zoo_name_in_two_plugins_is_an_error_naming_both() -> None:
    pm = za.make_plugin_manager(
        plugin("ZooOne", zoos=(zoo("same"),)), plugin("ZooTwo", zoos=(zoo("same"),))
    )
    with pytest.raises(za.PluginError, match="same") as info:
        pm.zoos()
    assert "ZooOne" in str(info.value)
    assert "ZooTwo" in str(info.value)


# -- a failing or misbehaving plugin is named -------------------------------------------


class Raising:
    @staticmethod
    @hookimpl
    def zooadapt_families():
        raise RuntimeError("kaput")


class RaisingMidway:
    @staticmethod
    @hookimpl
    def zooadapt_families():
        yield family("fine")
        raise KeyError("midway")


@pytest.mark.usefixtures("strict_plugins")
@pytest.mark.parametrize(("bad", "detail"), [(Raising, "kaput"), (RaisingMidway, "midway")])
def test_hook_that_raises_is_a_plugin_error_naming_plugin_and_hook(bad: type, detail: str) -> None:
    pm = za.make_plugin_manager(plugin("Healthy", family("healthy")), bad)
    with pytest.raises(za.PluginError) as info:
        pm.families()
    message = str(info.value)
    assert bad.__name__ in message
    assert "zooadapt_families" in message
    assert detail in message
    assert "Healthy" not in message
    assert info.value.__cause__ is not None


@pytest.mark.usefixtures("strict_plugins")
def test_family_hook_returning_a_non_family_is_a_plugin_error() -> None:
    class ReturnsStrings:
        @staticmethod
        @hookimpl
        def zooadapt_families():
            return ["resnet"]

    pm = za.make_plugin_manager(ReturnsStrings)
    with pytest.raises(za.PluginError) as info:
        pm.families()
    message = str(info.value)
    assert "ReturnsStrings" in message
    assert "str" in message
    assert "Family" in message


@pytest.mark.usefixtures("strict_plugins")
def test_zoo_hook_returning_a_family_is_a_plugin_error() -> None:
    class Confused:
        @staticmethod
        @hookimpl
        def zooadapt_zoos():
            yield family("not-a-zoo")

    pm = za.make_plugin_manager(Confused)
    with pytest.raises(za.PluginError, match="Confused.*zooadapt_zoos.*expected Zoo"):
        pm.zoos()


class Misspelled:
    @staticmethod
    @hookimpl
    def zooadapt_familes():
        yield family("never")


class WrongArgument:
    @staticmethod
    @hookimpl
    def zooadapt_rename_rules(fam):
        yield RenameRule("a", "b")


def test_misspelled_hook_fails_at_registration_and_leaves_nothing_behind() -> None:
    pm = za.make_plugin_manager(plugin("Good", family("good")))
    with pytest.raises(za.PluginError, match="zooadapt_familes"):
        pm.add(Misspelled)
    assert not pm.is_registered(Misspelled)
    assert pm.get_plugin("Misspelled") is None
    assert [name for name, _ in pm.list_name_plugin()] == ["Good"]
    # The manager is still usable: later plugins register and families are collected.
    pm.add(plugin("Later", family("later")))
    assert sorted(d.item.name for d in pm.families()) == ["good", "later"]


def test_make_plugin_manager_rejects_a_misspelled_hook() -> None:
    with pytest.raises(za.PluginError, match="zooadapt_familes"):
        za.make_plugin_manager(Misspelled)


def test_hook_with_an_argument_no_hookspec_offers_fails_at_registration() -> None:
    pm = za.make_plugin_manager()
    with pytest.raises(za.PluginError, match="fam"):
        pm.add(WrongArgument)
    assert not pm.is_registered(WrongArgument)
    assert pm.rename_rules(family("any")) == []


def test_registering_the_same_name_twice_is_a_plugin_error() -> None:
    pm = za.make_plugin_manager(plugin("Twin", family("one")))
    with pytest.raises(za.PluginError):
        pm.add(plugin("Twin", family("two")))
    assert [d.item.name for d in pm.families()] == ["one"]


def test_adding_a_registered_plugin_again_keeps_the_first_registration() -> None:
    first = plugin("First", family("one"))
    pm = za.make_plugin_manager(first)
    with pytest.raises(za.PluginError, match="already registered"):
        pm.add(first, name="again")
    assert [(d.item.name, d.plugin) for d in pm.families()] == [("one", "First")]


def test_hooks_are_collected_in_pluggys_call_order() -> None:
    """Last registered first, ``tryfirst`` before and ``trylast`` after, as pluggy calls them."""
    a, b = plugin("A", family("from_a")), plugin("B", family("from_b"))
    assert [d.plugin for d in za.make_plugin_manager(a, b).families()] == ["B", "A"]
    assert [d.plugin for d in za.make_plugin_manager(b, a).families()] == ["A", "B"]

    class First:
        @za.hookimpl(tryfirst=True)
        def zooadapt_families(self):
            yield family("first")

    class Last:
        @za.hookimpl(trylast=True)
        def zooadapt_families(self):
            yield family("last")

    pm = za.make_plugin_manager(First(), a, Last(), b)
    names = [d.item.name for d in pm.families()]
    assert names == ["first", "from_b", "from_a", "last"]
    called = [result.name for results in pm.hook.zooadapt_families() for result in results]
    assert names == called  # exactly what pluggy's own call returns


def test_disabled_plugins_are_blocked_in_pluggy(monkeypatch) -> None:
    monkeypatch.setenv("ZOOADAPT_DISABLE_PLUGINS", "resnet")
    pm = za.make_plugin_manager(entrypoints=True)
    assert pm.is_blocked("resnet") and not pm.has_plugin("resnet")
    import zooadapt_plugins.resnet

    with pytest.raises(za.PluginError, match="blocked") as info:
        pm.add(zooadapt_plugins.resnet, name="resnet")
    assert info.value.plugin == "resnet"


def test_the_model_registry_is_live() -> None:
    """A model a zoo lists after the first lookup is found, and a zoo added later too."""
    names = ["small"]
    zoo = za.Zoo(name="live", models=lambda: list(names), build=lambda arch, weights: Base())

    class Zoos:
        @za.hookimpl
        def zooadapt_zoos(self):
            yield zoo

    pm = za.make_plugin_manager()
    assert za.list_models("live/*", plugin_manager=pm) == []
    pm.add(Zoos())
    assert za.list_models("live/*", plugin_manager=pm) == ["live/small"]
    names.append("large")
    assert za.list_models("live/*", plugin_manager=pm) == ["live/large", "live/small"]


# -- family selection -------------------------------------------------------------------

LADDER = [EXACT, SUBCLASS, PREDICATE, FALLBACK]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_most_specific_family_wins_whatever_the_registration_order(order: tuple[int, ...]) -> None:
    plugins = {fam.name: plugin(f"P_{fam.name}", fam) for fam in LADDER}
    registered = [plugins[LADDER[i].name] for i in order]
    # Drop the most specific family one at a time: the next one down takes over.
    for level, expected in enumerate(LADDER):
        remaining = {fam.name for fam in LADDER[level:]}
        pm = za.make_plugin_manager(*(p for p in registered if p.__name__[2:] in remaining))
        chosen = select_family(Child(), pm)
        assert chosen.item.name == expected.name
        assert chosen.plugin == f"P_{expected.name}"


@pytest.mark.parametrize("reverse", [False, True])
def test_anatomy_reports_the_winning_family_and_its_plugin(reverse: bool) -> None:
    plugins = [plugin(f"P_{fam.name}", fam) for fam in LADDER]
    pm = za.make_plugin_manager(*(plugins[::-1] if reverse else plugins))
    child = za.anatomy(Child(), plugin_manager=pm)
    assert (child.family, child.plugin) == ("exact", "P_exact")
    # ``Base`` is the exact class of the "subclass" family and matches nothing more specific.
    base = za.anatomy(Base(), plugin_manager=pm)
    assert (base.family, base.plugin) == ("subclass", "P_subclass")
    # Only the fallback claims an unrelated module, whose own anatomy then fails to fit.
    assert select_family(Unrelated(), pm).item.name == "fallback"


@pytest.mark.parametrize(
    "claim",
    [
        {"classes": (class_name(Child),)},
        {"classes": (class_name(Base),)},
        {"match": lambda model: True},
        {"fallback": True},
    ],
    ids=["exact", "subclass", "predicate", "fallback"],
)
def test_two_equally_specific_claims_are_ambiguous(claim: dict[str, object]) -> None:
    pm = za.make_plugin_manager(
        plugin("LeftPlugin", family("left", **claim)),
        plugin("RightPlugin", family("right", **claim)),
    )
    with pytest.raises(za.AmbiguousFamilyError) as info:
        za.anatomy(Child(), plugin_manager=pm)
    message = str(info.value)
    for name in ("'left'", "'right'", "LeftPlugin", "RightPlugin", "Child"):
        assert name in message


def test_a_forced_family_name_resolves_an_ambiguity() -> None:
    left = family("left", classes=(class_name(Child),))
    right = family("right", classes=(class_name(Child),), groups={"all": r"^(stem|body|fc)\."})
    pm = za.make_plugin_manager(plugin("LeftPlugin", left), plugin("RightPlugin", right))
    result = za.anatomy(Child(), family="right", plugin_manager=pm)
    assert (result.family, result.plugin) == ("right", "RightPlugin")
    assert list(result.groups) == ["all"]
    result = za.anatomy(Child(), family="left", plugin_manager=pm)
    assert (result.family, result.plugin) == ("left", "LeftPlugin")
    assert list(result.groups) == ["stem", "body", "head"]


def test_a_family_instance_can_be_passed_directly() -> None:
    custom = Family(
        name="custom",
        head="classifier",
        stem="features",
        groups=[("features", r"^features\."), ("head", r"^classifier\.")],
    )
    # Works even when no plugin is installed, and wins over installed families.
    for pm in (za.make_plugin_manager(), za.make_plugin_manager(generic)):
        result = za.anatomy(Unrelated(), family=custom, plugin_manager=pm)
        assert result.family == "custom"
        assert result.plugin == "<caller>"
        assert result.head == ("classifier",)
        assert result.stem == "features"
        assert result.groups == {
            "features": ["features.weight", "features.bias"],
            "head": ["classifier.weight", "classifier.bias"],
        }


def test_unknown_family_name_lists_installed_families() -> None:
    pm = za.make_plugin_manager(plugin("A", family("zebra")), plugin("B", family("aardvark")))
    with pytest.raises(za.FamilyNotFoundError) as info:
        za.anatomy(Child(), family="resnet", plugin_manager=pm)
    message = str(info.value)
    assert "'resnet'" in message
    assert "aardvark, zebra" in message


def test_unknown_family_name_with_no_plugins_says_none() -> None:
    with pytest.raises(za.FamilyNotFoundError, match="installed families: none"):
        za.anatomy(Child(), family="resnet", plugin_manager=za.make_plugin_manager())


def test_a_module_no_family_understands_is_named() -> None:
    pm = za.make_plugin_manager(plugin("P_exact", EXACT), plugin("P_subclass", SUBCLASS))
    with pytest.raises(za.FamilyNotFoundError) as info:
        za.anatomy(Unrelated(), plugin_manager=pm)
    assert class_name(Unrelated) in str(info.value)
    assert isinstance(info.value, LookupError)


def test_an_empty_plugin_manager_is_used_not_replaced_by_the_shared_one() -> None:
    # The shared manager's generic family would claim this model; an empty one must not.
    with pytest.raises(za.FamilyNotFoundError, match="no family plugins are installed"):
        za.anatomy(Unrelated(), plugin_manager=za.make_plugin_manager())


def test_the_generic_plugin_claims_what_no_other_family_does() -> None:
    pm = za.make_plugin_manager(generic, plugin("P_exact", EXACT))
    result = za.anatomy(Unrelated(), plugin_manager=pm)
    assert result.family == "generic"
    assert result.plugin == generic.__name__
    assert result.head == ("classifier",)
    assert result.stem == "features"
    # ... but never over a family that declares the class.
    assert za.anatomy(Child(), plugin_manager=pm).family == "exact"


def test_anatomy_of_the_winning_family() -> None:
    pm = za.make_plugin_manager(plugin("P_exact", EXACT))
    result = za.anatomy(Child(), plugin_manager=pm)
    assert result == za.Anatomy(
        family="exact",
        plugin="P_exact",
        head=("fc",),
        stem="stem",
        groups={
            "stem": ["stem.weight", "stem.bias"],
            "body": ["body.weight", "body.bias"],
            "head": ["fc.weight", "fc.bias"],
        },
        stems=("stem",),
        num_classes=2,
        in_chans=3,
    )


# -- a family whose declarations do not fit the model -----------------------------------


@pytest.mark.parametrize(
    ("groups", "parameter", "problem"),
    [
        ({"stem": r"^stem\.", "head": r"^fc\."}, "body.weight", "matches no group"),
        ({"everything": r".", "head": r"^fc\."}, "fc.weight", "matches groups"),
    ],
    ids=["uncovered", "covered-twice"],
)
def test_groups_must_cover_each_parameter_exactly_once(
    groups: dict[str, str], parameter: str, problem: str
) -> None:
    pm = za.make_plugin_manager(
        plugin("Sloppy", family("sloppy", classes=(class_name(Child),), groups=groups))
    )
    with pytest.raises(za.PluginError) as info:
        za.anatomy(Child(), plugin_manager=pm)
    message = str(info.value)
    assert repr(parameter) in message
    assert problem in message
    assert "Sloppy" in message
    assert "'sloppy'" in message


@pytest.mark.parametrize(
    ("fields", "path"),
    [({"head": "classifier"}, "classifier"), ({"stem": "features.0"}, "features.0")],
    ids=["head", "stem"],
)
def test_a_module_path_that_does_not_exist_is_a_plugin_error(
    fields: dict[str, str], path: str
) -> None:
    pm = za.make_plugin_manager(
        plugin("Lost", family("lost", classes=(class_name(Child),), **fields))
    )
    with pytest.raises(za.PluginError) as info:
        za.anatomy(Child(), plugin_manager=pm)
    assert repr(path) in str(info.value)
    assert "Lost" in str(info.value)


def test_a_family_function_that_raises_is_a_plugin_error_naming_plugin_and_field() -> None:
    def broken_groups(model: nn.Module) -> list[tuple[str, str]]:
        raise ValueError("cannot split")

    pm = za.make_plugin_manager(
        plugin("Fragile", family("fragile", classes=(class_name(Child),), groups=broken_groups))
    )
    with pytest.raises(za.PluginError) as info:
        za.anatomy(Child(), plugin_manager=pm)
    message = str(info.value)
    assert "Fragile" in message
    assert "groups" in message
    assert "cannot split" in message


@pytest.mark.usefixtures("strict_plugins")
def test_a_match_predicate_that_raises_is_a_plugin_error() -> None:
    def predicate(model: nn.Module) -> bool:
        raise AttributeError("no such thing")

    pm = za.make_plugin_manager(plugin("Picky", family("picky", match=predicate)))
    with pytest.raises(za.PluginError, match="Picky.*match"):
        za.anatomy(Unrelated(), plugin_manager=pm)


# -- rename rules ------------------------------------------------------------------------

OWN = RenameRule(r"^module\.", "", name="own")
FOR_TARGET = (
    RenameRule(r"^backbone\.", "", name="extra-1"),
    RenameRule(r"^net\.", "", name="extra-2"),
)
FOR_OTHER = RenameRule(r"^other\.", "", name="other")


class Renamer:
    @staticmethod
    @hookimpl
    def zooadapt_rename_rules(family):
        if family == "target":
            yield from FOR_TARGET
        elif family == "bystander":
            yield FOR_OTHER


def test_rename_rules_are_the_familys_own_then_those_plugins_add_for_it() -> None:
    target = family("target", rename_rules=(OWN,))
    bystander = family("bystander")
    unrelated = family("unrelated", rename_rules=(OWN,))
    pm = za.make_plugin_manager(plugin("Owner", target, bystander, unrelated), Renamer)
    assert pm.rename_rules(target) == [OWN, *FOR_TARGET]
    assert pm.rename_rules(bystander) == [FOR_OTHER]
    assert pm.rename_rules(unrelated) == [OWN]
    # A family nobody registered still gets what plugins add for its name.
    assert pm.rename_rules(family("target")) == list(FOR_TARGET)


def test_rename_rules_without_plugins_are_the_familys_own() -> None:
    pm = za.make_plugin_manager()
    assert pm.rename_rules(family("target", rename_rules=(OWN,))) == [OWN]


def test_rename_rule_hook_may_ignore_the_family_argument() -> None:
    class Everywhere:
        @staticmethod
        @hookimpl
        def zooadapt_rename_rules():
            yield FOR_OTHER

    pm = za.make_plugin_manager(Everywhere)
    assert pm.rename_rules(family("x")) == [FOR_OTHER]
    assert pm.rename_rules(family("y", rename_rules=(OWN,))) == [OWN, FOR_OTHER]


@pytest.mark.usefixtures("strict_plugins")
def test_rename_rule_hook_that_raises_or_returns_junk_is_named() -> None:
    class Junk:
        @staticmethod
        @hookimpl
        def zooadapt_rename_rules(family):
            yield ("^a", "b")

    class Boom:
        @staticmethod
        @hookimpl
        def zooadapt_rename_rules(family):
            raise OSError("disk")

    with pytest.raises(za.PluginError, match="Junk.*tuple.*RenameRule"):
        za.make_plugin_manager(Junk).rename_rules(family("x"))
    with pytest.raises(za.PluginError, match="Boom.*zooadapt_rename_rules.*disk"):
        za.make_plugin_manager(Boom).rename_rules(family("x"))


# -- plugin_info -------------------------------------------------------------------------


def test_plugin_info_lists_each_plugin_with_its_hooks_families_and_zoos() -> None:
    pm = za.make_plugin_manager(
        plugin("Zed", family("z1"), family("z0"), zoos=(zoo("zz"),)),
        Renamer,
        plugin("Alpha", family("a1")),
    )
    info = pm.plugin_info()
    assert [entry["name"] for entry in info] == ["Alpha", "Renamer", "Zed"]
    by_name = {entry["name"]: entry for entry in info}
    assert by_name["Alpha"] == {
        "name": "Alpha",
        "dist": "not installed",
        "hooks": ["zooadapt_families"],
        "families": ["a1"],
        "zoos": [],
    }
    assert by_name["Renamer"]["hooks"] == ["zooadapt_rename_rules"]
    assert by_name["Renamer"]["families"] == []
    assert by_name["Zed"]["hooks"] == ["zooadapt_families", "zooadapt_zoos"]
    assert by_name["Zed"]["families"] == ["z0", "z1"]
    assert by_name["Zed"]["zoos"] == ["zz"]
