"""``za.adapt``: names, arguments, the generic family, and no half-modified models."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zooadapt as za


class TutorialNet(nn.Module):
    """The CNN from PyTorch's CIFAR-10 tutorial: a model no family plugin declares."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


# -- names -----------------------------------------------------------------------------


def test_unqualified_and_qualified_names_build_the_same_architecture():
    a = za.adapt("resnet18", pretrained=False, device="meta")
    b = za.adapt("torchvision/resnet18", pretrained=False, device="meta")
    assert type(a) is type(b) and len(a.state_dict()) == len(b.state_dict())


def test_unknown_name_suggests_close_names():
    with pytest.raises(za.ModelNotFoundError, match="torchvision/resnet152"):
        za.adapt("resnet1522", pretrained=False)


def test_unknown_zoo_lists_zoos():
    with pytest.raises(za.ModelNotFoundError, match="torchvision"):
        za.adapt("nozoo/resnet18", pretrained=False)


def test_list_models_filters_bare_and_qualified_names():
    found = za.list_models("resnet1*")
    assert found[:3] == ["torchvision/resnet101", "torchvision/resnet152", "torchvision/resnet18"]
    timm_names = [f"timm/{a}" for a in timm.list_models("resnet1*")]
    assert set(found[3 : 3 + len(timm_names)]) == set(timm_names)
    assert found[3 + len(timm_names) :] == [f"monai/resnet{n}" for n in (10, 101, 152, 18)]
    assert za.list_models("torchvision/vit_b_*") == ["torchvision/vit_b_16", "torchvision/vit_b_32"]


def test_model_kwargs_reach_the_builder_and_bad_ones_are_named():
    model = za.adapt("mobilenet_v3_small", pretrained=False, device="meta", dropout=0.5)
    assert model.classifier[2].p == 0.5
    with pytest.raises(za.AdaptError, match="no_such_arg"):
        za.adapt("resnet18", pretrained=False, no_such_arg=1)


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
@pytest.mark.parametrize("argument", ["num_classes", "in_chans"])
def test_counts_must_be_positive_ints(argument, bad):
    with pytest.raises(za.AdaptError, match=argument):
        za.adapt("resnet18", pretrained=False, device="meta", **{argument: bad})


def test_a_pretrained_tag_needs_a_model_name():
    with pytest.raises(za.AdaptError, match="IMAGENET1K_V1"):
        za.adapt(TutorialNet(), pretrained="IMAGENET1K_V1")


def test_a_module_no_family_understands():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(za.FamilyNotFoundError, match="Sequential"):
        za.adapt(model, num_classes=2)


@pytest.mark.parametrize("stem_init", ["mean", [0, 9, 1], [0]])
def test_bad_stem_init_leaves_the_model_untouched(stem_init):
    model = TutorialNet()
    before, conv1, fc3 = snapshot(model), model.conv1, model.fc3
    with pytest.raises(za.AdaptError):
        za.adapt(model, num_classes=3, in_chans=3 if stem_init != [0] else 2, stem_init=stem_init)
    assert model.conv1 is conv1 and model.fc3 is fc3
    assert_unchanged(model, before)


def test_in_chans_without_a_stem_is_an_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(za.AdaptError, match="no stem"):
        za.adapt(mlp, in_chans=1)


# -- behaviour -----------------------------------------------------------------------------


def test_generic_family_adapts_a_tutorial_network():
    model = TutorialNet()
    conv2 = model.conv2.weight.clone()
    za.adapt(model, num_classes=3, in_chans=1)
    anatomy = za.anatomy(model)
    assert (anatomy.family, anatomy.head, anatomy.stem) == ("generic", ("fc3",), "conv1")
    assert list(anatomy.groups) == ["conv1", "conv2", "fc1", "fc2", "head"]
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert torch.equal(model.conv2.weight, conv2)


def test_generic_family_splits_a_sequential_classifier():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 9))
    )
    za.adapt(model, num_classes=2)
    anatomy = za.anatomy(model)
    assert anatomy.groups == {
        "0": ["0.weight", "0.bias"],
        "2": ["2.0.weight", "2.0.bias"],
        "head": ["2.1.weight", "2.1.bias"],
    }


def test_same_class_count_keeps_the_pretrained_head():
    model = TutorialNet()
    head = model.fc3
    assert za.adapt(model, num_classes=10).fc3 is head


def test_new_head_keeps_device_and_dtype():
    model = TutorialNet().double()
    za.adapt(model, num_classes=4)
    assert model.fc3.weight.dtype == torch.float64
    meta = za.adapt("resnet18", num_classes=4, pretrained=False, device="meta")
    assert meta.fc.weight.is_meta


def test_returns_the_zoos_own_class_changed_in_place():
    import torchvision

    model = torchvision.models.resnet18()
    result = za.adapt(model, num_classes=3)
    assert result is model and type(result) is torchvision.models.ResNet


def test_dtype_argument_converts_the_result():
    model = za.adapt("resnet18", num_classes=3, pretrained=False, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_num_classes_attribute_follows_the_new_head():
    model = za.adapt("squeezenet1_1", num_classes=5, pretrained=False, device="meta")
    assert model.num_classes == 5 and model.classifier[1].out_channels == 5


def test_inception_transform_input_is_switched_off_for_non_rgb_input():
    rgb = za.adapt("inception_v3", pretrained=False, device="meta", transform_input=True)
    assert rgb.transform_input is True
    gray = za.adapt(
        "inception_v3", in_chans=1, pretrained=False, device="meta", transform_input=True
    )
    assert gray.transform_input is False


def test_summary_lists_groups_and_trainable_counts():
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    text = za.summary(model)
    assert "layer1" in text and "head" in text
    layer1 = next(line for line in text.splitlines() if line.startswith("layer1"))
    total = sum(p.numel() for p in model.layer1.parameters())
    assert layer1.split()[1:] == [f"{total:,}", "0", f"{total:,}"]


def test_freeze_argument_freezes_after_adapting():
    model = za.adapt("resnet18", num_classes=3, pretrained=False, freeze="layer2")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    model.train()
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)


def test_bad_freeze_spec_leaves_a_module_untouched():
    model = TutorialNet()
    before, fc3 = snapshot(model), model.fc3
    with pytest.raises(za.FreezeError, match="conv1, conv2, fc1, fc2, head"):
        za.adapt(model, num_classes=3, in_chans=1, freeze="nope")
    assert model.fc3 is fc3 and model.conv1.in_channels == 3
    assert all(p.requires_grad for p in model.parameters())
    assert_unchanged(model, before)
