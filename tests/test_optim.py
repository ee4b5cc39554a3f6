"""za.param_groups / za.optimizer: named groups, real learning rates, no decay on norms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zooadapt as za


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return za.adapt("resnet18", num_classes=4, pretrained=False)


def by_name(groups) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def ids(tensors) -> set[int]:
    return {id(t) for t in tensors}


def test_only_trainable_tensors_each_exactly_once(resnet):
    za.freeze(resnet, "layer2")
    groups = za.param_groups(resnet, lr=1e-3, weight_decay=0.05)
    held = [id(p) for g in groups for p in g["params"]]
    assert len(held) == len(set(held))
    assert set(held) == ids(p for p in resnet.parameters() if p.requires_grad)
    assert [g["name"] for g in groups] == [
        "layer3",
        "layer3.no_decay",
        "layer4",
        "layer4.no_decay",
        "head",
        "head.no_decay",
    ]


def test_no_decay_groups_hold_exactly_the_norm_and_bias_tensors(resnet):
    groups = za.param_groups(resnet, lr=1e-3, weight_decay=0.05)
    norms = [m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = ids(p for m in norms for p in m.parameters()) | {id(resnet.fc.bias)}
    no_decay = ids(p for g in groups if g["name"].endswith(".no_decay") for p in g["params"])
    decay = ids(p for g in groups if not g["name"].endswith(".no_decay") for p in g["params"])
    assert no_decay == expected
    assert decay == ids(m.weight for m in resnet.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert {g["weight_decay"] for g in groups if g["name"].endswith(".no_decay")} == {0.0}
    assert {g["weight_decay"] for g in groups if not g["name"].endswith(".no_decay")} == {0.05}


def test_zero_weight_decay_gives_one_group_per_freeze_group(resnet):
    groups = za.param_groups(resnet, lr=1e-3)
    assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert {g["weight_decay"] for g in groups} == {0.0}


def test_extra_no_decay_regexes(resnet):
    groups = za.param_groups(resnet, lr=1e-3, weight_decay=0.1, no_decay=[r"^fc\.weight$"])
    assert "head" not in by_name(groups)
    assert ids(by_name(groups)["head.no_decay"]["params"]) == ids(resnet.fc.parameters())


def test_lr_range_is_geometric_from_first_trainable_group_to_head(resnet):
    za.freeze(resnet, "layer1")
    low, high = 1e-5, 1e-2
    groups = by_name(za.optimizer(resnet, lr=(low, high), weight_decay=0.0).param_groups)
    names = ["layer2", "layer3", "layer4", "head"]
    assert list(groups) == names
    # independent computation: equal steps in log space
    step = (math.log(high) - math.log(low)) / (len(names) - 1)
    for k, name in enumerate(names):
        assert groups[name]["lr"] == pytest.approx(math.exp(math.log(low) + k * step), rel=1e-12)
    assert groups["layer2"]["lr"] == low and groups["head"]["lr"] == high
    ratios = [groups[b]["lr"] / groups[a]["lr"] for a, b in zip(names, names[1:], strict=False)]
    assert ratios == pytest.approx([10.0] * 3, rel=1e-12)


def test_layer_decay_writes_the_real_lr(resnet):
    za.freeze(resnet, "stem")
    opt = za.optimizer(resnet, "sgd", lr=0.1, layer_decay=0.5, weight_decay=1e-4, momentum=0.9)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    expected = {"head": 0.1, "layer4": 0.05, "layer3": 0.025, "layer2": 0.0125, "layer1": 0.00625}
    for name, lr in expected.items():
        assert lrs[name] == lr and lrs[f"{name}.no_decay"] == lr
    assert "stem" not in lrs and "stem.no_decay" not in lrs
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.1


def test_lr_dict_by_group_name(resnet):
    za.freeze(resnet, "layer3")
    lrs = {"layer4": 1e-4, "head": 1e-2, "stem": 5.0}  # frozen groups may be named
    groups = za.param_groups(resnet, lr=lrs)
    assert [(g["name"], g["lr"]) for g in groups] == [("layer4", 1e-4), ("head", 1e-2)]
    with pytest.raises(za.OptimizerError, match=r"no lr for trainable \['layer4'\]"):
        za.param_groups(resnet, lr={"head": 1e-2})
    with pytest.raises(za.OptimizerError, match="unknown groups"):
        za.param_groups(resnet, lr={"layer4": 1e-4, "head": 1e-2, "layer5": 1.0})


@pytest.mark.parametrize(
    ("lr", "layer_decay", "match"),
    [
        ((1e-2, 1e-4), None, "low <= high"),
        ((0.0, 1e-3), None, "low <= high"),
        ((-1e-3, 1e-3), None, "low <= high"),
        ((1e-3,), None, "pair"),
        (1e-3, 0.0, "layer_decay must be a positive"),
        ((1e-4, 1e-3), 0.5, "layer_decay needs a single number"),
        (-1e-3, None, "non-negative"),
        ("fast", None, "lr must be"),
    ],
)
def test_bad_learning_rates(resnet, lr, layer_decay, match):
    with pytest.raises(za.OptimizerError, match=match):
        za.param_groups(resnet, lr=lr, layer_decay=layer_decay)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("AdamW", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        (torch.optim.RMSprop, torch.optim.RMSprop),
    ],
)
def test_optimizer_by_name_or_class(resnet, name, cls):
    za.freeze(resnet)
    opt = za.optimizer(resnet, name, lr=1e-3)
    assert type(opt) is cls
    assert [g["name"] for g in opt.state_dict()["param_groups"]][0].startswith("head")


def test_weight_decay_defaults_to_the_classes_own(resnet):
    opt = za.optimizer(resnet, "adamw", lr=1e-3)
    assert opt.defaults["weight_decay"] == 0.01
    assert by_name(opt.param_groups)["layer1"]["weight_decay"] == 0.01
    assert by_name(opt.param_groups)["layer1.no_decay"]["weight_decay"] == 0.0
    assert "layer1.no_decay" not in by_name(za.optimizer(resnet, "sgd", lr=1e-3).param_groups)
    assert type(za.optimizer(resnet, "rprop", lr=1e-3)) is torch.optim.Rprop
    with pytest.raises(za.OptimizerError, match="takes no weight_decay"):
        za.optimizer(resnet, "rprop", lr=1e-3, weight_decay=0.1)


def test_unknown_optimizer_and_nothing_trainable(resnet):
    with pytest.raises(za.OptimizerError, match="unknown optimizer 'adamx'.*AdamW"):
        za.optimizer(resnet, "adamx", lr=1e-3)
    za.freeze(resnet, 6)
    with pytest.raises(za.OptimizerError, match="no trainable parameters"):
        za.optimizer(resnet, lr=1e-3)


def test_optimizer_step_trains_only_the_trainable_groups(resnet):
    za.freeze(resnet, "layer3")
    opt = za.optimizer(resnet, lr=(1e-3, 1e-2), weight_decay=0.05)
    before = {n: p.detach().clone() for n, p in resnet.named_parameters()}
    resnet.train()
    resnet(torch.rand(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    changed = {n for n, p in resnet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in resnet.named_parameters() if p.requires_grad}
    assert all(n.startswith(("layer4.", "fc.")) for n in changed)
