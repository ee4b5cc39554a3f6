"""zooadapt.testing: every built-in plugin conforms, and broken families are named precisely."""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn

import zooadapt as za
from zooadapt import Family, RenameRule, Weights, Zoo, hookimpl
from zooadapt._core.anatomy import class_name
from zooadapt.testing import (
    ConformanceError,
    ConformanceReport,
    Sample,
    check_family,
    check_plugin,
    family_report,
    plugin_report,
)

META = "meta"


def tv(arch: str, **kwargs: Any):
    """A factory for a torchvision model."""
    return lambda: torchvision.models.get_model(arch, **kwargs)


def tm(arch: str):
    """A factory for a timm model."""
    return lambda: timm.create_model(arch)


class TutorialCNN(nn.Module):
    """A user's own network: only the generic family claims it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def hf(kind: str, **config: Any):
    """A factory for a small Hugging Face image classifier."""
    import transformers

    small = {
        "ViT": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "ResNet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
    }
    settings = {**small[kind], **config}
    model, configuration = (
        getattr(transformers, f"{kind}{c}") for c in ("ForImageClassification", "Config")
    )
    return lambda: model(configuration(**settings))  # adapting changes the model's config


def square(size: int) -> tuple[int, int, int, int]:
    return (2, 3, size, size)


def mn(builder: str, **kwargs: Any):
    """A factory for a MONAI network on one-channel volumes."""

    def build() -> nn.Module:
        import monai.networks.nets as nets

        return getattr(nets, builder)(spatial_dims=3, **kwargs)

    return build


def cube(size: int) -> tuple[int, ...]:
    return (2, 1, size, size, size)


#: One or more samples for every built-in family; heavy models are checked on meta.
SAMPLES: dict[str, list[Sample]] = {
    "alexnet": [Sample(tv("alexnet"), square(64), META)],
    "convnext": [Sample(tv("convnext_tiny"), square(32), META)],
    "densenet": [Sample(tv("densenet121"), square(32), META)],
    "efficientnet": [Sample(tv("efficientnet_b0"), square(32), META)],
    "googlenet": [
        Sample(tv("googlenet", aux_logits=True, init_weights=False), square(32), META),
        Sample(tv("googlenet", aux_logits=False, init_weights=False), square(32), META),
    ],
    "inception_v3": [Sample(tv("inception_v3", init_weights=False), square(75), META)],
    "maxvit": [Sample(tv("maxvit_t"), square(224), META)],
    "mnasnet": [Sample(tv("mnasnet0_5"), square(32))],
    "mobilenet_v2": [Sample(tv("mobilenet_v2"), square(32))],
    "mobilenet_v3": [Sample(tv("mobilenet_v3_small"), square(32))],
    "regnet": [Sample(tv("regnet_x_400mf"), square(32))],
    "resnet": [Sample(tv("resnet18"), square(32))],
    "shufflenet_v2": [Sample(tv("shufflenet_v2_x0_5"), square(32))],
    "squeezenet": [Sample(tv("squeezenet1_1"), square(48))],
    "swin": [Sample(tv("swin_t"), square(32), META)],
    "vgg": [Sample(tv("vgg11_bn"), square(32), META)],
    "vit": [Sample(tv("vit_b_32"), square(224), META)],
    "generic": [Sample(TutorialCNN, square(16))],
    "hf": [
        Sample(hf("ViT", patch_size=8, image_size=32), square(32)),
        Sample(hf("ResNet"), square(32)),
    ],
    "monai.densenet": [Sample(mn("DenseNet121", in_channels=1, out_channels=2), cube(32))],
    "monai.resnet": [Sample(mn("resnet10", n_input_channels=1, num_classes=2), cube(16))],
    "monai.senet": [Sample(mn("SEResNet50", in_channels=1, num_classes=2), cube(32), META)],
    "monai.efficientnet": [
        Sample(
            mn(
                "EfficientNetBN",
                model_name="efficientnet-b0",
                pretrained=False,
                in_channels=1,
                num_classes=2,
            ),
            cube(32),
        )
    ],  # fmt: skip
    "monai.vit": [
        Sample(
            mn(
                "ViT",
                in_channels=1,
                img_size=16,
                patch_size=8,
                hidden_size=48,
                mlp_dim=64,
                num_layers=2,
                num_heads=4,
                classification=True,
            ),
            cube(16),
        )
    ],  # fmt: skip
    "timm": [
        Sample(tm("resnet18"), square(64)),
        Sample(tm("vit_tiny_patch16_224"), square(224), META),
    ],
    "timm.convnext": [Sample(tm("convnext_atto"), square(64))],
    "timm.tresnet": [Sample(tm("tresnet_m"), square(64), META)],
    "timm.csatv2": [Sample(tm("csatv2"), square(64), META)],
    "timm.levitdistilled": [Sample(tm("levit_128s"), square(224), META)],
    "timm.naflexvit": [Sample(tm("naflexvit_base_patch16_gap"), square(64), META)],
    "timm.gemma4vitclassifier": [Sample(tm("gemma4_vit_167m"), square(96), META)],
    "timm.gemma4vitencoder": [Sample(tm("gemma4_vit_167m_enc"), square(96), META)],
}
ZOO_MODELS = {"torchvision": ["resnet18", "vit_b_16"], "timm": ["resnet18", "convnext_atto"]}


def builtin_plugins() -> dict[str, object]:
    return {
        ep.name: ep.load() for ep in distribution("zooadapt").entry_points if ep.group == "zooadapt"
    }


BUILTINS = builtin_plugins()


def declared_families(plugin: object) -> list[str]:
    return [d.item.name for d in za.make_plugin_manager(plugin).families()]


# -- every built-in plugin conforms ---------------------------------------------------------


def test_every_builtin_family_has_a_sample() -> None:
    declared = {name for plugin in BUILTINS.values() for name in declared_families(plugin)}
    assert declared == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_plugin_conforms(name: str) -> None:
    plugin = BUILTINS[name]
    models = {family: SAMPLES[family] for family in declared_families(plugin)}
    report = check_plugin(plugin, models, zoo_models=ZOO_MODELS.get(name, 2))
    assert report.ok, report


def test_the_hf_zoo_conforms_with_a_cached_repository(cache_repo, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4
    )
    transformers.ConvNextForImageClassification(config).save_pretrained(tmp_path / "c")
    cache_repo("tiny-org/convnext", tmp_path / "c")
    report = check_plugin(BUILTINS["hf"], {"hf": SAMPLES["hf"]}, zoo_models=1)
    assert not any("lists no models" in note for note in report.notes)


@pytest.mark.parametrize(
    ("family", "arch", "size", "device"),
    [
        ("timm", "resnet18", 64, None),
        ("timm.convnext", "convnext_atto", 64, None),
        ("timm", "vit_tiny_patch16_224", 224, META),
    ],
)
def test_timm_models_conform_among_all_installed_plugins(
    family: str, arch: str, size: int, device: str | None
) -> None:
    # The shared manager: the family must also win the model against every other plugin.
    check_family(family, tm(arch), input_shape=square(size), device=device)


def test_original_convnext_checkpoint_keys_rename_onto_timm(convnext_original_key) -> None:
    model = timm.create_model("convnext_atto")
    original = [convnext_original_key(key) for key in model.state_dict()]
    assert "downsample_layers.0.0.weight" in original
    check_family("timm.convnext", model, rules_checkpoint=original)
    # A key the rules cannot place is named, with the key it came from.
    report = family_report("timm.convnext", model, rules_checkpoint=[*original, "pwconv9.w"])
    assert [str(p) for p in report.problems] == [
        "[rename] renamed checkpoint key 'pwconv9.w' is not in the model"
    ]


def test_a_module_argument_is_checked_on_a_copy() -> None:
    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = check_family("resnet", model, input_shape=square(32))
    assert report.ok
    assert str(report) == "family 'resnet' (plugin 'resnet') on ResNet: conforms"
    assert model.fc.out_features == 1000
    assert model.conv1.in_channels == 3
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_headless_and_stemless_models_are_noted_not_failed() -> None:
    report = check_family("timm.csatv2", tm("csatv2"), device=META)
    assert report.ok
    assert any("in_chans=1 not checked: the model has no stem" in n for n in report.notes)
    report = check_family(
        "timm.gemma4vitencoder", tm("gemma4_vit_167m_enc"), input_shape=square(96), device=META
    )
    assert any("num_classes=3 not checked: the model has no head" in n for n in report.notes)


# -- broken families are reported precisely -------------------------------------------------


class Net(nn.Module):
    """stem (conv) -> body (linear) -> fc (linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x).mean((2, 3))))


class Flattening(Net):
    """Returns the logits flattened: the wrong output shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten()


class Depthwise(Net):
    """A grouped convolution first: not a stem zooadapt can adapt."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, groups=3)
        self.body = nn.Linear(3, 4)


NET = class_name(Net)
GROUPS = {"stem": r"^stem\.", "body": r"^body\.", "head": r"^fc\."}


def net_family(**kwargs: Any) -> Family:
    """A correct family for ``Net``; ``kwargs`` break it."""
    fields = {
        "name": "net",
        "classes": (NET, class_name(Flattening), class_name(Depthwise)),
        "head": "fc",
        "stem": "stem",
        "groups": GROUPS,
        **kwargs,
    }
    return Family(**fields)


def problems(family: Family, model: Any = Net, **kwargs: Any) -> list[str]:
    """The problems found, after checking that check_family raises with all of them."""
    report = family_report(family, model, **kwargs)
    with pytest.raises(ConformanceError) as info:
        check_family(family, model, **kwargs)
    assert str(info.value) == str(report)
    return [str(p) for p in report.problems]


def test_a_correct_family_conforms_hermetically() -> None:
    report = check_family(net_family(), Net)
    assert isinstance(report, ConformanceReport)
    assert report.ok
    assert report.problems == []
    assert str(report) == "family 'net' on Net: conforms"


def test_a_group_regex_that_matches_nothing() -> None:
    groups = {"stem": r"^stem\.", "ghost": r"^ghost\.", "body": r"^body\.", "head": r"^fc\."}
    assert problems(net_family(groups=groups)) == [
        r"[groups] group 'ghost' (regex '^ghost\\.') matches no parameter"
    ]


def test_a_parameter_in_two_groups() -> None:
    groups = {"stem": r"^stem\.", "body": r"^(body|fc)\.", "head": r"^fc\."}
    found = problems(net_family(groups=groups))
    assert found[:2] == [
        "[groups] parameter 'fc.weight' matches 2 groups: 'body', 'head'",
        "[groups] parameter 'fc.bias' matches 2 groups: 'body', 'head'",
    ]
    assert len(found) == 2


def test_a_parameter_in_no_group() -> None:
    groups = {"stem": r"^stem\.", "body": r"^body\.weight$", "head": r"^fc\."}
    assert problems(net_family(groups=groups)) == [
        "[groups] parameter 'body.bias' matches no group"
    ]


def test_many_ungrouped_parameters_are_listed_then_counted() -> None:
    found = problems(net_family(groups={"head": r"^fc\."}), tv("resnet18"))
    listed = [p for p in found if p.startswith("[groups]")]
    assert len(listed) == 11
    assert listed[0] == "[groups] parameter 'conv1.weight' matches no group"
    assert listed[10] == "[groups] 50 more parameters match no group or several"


def test_the_last_group_must_be_exactly_the_head() -> None:
    groups = {"stem": r"^stem\.", "body": r"^body\.weight$", "head": r"^(fc\.|body\.bias)"}
    assert problems(net_family(groups=groups)) == [
        "[groups] the last group 'head' must hold exactly the head's parameters (under 'fc'), "
        "but also holds 'body.bias'",
        '[freeze] after za.freeze(model, "backbone"), parameters outside the head are '
        "trainable: 'body.bias'",
    ]


def test_a_missing_head_path_suggests_the_closest_module() -> None:
    found = problems(net_family(head="fcc"))
    assert found == ["[head] head path 'fcc' does not exist in Net (did you mean 'fc'?)"]


def test_a_head_that_cannot_be_replaced() -> None:
    class WithSequentialHead(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(4, 2))

    family = net_family(match=lambda model: True)
    expected = (
        "head 'fc' is a Sequential; zooadapt replaces nn.Linear and 1x1 nn.Conv2d heads: "
        "point head at that layer, or declare reset_head"
    )
    assert problems(family, WithSequentialHead) == [f"[head] {expected}"]
    pm = za.make_plugin_manager()
    with pytest.raises(za.PluginError) as info:  # za.anatomy refuses with the same words
        za.anatomy(WithSequentialHead(), family=family, plugin_manager=pm)
    assert expected in str(info.value)


def test_a_headless_identity_head_needs_reset_head() -> None:
    class Headless(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Identity()

    family = net_family(match=lambda model: True)
    (found,) = problems(family, Headless)
    assert "is an nn.Identity (a headless model)" in found and "reset_head" in found
    with pytest.raises(za.PluginError, match="nn.Identity"):
        za.anatomy(Headless(), family=family, plugin_manager=za.make_plugin_manager())


def test_stems_that_are_missing_not_adaptable_or_not_first() -> None:
    assert problems(net_family(stem="stemm")) == [
        "[stem] stem path 'stemm' does not exist in Net (did you mean 'stem'?)"
    ]
    assert problems(net_family(stem="body")) == [
        "[stem] stem 'body' reads 4 input channels but the input has 3: the stem must be the "
        "layer that reads the image"
    ]
    assert problems(net_family(), Depthwise) == [
        "[stem] stem 'stem' is Conv2d; zooadapt can only change the input channels of an "
        "ungrouped convolution or a linear patch embedding"
    ]


def test_a_non_idempotent_rename_rule() -> None:
    rule = RenameRule(r"^fc\.", "fc.fc.", name="nest fc")
    assert problems(net_family(rename_rules=(rule,))) == [
        "[rename] rename rule 'nest fc' is not idempotent: 'fc.weight' -> 'fc.fc.weight' -> "
        "'fc.fc.fc.weight'; a rule must leave the keys it produces unchanged"
    ]


class NestingPlugin:
    """Adds a non-idempotent rule to every family through the hook."""

    @staticmethod
    @hookimpl
    def zooadapt_rename_rules(family: str) -> list[RenameRule]:
        return [RenameRule(r"^body\.", "body.body.", name=f"nest body of {family}")]


def test_rename_rules_from_other_plugins_are_checked_too() -> None:
    pm = za.make_plugin_manager(NestingPlugin)
    found = [str(p) for p in family_report(net_family(), Net, plugin_manager=pm).problems]
    assert found == [
        "[rename] rename rule 'nest body of net' is not idempotent: 'body.weight' -> "
        "'body.body.weight' -> 'body.body.body.weight'; a rule must leave the keys it produces "
        "unchanged"
    ]


def test_a_checkpoint_whose_keys_do_not_rename_onto_the_model() -> None:
    rule = RenameRule(r"^classifier\.", "fc.", name="old head")
    keys = ["stem.weight", "stem.bias", "body.weight", "trunk.bias", "classifier.weight"]
    found = problems(net_family(rename_rules=(rule,)), rules_checkpoint=keys)
    assert found == [
        "[rename] renamed checkpoint key 'trunk.bias' is not in the model",
        "[rename] model key 'body.bias' is missing from the renamed checkpoint",
        "[rename] model key 'fc.bias' is missing from the renamed checkpoint",
    ]


def test_a_checkpoint_file_for_the_rename_rules(tmp_path: Path) -> None:
    rule = RenameRule(r"^classifier\.", "fc.", name="old head")
    state = {k.replace("fc.", "classifier."): v for k, v in Net().state_dict().items()}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert check_family(net_family(rename_rules=(rule,)), Net, rules_checkpoint=path).ok
    (found,) = problems(net_family(), Net, rules_checkpoint=tmp_path / "missing.pth")
    assert found.startswith("[rename] reading ")
    assert "missing.pth does not exist" in found


def test_an_adapted_forward_that_fails() -> None:
    # The "head" is the body layer: replacing it breaks the layer after it.
    groups = {"stem": r"^stem\.", "body": r"^fc\.", "head": r"^body\."}
    assert problems(net_family(head="body", groups=groups)) == [
        "[head] the layer that produces the output is 'fc', not the declared head 'body': "
        "point head at 'fc'",
        "[forward] the adapted model's forward on an input of shape (2, 1, 64, 64) raised "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x2) "
        "(the unadapted model runs on (2, 3, 64, 64): the adaptation broke it)",
    ]


def test_an_input_the_model_does_not_accept_is_told_apart() -> None:
    (found,) = problems(net_family(), input_shape=(2, 3, 2, 2))
    assert found.startswith("[forward] the adapted model's forward on an input of shape ")
    assert found.endswith(
        "(the unadapted model fails on (2, 3, 2, 2) too: pass an input_shape it accepts)"
    )


def test_a_forward_of_the_wrong_shape() -> None:
    assert problems(net_family(), Flattening) == [
        "[forward] the adapted model's forward on an input of shape (2, 1, 64, 64) gave shape "
        "(6,), expected (2, 3)"
    ]


def test_an_adapt_that_fails() -> None:
    def refuse(model: nn.Module, num_classes: int) -> None:
        raise RuntimeError("no new head today")

    class WithIdentityHead(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Identity()

    family = net_family(match=lambda model: True, reset_head=refuse, groups=GROUPS)
    assert problems(family, WithIdentityHead) == [
        "[adapt] za.adapt(model, num_classes=3, in_chans=1) raised PluginError: plugin "
        "'<caller>' failed in family 'net' (reset_head): RuntimeError('no new head today')"
    ]


def test_a_family_that_does_not_own_the_model() -> None:
    assert problems(net_family(classes=("somewhere.Else",))) == [
        f"[owner] the family does not claim {NET}: list '{NET}' in Family.classes or give the "
        "family a match predicate"
    ]
    from zooadapt_plugins import generic

    class Mine:
        @staticmethod
        @hookimpl
        def zooadapt_families() -> list[Family]:
            return [net_family(classes=())]

    pm = za.make_plugin_manager(generic, Mine)
    found = [str(p) for p in family_report("net", Net, plugin_manager=pm).problems]
    assert found == [
        f"[owner] za.anatomy picks family 'generic' (plugin '{generic.__name__}') for {NET}, "
        f"not 'net': list '{NET}' in Family.classes"
    ]


def test_every_problem_is_collected_into_one_error() -> None:
    broken = net_family(
        head="fcc",
        groups={"stem": r"^stem\.", "ghost": r"^ghost\.", "head": r"^fc\."},
        rename_rules=(RenameRule(r"^fc\.", "fc.fc.", name="nest fc"),),
    )
    with pytest.raises(ConformanceError) as info:
        check_family(broken, Net)
    message = str(info.value)
    assert message.startswith("family 'net' on Net: 5 problems\n")
    for needle in ("'fcc'", "'ghost'", "'body.weight'", "'body.bias'", "'nest fc'"):
        assert needle in message
    assert "note: za.adapt, forward and za.freeze not checked" in message
    assert isinstance(info.value, AssertionError)
    assert isinstance(info.value, za.PluginError)


def test_an_unknown_family_name() -> None:
    pm = za.make_plugin_manager()
    with pytest.raises(
        ConformanceError, match="no family named 'nope' is declared; declared: none"
    ):
        check_family("nope", Net, plugin_manager=pm)


def test_a_factory_that_fails() -> None:
    def factory() -> nn.Module:
        raise ValueError("out of parts")

    with pytest.raises(ConformanceError, match=r"\[model\] building the model raised ValueError"):
        check_family(net_family(), factory)


# -- check_plugin ---------------------------------------------------------------------------


def zoo(**kwargs: Any) -> Zoo:
    fields = {"name": "nets", "models": lambda: ["net"], "build": lambda arch, weights: Net()}
    return Zoo(**{**fields, **kwargs})


def plugin_with(families: list[Family] = (), zoos: list[Zoo] = ()) -> type:
    class Plugin:
        @staticmethod
        @hookimpl
        def zooadapt_families() -> list[Family]:
            return list(families)

        @staticmethod
        @hookimpl
        def zooadapt_zoos() -> list[Zoo]:
            return list(zoos)

    return Plugin


def plugin_problems(plugin: object, *args: Any, **kwargs: Any) -> list[str]:
    report = plugin_report(plugin, *args, **kwargs)
    with pytest.raises(ConformanceError):
        check_plugin(plugin, *args, **kwargs)
    return [str(p) for p in report.problems]


def test_a_plugin_family_is_checked_on_its_zoo_models() -> None:
    report = check_plugin(plugin_with([net_family()], [zoo()]))
    assert report.ok
    report = check_plugin(plugin_with([net_family()]), {"net": Net})
    assert report.ok


def test_a_plugin_family_problem_is_labelled_with_family_and_model() -> None:
    broken = net_family(groups={"stem": r"^stem\.", "head": r"^fc\."})
    found = plugin_problems(plugin_with([broken]), {"net": [Net, Sample(Net, device=META)]})
    where = "family 'net' (plugin 'Plugin') on Net"
    expected = [
        f"{where}: [groups] parameter 'body.weight' matches no group",
        f"{where}: [groups] parameter 'body.bias' matches no group",
    ]
    assert found == expected * 2


def test_zoo_models_no_family_of_the_plugin_owns_are_noted() -> None:
    report = check_plugin(BUILTINS["torchvision"], zoo_models=["resnet18"])
    assert report.notes == ["no family of the plugin owns torchvision/resnet18"]


def test_a_family_left_without_a_model() -> None:
    assert plugin_problems(plugin_with([net_family()])) == [
        "[plugin] family 'net' was not checked: give a model for it, e.g. "
        "check_plugin(plugin, {'net': MyNet})"
    ]


def test_a_model_for_a_family_the_plugin_does_not_declare() -> None:
    found = plugin_problems(plugin_with([net_family()]), {"net": Net, "nett": Net})
    assert found == [
        "[plugin] a model was given for family 'nett', which the plugin does not declare; "
        "it declares: net"
    ]


def test_broken_zoos() -> None:
    def boom(arch: str, weights: Weights | None) -> nn.Module:
        raise RuntimeError(f"cannot build {arch}")

    weights = [
        Weights("nets/net", "a", "", file=None, default=True),  # type: ignore[arg-type]
        Weights("other/net", "b", "", file=None, default=True),  # type: ignore[arg-type]
    ]
    zoos = [
        zoo(name="empty", models=lambda: []),
        zoo(name="failing", models=lambda: ["net", "net"], build=boom),
        zoo(weights=lambda arch: weights),
    ]
    found = plugin_problems(plugin_with([], zoos), zoo_models=["net", "nope"])
    assert found == [
        "[zoo] zoo 'empty' lists no models",
        "[zoo] zoo 'failing' lists 'net' more than once",
        "[zoo] building 'failing/net' on the meta device raised RuntimeError: cannot build net",
        "[zoo] building 'failing/net' on the meta device raised RuntimeError: cannot build net",
        "[zoo] weights 'b' of 'nets/net' name the model 'other/net'",
        "[zoo] weights of 'nets/net' have several defaults: 'a', 'b'",
        "[zoo] no zoo of the plugin lists the model 'nope'",
    ]


class RaisingPlugin:
    @staticmethod
    @hookimpl
    def zooadapt_families() -> list[Family]:
        raise RuntimeError("kaput")


class MisspelledPlugin:
    @staticmethod
    @hookimpl
    def zooadapt_familes() -> list[Family]:
        return []


class HooklessPlugin:
    @staticmethod
    def zooadapt_families() -> list[Family]:
        return []


def test_plugins_whose_hooks_fail_or_are_missing() -> None:
    (found,) = plugin_problems(RaisingPlugin)
    assert found.startswith("[plugin] zooadapt_families raised PluginError: zooadapt: plugin ")
    assert "'RaisingPlugin' failed in zooadapt_families" in found
    assert "kaput" in found
    (found,) = plugin_problems(MisspelledPlugin)
    assert found.startswith("[plugin] registering the plugin failed: plugin ")
    assert "zooadapt_familes" in found
    assert plugin_problems(HooklessPlugin) == [
        "[plugin] the plugin implements no zooadapt hook: decorate zooadapt_families, "
        "zooadapt_zoos or zooadapt_rename_rules with @zooadapt.hookimpl"
    ]


def test_a_head_that_does_not_produce_the_output() -> None:
    """A family pointing head at an inner linear layer: the trace shows the real one."""
    family = net_family(head="body", match=lambda model: True)
    found = [p for p in problems(family) if "produces the output" in p]
    assert found == [
        "[head] the layer that produces the output is 'fc', not the declared head 'body': "
        "point head at 'fc'"
    ]


def test_a_data_config_and_labels_that_do_not_fit_the_model() -> None:
    config = za.DataConfig((4, 64, 64), (0.5,) * 4, (0.25,) * 4)
    assert problems(net_family(data_config=config, labels=("cat", "dog", "owl"))) == [
        "[data] Family.data_config has input_size (4, 64, 64); the model reads (3, 64, 64): "
        "give (channels, *spatial) of the pretrained input",
        "[data] Family.labels has 3 names for a head of 2 classes",
    ]
    fitting = za.DataConfig((3, 64, 64), (0.5,) * 3, (0.25,) * 3)
    assert check_family(net_family(data_config=fitting, labels=("cat", "dog")), Net).ok


def test_a_data_config_function_that_raises_is_reported() -> None:
    def broken(model: nn.Module) -> za.DataConfig:
        raise KeyError("mean")

    found = problems(net_family(data_config=broken))
    assert found[0] == "[data] Family.data_config raised KeyError: 'mean'"
    assert "failed in family 'net' (data_config): KeyError('mean')" in found[1]  # za.adapt
