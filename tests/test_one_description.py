"""One description of a model, computed once and read everywhere (issue 12).

Each test here failed before the fix it names: the anatomy's facts (classes, channels
through the stem layout, spatial dimensions, input size), the family travelling with the
model, families validated before any change, the generic fallback proving its head, and a
consistent public API.
"""

from __future__ import annotations

import importlib
import threading

import pytest
import timm
import torch
from torch import nn

import zooadapt as za
from zooadapt._core.meta import empty_init

# -- models no built-in family knows ------------------------------------------------------


class Volume(nn.Module):
    """A tiny 3-D classifier: the generic family must see three spatial dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(2, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.stem(x).mean((2, 3, 4)))


class Custom(nn.Module):
    """A model with an unusual layout, described by a family given as ``family=``."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.trunk = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        return self.out(self.trunk(self.entry(x)).mean((2, 3)))


CUSTOM = za.Family(
    name="custom",
    head="out",
    stem="entry",
    groups={"entry": r"^entry\.", "trunk": r"^trunk\.", "head": r"^out\."},
    input_size=(32, 32),
)


class CustomPlugin:
    """A plugin whose family owns :class:`Custom` by class (only in its own manager)."""

    @za.hookimpl
    def zooadapt_families(self):
        yield za.Family(
            name="custom_pm",
            classes=(f"{Custom.__module__}.{Custom.__qualname__}",),
            head="out",
            stem="entry",
            groups={"body": r"^(entry|trunk)\.", "head": r"^out\."},
        )


class TinyUnet(nn.Module):
    """Segmentation-shaped (as segmentation_models_pytorch's Unet): no classifier head.

    The encoder has a 1x1 downsample convolution, which the old fallback took as the head.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict(
            {"conv": nn.Conv2d(3, 8, 3, stride=2, padding=1), "downsample": nn.Conv2d(8, 8, 1)}
        )
        self.decoder = nn.Conv2d(8, 8, 3, padding=1)
        self.segmentation_head = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        features = self.encoder["downsample"](self.encoder["conv"](x))
        up = nn.functional.interpolate(self.decoder(features), scale_factor=2)
        return self.segmentation_head(up)


class ClipVisual(nn.Module):
    """As open_clip's visual tower: an MLP inside, the output projected by a bare tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 4, stride=4)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.ln_post = nn.LayerNorm(8)
        self.proj = nn.Parameter(torch.randn(8, 6))

    def forward(self, x):
        tokens = self.conv1(x).flatten(2).transpose(1, 2)
        return self.ln_post(self.mlp(tokens).mean(1)) @ self.proj


class MlpHead(nn.Module):
    """``self.head = nn.Sequential(Linear, ReLU, Linear)``: the old fallback named two groups
    ``head`` and merged them silently."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


# -- the anatomy's facts --------------------------------------------------------------------


def test_the_anatomy_carries_classes_channels_dimensions_and_size():
    resnet = za.anatomy(za.adapt("resnet18", num_classes=7, in_chans=1, pretrained=False))
    assert (resnet.num_classes, resnet.in_chans, resnet.spatial_dims) == (7, 1, 2)
    assert resnet.input_size == (224, 224)
    inception = za.adapt("inception_v3", pretrained=False, device="meta")
    assert za.anatomy(inception).input_size == (299, 299)
    vit = za.adapt("timm/vit_tiny_patch16_384", pretrained=False, device="meta")
    assert za.anatomy(vit).input_size == (384, 384)
    volume = za.anatomy(Volume())
    assert (volume.family, volume.spatial_dims, volume.in_chans, volume.num_classes) == (
        "generic",
        3,
        2,
        3,
    )
    assert za.anatomy(Custom(), family=CUSTOM).input_size == (32, 32)


def test_tresnet_in_chans_reads_through_the_stem_fold(tmp_path):
    """The stem of TResNet reads 16 positions per channel; saving used to record 48."""
    model = za.adapt("timm/tresnet_m", in_chans=1, num_classes=3, pretrained=False).eval()
    assert model.body.conv1.conv.weight.shape[1] == 16
    assert za.anatomy(model).in_chans == 1
    estimate = za.estimate_memory("timm/tresnet_m", batch_size=2, in_chans=1, input_size=64)
    assert estimate.in_chans == 1
    path = za.save(model, tmp_path / "tresnet.safetensors")
    loaded = za.load(path).eval()
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_headless_models_save_and_load(tmp_path):
    model = za.adapt("timm/eva02_tiny_patch14_224", pretrained=False).eval()
    assert isinstance(model.head, nn.Identity)
    assert za.anatomy(model).num_classes is None
    loaded = za.load(za.save(model, tmp_path / "eva.safetensors")).eval()
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(loaded(x), model(x))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    za.save_training(model, tmp_path / "run.pt", optimizer)
    resumed = za.load_training(tmp_path / "run.pt")
    torch.testing.assert_close(resumed.model.eval()(x), model(x))


def test_save_training_of_a_model_no_family_knows(tmp_path):
    linear = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1)
    za.save_training(linear, tmp_path / "run.pt", optimizer)
    other = nn.Linear(4, 2)
    za.load_training(tmp_path / "run.pt", model=other)
    assert torch.equal(other.weight, linear.weight)
    with pytest.raises(za.CheckpointError, match="model first"):
        za.save_training(tmp_path / "run.pt", linear, optimizer)  # the old argument order


def test_a_headless_levit_is_described_frozen_and_adapted():
    model = timm.create_model("levit_128s", num_classes=0)
    anatomy = za.anatomy(model)
    assert anatomy.head == ("head", "head_dist") and anatomy.num_classes is None
    za.freeze(model)
    assert not any(p.requires_grad for p in model.parameters())
    za.adapt(model, num_classes=5)
    assert za.anatomy(model).head == ("head.linear", "head_dist.linear")
    assert model.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 5)


def test_pretrained_false_with_a_tagged_name_means_random_init(monkeypatch, offline, hub_dir):
    def no_weights(*args, **kwargs):
        raise AssertionError("no weights may be looked up")

    adapt_module = importlib.import_module("zooadapt.adapt")
    monkeypatch.setattr(adapt_module, "select_weights", no_weights)
    monkeypatch.setattr(adapt_module, "ensure_local", no_weights)
    model = za.adapt("resnet18.IMAGENET1K_V1", pretrained=False)
    assert isinstance(model, nn.Module)
    assert za.adapt("timm/resnet18.a1_in1k", pretrained=False, device="meta") is not None


# -- the family travels with the model -----------------------------------------------------


def test_a_family_given_once_serves_every_later_call(tmp_path):
    model = za.adapt(Custom(), num_classes=4, family=CUSTOM)
    assert za.anatomy(model).family == "custom"
    za.freeze(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["out.weight", "out.bias"]
    assert "family 'custom'" in za.summary(model)
    assert za.estimate_memory(model, batch_size=2).input_size == (32, 32)
    small = {"batch_size": 2, "steps": 1, "warmup": 0, "progress": False}
    (result,) = za.bench(model, settings="backbone", num_classes=4, **small)
    assert result.trainable == 8 * 4 + 4 and result.input_size == (32, 32)
    optimizer = za.optimizer(model, lr=0.1)
    assert [g["name"] for g in optimizer.param_groups] == ["head", "head.no_decay"]
    path = za.save(model, tmp_path / "custom.safetensors")
    assert za.saving.read_metadata(path)["family"] == "custom"


def test_a_family_from_a_plugin_manager_serves_every_later_call():
    pm = za.make_plugin_manager(CustomPlugin())
    model = Custom()
    za.adapt(model, in_chans=1, plugin_manager=pm)
    assert za.anatomy(model).family == "custom_pm"  # without the manager: still found
    assert za.anatomy(model).in_chans == 1
    za.freeze(model, "body")
    assert [g["name"] for g in za.param_groups(model, lr=0.1)] == ["head"]
    assert za.estimate_memory(model, batch_size=2).in_chans == 1


def test_the_lightning_callback_takes_the_family():
    from zooadapt.lightning import ZooAdaptFinetuning

    callback = ZooAdaptFinetuning(family=CUSTOM, model_attr=None)
    model = Custom()

    class Trainer:
        optimizers: list = []

    callback.setup(Trainer(), model, "fit")
    assert za.anatomy(model).family == "custom"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["out.weight", "out.bias"]


def test_copies_keep_the_family_and_pickles_drop_it(tmp_path):
    import copy

    model = za.adapt(Custom(), family=CUSTOM)
    assert za.anatomy(copy.deepcopy(model)).family == "custom"
    torch.save(model, tmp_path / "whole.pt")
    restored = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert restored.__dict__.get("_zooadapt_resolved") is None


# -- families validated once, before any change --------------------------------------------


def test_duplicate_group_names_are_refused_before_any_change():
    family = za.Family(
        name="twice",
        head="out",
        stem="entry",
        groups=[("body", r"^entry\."), ("body", r"^trunk\."), ("head", r"^out\.")],
    )
    model = Custom()
    before = model.out
    with pytest.raises(za.PluginError, match="'body' is declared 2 times") as info:
        za.adapt(model, num_classes=2, family=family)
    assert model.out is before and info.value.plugin == "<caller>"


def test_the_generic_fallback_refuses_a_segmentation_model():
    model = TinyUnet()
    weight = model.encoder["downsample"].weight
    with pytest.raises(za.FamilyNotFoundError, match="cannot show which layer"):
        za.adapt(model, num_classes=3)
    assert model.encoder["downsample"].weight is weight


def test_the_generic_fallback_refuses_a_layer_followed_by_a_projection():
    with pytest.raises(za.FamilyNotFoundError, match="declare a family"):
        za.anatomy(ClipVisual())


def test_the_generic_fallback_names_every_group_once():
    model = MlpHead()
    anatomy = za.anatomy(model)
    assert anatomy.head == ("head.2",)
    assert list(anatomy.groups) == ["body", "pre_head", "head"]
    assert anatomy.groups["head"] == ["head.2.weight", "head.2.bias"]


def test_a_reset_head_that_fails_half_way_changes_nothing():
    def broken_reset(model, num_classes):
        model.out = nn.Linear(8, num_classes)
        raise RuntimeError("half-way")

    family = za.Family(
        name="broken",
        head=lambda m: ("out",),
        stem="entry",
        groups={"body": r"^(entry|trunk)\.", "head": r"^out\."},
        reset_head=broken_reset,
    )
    model = Custom()
    model.out = nn.Identity()  # a headless model: reset_head is used
    keys = list(model.state_dict())
    with pytest.raises(za.PluginError, match="half-way"):
        za.adapt(model, num_classes=3, family=family)
    assert isinstance(model.out, nn.Identity) and list(model.state_dict()) == keys


@pytest.mark.usefixtures("strict_plugins")
def test_a_failing_family_names_its_plugin():
    class Broken:
        @za.hookimpl
        def zooadapt_families(self):
            def match(model):
                raise ValueError("boom")

            yield za.Family(name="broken", head="out", stem=None, groups={}, match=match)

    pm = za.make_plugin_manager(Broken())
    with pytest.raises(za.PluginError) as info:
        za.anatomy(Custom(), plugin_manager=pm)
    assert info.value.plugin is not None and info.value.plugin in str(info.value)


# -- the rest of the list ------------------------------------------------------------------


def test_torchscript_scripts_a_frozen_model():
    model = za.freeze(za.adapt("resnet18", num_classes=3, pretrained=False), "layer3")
    with pytest.warns(FutureWarning):
        scripted = torch.jit.script(model)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(scripted.eval()(x), model.eval()(x))


def test_freeze_last_trains_the_last_stage_and_the_head():
    model = za.freeze(za.adapt("resnet18", pretrained=False), "last")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    za.unfreeze(model)
    za.freeze(model, "backbone")
    za.unfreeze(model, "last")
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_a_conv_stem_vit_changes_input_channels():
    """torchvision's ViT with ``conv_stem_configs``: the first stem convolution adapts."""
    import copy

    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    torch.manual_seed(0)
    configs = [ConvStemConfig(out_channels=8, kernel_size=3, stride=2) for _ in range(4)]
    rgb = VisionTransformer(32, 16, 1, 2, 16, 16, conv_stem_configs=configs).eval()
    gray = za.adapt(copy.deepcopy(rgb), in_chans=1)
    anatomy = za.anatomy(gray)
    assert anatomy.stem == "conv_proj.conv_bn_relu_0.0" and anatomy.in_chans == 1
    image = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(gray(image), rgb(image.expand(-1, 3, -1, -1)))


def test_bench_takes_one_setting_a_module_and_a_tuple_size():
    small = {"batch_size": 2, "warmup": 0, "steps": 1, "progress": False}
    (result,) = za.bench("resnet18", settings="backbone", input_size=(32, 48), **small)
    assert result.setting == "backbone" and result.input_size == (32, 48)
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    results = za.bench([model, "resnet18"], settings=["none", "last"], input_size=32, **small)
    assert [(r.model, r.setting) for r in results] == [
        ("torchvision/resnet18", "none"),
        ("torchvision/resnet18", "last"),
        ("resnet18", "none"),
        ("resnet18", "last"),
    ]
    assert model.fc.out_features == 3 and all(p.requires_grad for p in model.parameters())


def test_input_size_is_an_int_or_a_tuple_everywhere():
    wide = za.estimate_memory("resnet18", batch_size=2, input_size=(64, 96))
    assert wide.input_size == (64, 96) and "3x64x96" in str(wide)
    volume = za.estimate_memory(Volume(), batch_size=2, input_size=8)
    assert volume.input_size == (8, 8, 8) and volume.in_chans == 2
    with pytest.raises(za.AdaptError, match=r"\(height, width\)"):
        za.estimate_memory("resnet18", batch_size=2, input_size=(64, 64, 64))


def test_an_unknown_optimizer_is_an_optimizer_error():
    model = za.adapt("resnet18", pretrained=False, device="meta")
    for call in (
        lambda: za.optimizer(model, "adamx", lr=1e-3),
        lambda: za.estimate_memory("resnet18", batch_size=2, opt="adamx"),
        lambda: za.bench("resnet18", opt="adamx", progress=False),
    ):
        with pytest.raises(za.OptimizerError, match="unknown optimizer 'adamx'") as info:
            call()
        assert not isinstance(info.value, za.FreezeError)


def test_unfreeze_keeps_the_optimizers_no_decay_and_layer_decay():
    model = za.freeze(za.adapt("resnet18", num_classes=3, pretrained=False), "backbone")
    opt = za.optimizer(model, lr=1e-2, weight_decay=0.05, layer_decay=0.5, no_decay=[r"^fc\.w"])
    assert [g["name"] for g in opt.param_groups] == ["head.no_decay"]
    za.unfreeze(model, "layer4", optimizer=opt)
    za.unfreeze(model, "layer3", optimizer=opt)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["layer4"] == pytest.approx(1e-2 * 0.5)
    assert rates["layer3"] == pytest.approx(1e-2 * 0.25)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.layer4[0].conv1.weight) in decayed and id(model.fc.weight) not in decayed


def test_a_timm_model_registered_later_is_found():
    from timm.models import register_model
    from timm.models.resnet import resnet10t

    name = "zooadapt_test_late_resnet"
    assert name not in za.list_models("timm/*")

    def late(pretrained=False, **kwargs):
        return resnet10t(pretrained=pretrained, **kwargs)

    late.__name__ = name
    register_model(late)
    assert f"timm/{name}" in za.list_models("timm/*")
    assert za.adapt(name, pretrained=False, device="meta") is not None


def test_meta_construction_is_scoped_to_its_thread():
    """While one thread builds on meta, a model built in another thread is real."""
    inside, done = threading.Event(), threading.Event()
    built: dict[str, nn.Module] = {}

    def on_meta():
        with empty_init():
            inside.set()
            done.wait(5)
            built["meta"] = nn.Linear(2, 2)

    worker = threading.Thread(target=on_meta)
    worker.start()
    assert inside.wait(5)
    built["real"] = nn.Linear(2, 2)
    done.set()
    worker.join(5)
    assert not built["real"].weight.is_meta and built["meta"].weight.is_meta
    assert nn.Module.register_parameter.__qualname__ == "Module.register_parameter"


#: Public functions that take a model but never consult its family (they look at
#: ``requires_grad`` flags or wrappers only).
FAMILY_FREE = {
    "adapter_names",  # reads parameter names only
    "first_conv",
    "freeze_state",
    "load_freeze_state",
    "load_report",  # reads what adapt recorded
    "lora_settings",  # reads what za.lora recorded
    "merge_lora",  # folds PEFT's layers, whichever family
    "meta_copy",
    "output_layer",
    "output_layers",
    "rewrap",
    "unwrap",
}


def test_every_public_function_taking_a_model_takes_family_and_plugin_manager():
    import inspect

    from zooadapt.lightning import ZooAdaptFinetuning

    checked = []
    for name in za.__all__:
        obj = getattr(za, name)
        if not callable(obj) or isinstance(obj, type) and not issubclass(obj, za.FeatureCache):
            continue
        parameters = inspect.signature(obj).parameters
        first = next(iter(parameters), "")
        if not first.startswith("model") or name in FAMILY_FREE:
            continue
        checked.append(name)
        assert {"family", "plugin_manager"} <= set(parameters), name
        for keyword in ("family", "plugin_manager"):
            assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (name, keyword)
    assert {"adapt", "anatomy", "bench", "estimate_memory", "save", "save_training"} <= set(checked)
    assert {"family", "plugin_manager"} <= set(inspect.signature(ZooAdaptFinetuning).parameters)


def test_a_later_adapt_keeps_the_family_of_the_manager_given_first():
    model = za.adapt(Custom(), plugin_manager=za.make_plugin_manager(CustomPlugin()))
    za.adapt(model, num_classes=3)  # no manager: the shared one would pick "generic"
    assert za.anatomy(model).family == "custom_pm" and model.out.out_features == 3
