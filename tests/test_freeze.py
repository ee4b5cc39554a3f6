"""za.freeze / za.unfreeze: freeze specs, the BatchNorm policy, errors, resumable schedules."""

from __future__ import annotations

import copy
import json

import pytest
import timm.layers
import torch
from torch import nn

import zooadapt as za
from zooadapt.freeze import HOLD
from zooadapt.memory import measure_step

RESNET_GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return za.adapt("resnet18", num_classes=4, pretrained=False)


def trainable_groups(model: nn.Module) -> dict[str, bool | None]:
    """Group -> True (all trainable), False (all frozen), None (mixed)."""
    params = dict(model.named_parameters())
    out = {}
    for group, names in za.anatomy(model).groups.items():
        flags = {params[n].requires_grad for n in names}
        out[group] = flags.pop() if len(flags) == 1 else None
    return out


def snapshot(model: nn.Module) -> dict:
    """Everything a failed call must leave alone."""
    return {
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "held": [n for n, m in model.named_modules() if HOLD in vars(m)],
        "freeze": za.freeze_state(model),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["grad"] == before["grad"]
    assert after["training"] == before["training"]
    assert after["held"] == before["held"]
    assert after["freeze"] == before["freeze"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


# --- specs --------------------------------------------------------------------------------


def test_backbone_leaves_only_the_head_trainable(resnet):
    assert za.freeze(resnet) is resnet
    assert trainable_groups(resnet) == {g: g == "head" for g in RESNET_GROUPS}


def test_group_name_int_and_regexes_select_the_same_prefix(resnet):
    expected = {g: g in ("layer3", "layer4", "head") for g in RESNET_GROUPS}
    specs = [
        "layer2",
        3,
        -3,
        [r"^conv1\.", r"^bn1\.", r"^layer1\.", r"^layer2\."],
        ["stem", "layer1", r"^layer2\."],
    ]
    frozen_sets = []
    for spec in specs:
        za.unfreeze(resnet)
        za.freeze(resnet, spec)
        assert trainable_groups(resnet) == expected, spec
        frozen_sets.append(set(za.freeze_state(resnet)["frozen"]))
    assert all(s == frozen_sets[0] for s in frozen_sets)
    assert len(frozen_sets[0]) == 3 + 12 + 15


def test_list_freezes_exactly_those_and_none_freezes_nothing(resnet):
    za.freeze(resnet, None)
    assert all(p.requires_grad for p in resnet.parameters())
    za.freeze(resnet, ["layer1", r"^layer3\.0\.conv1\.weight$"])
    frozen = set(za.freeze_state(resnet)["frozen"])
    assert frozen == set(za.anatomy(resnet).groups["layer1"]) | {"layer3.0.conv1.weight"}
    assert trainable_groups(resnet)["layer3"] is None


def test_negative_one_is_the_backbone_and_full_length_freezes_all(resnet):
    za.freeze(resnet, -1)
    assert trainable_groups(resnet) == {g: g == "head" for g in RESNET_GROUPS}
    za.freeze(resnet, len(RESNET_GROUPS))
    assert not any(p.requires_grad for p in resnet.parameters())


def test_unfreeze_group_name_unfreezes_it_and_everything_after(resnet):
    za.freeze(resnet, len(RESNET_GROUPS))
    za.unfreeze(resnet, "layer4")
    assert trainable_groups(resnet) == {g: g in ("layer4", "head") for g in RESNET_GROUPS}
    za.unfreeze(resnet, -3)  # the last three groups
    assert trainable_groups(resnet) == {g: g in ("layer3", "layer4", "head") for g in RESNET_GROUPS}
    za.unfreeze(resnet, ["stem"])
    assert trainable_groups(resnet)["layer1"] is False and trainable_groups(resnet)["stem"]
    za.unfreeze(resnet)
    assert all(p.requires_grad for p in resnet.parameters())


def test_wrapped_model_is_frozen_through_the_wrapper(resnet):
    wrapped = nn.DataParallel(resnet)
    za.freeze(wrapped, "layer2")
    assert trainable_groups(resnet)["layer3"] and not trainable_groups(resnet)["layer2"]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["layer9", ["stem", r"^nothing\."], ["stem", "("], 7, -7, 2.5, True, {"stem"}]
)
def test_bad_spec_raises_and_changes_nothing(resnet, spec):
    za.freeze(resnet, "layer1")
    before = snapshot(resnet)
    with pytest.raises(za.FreezeError) as info:
        za.freeze(resnet, spec)
    assert isinstance(info.value, za.ZooAdaptError) and isinstance(info.value, ValueError)
    assert_unchanged(resnet, before)
    with pytest.raises(za.FreezeError):
        za.unfreeze(resnet, spec)
    assert_unchanged(resnet, before)


def test_unknown_group_message_lists_the_valid_groups(resnet):
    with pytest.raises(za.FreezeError, match="layer9") as info:
        za.freeze(resnet, "layer9")
    assert "stem, layer1, layer2, layer3, layer4, head" in str(info.value)
    with pytest.raises(za.FreezeError, match=r"neither a freeze group nor a regex.*layer4"):
        za.freeze(resnet, [r"^layer5\."])


def test_bad_bn_policy_raises(resnet):
    before = snapshot(resnet)
    with pytest.raises(za.FreezeError, match="'frozen', 'eval', 'train'"):
        za.freeze(resnet, bn="sometimes")
    assert_unchanged(resnet, before)


def test_unfreeze_with_another_models_optimizer_raises_and_changes_nothing(resnet):
    za.freeze(resnet)
    other = za.adapt("resnet18", num_classes=4, pretrained=False)
    opt = za.optimizer(other, lr=1e-3)
    groups_before = [dict(g) for g in opt.param_groups]
    before = snapshot(resnet)
    with pytest.raises(za.OptimizerError, match="not parameters of this ResNet"):
        za.unfreeze(resnet, "layer4", optimizer=opt)
    assert_unchanged(resnet, before)
    assert [dict(g) for g in opt.param_groups] == groups_before


def test_lr_without_optimizer_raises(resnet):
    za.freeze(resnet)
    before = snapshot(resnet)
    with pytest.raises(za.OptimizerError, match="pass optimizer="):
        za.unfreeze(resnet, "layer4", lr=1e-3)
    assert_unchanged(resnet, before)


# --- BatchNorm policy ---------------------------------------------------------------------


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


def test_frozen_batchnorm_survives_train_and_unfreeze_restores_training(resnet):
    keys = list(resnet.state_dict())
    classes = [type(m) for m in resnet.modules()]
    x = torch.rand(2, 3, 32, 32)
    za.freeze(resnet)
    resnet.eval()
    with torch.no_grad():
        expected = resnet(x)
    stats = _bn_stats(resnet)
    resnet.train()
    with torch.no_grad():
        out = resnet(x)
        resnet(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert all(torch.equal(v, stats[k]) for k, v in _bn_stats(resnet).items())
    assert list(resnet.state_dict()) == keys and [type(m) for m in resnet.modules()] == classes

    za.unfreeze(resnet)
    assert resnet.bn1.training and not za.freeze_state(resnet)["norms"]
    assert not [m for m in resnet.modules() if HOLD in vars(m)]
    with torch.no_grad():
        resnet(x)
    assert resnet.bn1.num_batches_tracked.item() == 1
    assert not torch.equal(resnet.bn1.running_mean, stats["bn1.running_mean"])


def test_frozen_batchnorm_survives_deepcopy(resnet):
    za.freeze(resnet)
    clone = copy.deepcopy(resnet).train()
    stats = _bn_stats(clone)
    clone(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(v, stats[k]) for k, v in _bn_stats(clone).items())
    assert za.freeze_state(clone) == za.freeze_state(resnet)
    za.unfreeze(clone)
    assert HOLD in vars(resnet.bn1) and HOLD not in vars(clone.bn1)


def test_unfreeze_in_eval_mode_leaves_released_norms_in_eval(resnet):
    za.freeze(resnet)
    resnet.eval()
    za.unfreeze(resnet, "layer4")
    assert not resnet.layer4[0].bn1.training and not resnet.layer3[0].bn1.training
    resnet.train()
    assert resnet.layer4[0].bn1.training


class AllNorms(nn.Module):
    """Every BatchNorm flavour: 1d, 2d, 3d, SyncBatchNorm, timm's BatchNormAct2d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn2d = nn.BatchNorm2d(4)
        self.bn3d = nn.BatchNorm3d(4)
        self.sync = nn.SyncBatchNorm(4)
        self.act = timm.layers.BatchNormAct2d(4)
        self.plain = nn.BatchNorm2d(4, affine=False)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2d(self.conv(x))
        x = self.bn3d(x.unsqueeze(2)).squeeze(2)
        x = self.plain(self.act(self.sync(x)))
        return self.fc(self.bn1d(x.mean((2, 3))))


NORMS = ["bn2d", "bn3d", "sync", "act", "plain", "bn1d"]


def test_every_batchnorm_flavour_is_held_frozen():
    torch.manual_seed(0)
    model = AllNorms()
    za.freeze(model)
    assert za.freeze_state(model)["norms"] == NORMS
    stats = _bn_stats(model)
    model.train()
    model(torch.rand(3, 3, 8, 8)).sum().backward()
    assert all(torch.equal(v, stats[k]) for k, v in _bn_stats(model).items())
    za.unfreeze(model)
    model(torch.rand(3, 3, 8, 8))
    assert all(getattr(model, n).num_batches_tracked.item() == 1 for n in NORMS)


def test_eval_policy_puts_frozen_norms_in_eval_once(resnet):
    resnet.train()
    za.freeze(resnet, "layer1", bn="eval")
    assert not resnet.bn1.training and not resnet.layer1[0].bn1.training
    assert resnet.layer2[0].bn1.training
    assert za.freeze_state(resnet)["bn"] == "eval"
    resnet.train()  # documented: a later train() undoes "eval"
    assert resnet.bn1.training
    za.freeze(resnet, "layer1", bn="eval")
    za.unfreeze(resnet)
    assert resnet.bn1.training and not za.freeze_state(resnet)["norms"]


def test_train_policy_keeps_norm_affine_trainable_and_updating(resnet):
    za.freeze(resnet, "layer2", bn="train")
    params = dict(resnet.named_parameters())
    assert params["layer1.0.bn1.weight"].requires_grad and params["bn1.bias"].requires_grad
    assert not params["layer1.0.conv1.weight"].requires_grad
    assert za.freeze_state(resnet)["norms"] == []
    opt = za.optimizer(resnet, lr=1e-3)
    assert [g["name"] for g in opt.param_groups][0] == "stem.no_decay"
    resnet.train()
    resnet(torch.rand(2, 3, 32, 32))
    assert resnet.bn1.num_batches_tracked.item() == 1


# --- saved activations --------------------------------------------------------------------


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward, each storage once, params excluded."""
    return measure_step(model, x, None).activations


def test_frozen_backbone_saves_almost_no_activations(resnet):
    x = torch.rand(2, 3, 64, 64)
    resnet.train()
    full = saved_bytes(resnet, x)
    za.freeze(resnet)
    frozen = saved_bytes(resnet, x)
    assert full > 1_000_000
    assert frozen <= 2 * 512 * 4  # only the head's input: 2 x 512 float32
    assert frozen < 0.01 * full


# --- freeze state -------------------------------------------------------------------------


def test_freeze_state_round_trips_through_json(resnet):
    za.freeze(resnet, "layer3")
    state = json.loads(json.dumps(za.freeze_state(resnet)))
    assert state["bn"] == "frozen" and "layer3.1.bn2" in state["norms"]
    torch.manual_seed(1)
    fresh = za.adapt("resnet18", num_classes=4, pretrained=False)
    za.freeze(fresh, ["layer4"], bn="eval")  # something else first: it must be replaced
    za.load_freeze_state(fresh, state)
    assert za.freeze_state(fresh) == za.freeze_state(resnet)
    assert trainable_groups(fresh) == trainable_groups(resnet)
    fresh.train()
    stats = _bn_stats(fresh)
    fresh(torch.rand(2, 3, 32, 32))
    changed = {k for k, v in _bn_stats(fresh).items() if not torch.equal(v, stats[k])}
    assert changed and all(k.startswith("layer4.") for k in changed)


def test_load_freeze_state_rejects_unknown_names(resnet):
    before = snapshot(resnet)
    bad = {"version": 1, "frozen": ["conv1.weight", "nope.weight"], "bn": "frozen", "norms": []}
    with pytest.raises(za.FreezeError, match="nope.weight"):
        za.load_freeze_state(resnet, bad)
    with pytest.raises(za.FreezeError):
        za.load_freeze_state(resnet, {"frozen": [], "bn": "frozen", "norms": ["conv1"]})
    with pytest.raises(za.FreezeError):
        za.load_freeze_state(resnet, {"frozen": []})
    assert_unchanged(resnet, before)


# --- unfreeze with an optimizer and FineTuneSchedule -------------------------------------


def held(opt: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def test_unfreeze_adds_exactly_the_new_tensors_once(resnet):
    za.freeze(resnet)
    opt = za.optimizer(resnet, lr=1e-2, weight_decay=0.1)
    za.unfreeze(resnet, "layer4", optimizer=opt, lr=1e-4)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["head", "head.no_decay", "layer4", "layer4.no_decay"]
    layer4 = dict(resnet.layer4.named_parameters())
    assert {id(p) for g in opt.param_groups[2:] for p in g["params"]} == {
        id(p) for p in layer4.values()
    }
    assert {id(p) for p in opt.param_groups[3]["params"]} == {
        id(p) for n, p in layer4.items() if "bn" in n or "downsample.1" in n
    }
    assert [g["lr"] for g in opt.param_groups[2:]] == [1e-4, 1e-4]
    assert [g["weight_decay"] for g in opt.param_groups[2:]] == [0.1, 0.0]
    za.unfreeze(resnet, "layer4", optimizer=opt)
    za.unfreeze(resnet, ["layer4", "head"], optimizer=opt)
    assert len(opt.param_groups) == 4 and len(held(opt)) == len(set(held(opt)))
    za.unfreeze(resnet, "layer3", optimizer=opt)  # lr=None: the optimizer's default
    assert opt.param_groups[4]["name"] == "layer3" and opt.param_groups[4]["lr"] == 1e-2
    assert len(held(opt)) == len(set(held(opt))) == 2 + 15 + 15


def run_epochs(model, schedule, opt, epochs):
    added = {}
    for epoch in epochs:
        added[epoch] = schedule.step(epoch)
        model.train()
        opt.zero_grad()
        model(torch.rand(2, 3, 32, 32)).sum().backward()
        opt.step()
    return added


def make_run(seed=0):
    torch.manual_seed(seed)
    model = za.adapt("resnet18", num_classes=4, pretrained=False)
    za.freeze(model)
    opt = za.optimizer(model, lr=1e-3, weight_decay=0.01)
    schedule = za.FineTuneSchedule(model, opt, {1: "layer4", 3: "layer3"}, lr={1: 1e-4, 3: 1e-5})
    return model, opt, schedule


def test_schedule_unfreezes_at_milestones():
    model, opt, schedule = make_run()
    added = run_epochs(model, schedule, opt, range(5))
    assert added == {
        0: [],
        1: ["layer4", "layer4.no_decay"],
        2: [],
        3: ["layer3", "layer3.no_decay"],
        4: [],
    }
    assert trainable_groups(model) == {
        g: g not in ("stem", "layer1", "layer2") for g in RESNET_GROUPS
    }
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]


def test_resumed_schedule_neither_refreezes_nor_adds_twice(tmp_path):
    model, opt, schedule = make_run()
    run_epochs(model, schedule, opt, range(2))
    path = tmp_path / "ckpt.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "schedule": json.loads(json.dumps(schedule.state_dict())),
            "freeze": za.freeze_state(model),
        },
        path,
    )
    ckpt = torch.load(path, weights_only=True)

    model2, opt2, schedule2 = make_run(seed=1)
    schedule2.load_state_dict(ckpt["schedule"])
    schedule2.load_state_dict(ckpt["schedule"])  # idempotent
    opt2.load_state_dict(ckpt["opt"])
    model2.load_state_dict(ckpt["model"])
    assert [g["name"] for g in opt2.param_groups] == [g["name"] for g in opt.param_groups]
    assert za.freeze_state(model2) == za.freeze_state(model) == ckpt["freeze"]
    assert schedule2.state_dict() == schedule.state_dict() == {"applied": [1]}

    added = run_epochs(model2, schedule2, opt2, range(2, 4))
    assert added == {2: [], 3: ["layer3", "layer3.no_decay"]}
    assert len(held(opt2)) == len(set(held(opt2)))
    assert trainable_groups(model2)["layer3"] and not trainable_groups(model2)["layer2"]


def test_schedule_rejects_bad_milestones(resnet):
    opt = za.optimizer(resnet, lr=1e-3)
    before = snapshot(resnet)
    with pytest.raises(za.FreezeError, match="layer9"):
        za.FineTuneSchedule(resnet, opt, {1: "layer9"})
    with pytest.raises(za.FreezeError, match="non-negative ints"):
        za.FineTuneSchedule(resnet, opt, {-1: "layer4"})
    assert_unchanged(resnet, before)
    schedule = za.FineTuneSchedule(resnet, opt, {1: "layer4"}, initial=None)
    with pytest.raises(za.FreezeError, match=r"milestones \[5\]"):
        schedule.load_state_dict({"applied": [5]})


def test_schedule_lr_by_group_name(resnet):
    za.freeze(resnet)
    opt = za.optimizer(resnet, lr=1e-3, weight_decay=0.0)
    lrs = {"layer4": 1e-4, "layer3": 1e-5}
    schedule = za.FineTuneSchedule(resnet, opt, {1: "layer4", 2: "layer3"}, lr=lrs)
    assert schedule.step(2) == ["layer4", "layer3"]
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("head", 1e-3),
        ("layer4", 1e-4),
        ("layer3", 1e-5),
    ]
    with pytest.raises(za.FreezeError, match="no milestones"):
        za.FineTuneSchedule(resnet, opt, {1: "layer4"}, lr={1: 1e-4, 7: 1e-5})


# --- frozen blocks run in eval mode ---------------------------------------------------------


def test_frozen_blocks_run_in_eval_mode_after_train_and_unfreeze_releases_them():
    torch.manual_seed(0)
    model = za.adapt(
        "timm/vit_tiny_patch16_224", num_classes=3, pretrained=False, proj_drop_rate=0.5
    )
    x = torch.rand(1, 3, 224, 224)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x)), "dropout in the blocks is active"
    za.freeze(model)
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), model(x)), "frozen blocks run without dropout"
    assert not model.blocks[0].attn.proj_drop.training and model.head.training

    za.unfreeze(model, "blocks.11")
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x)), "the unfrozen block has dropout again"
    assert model.blocks[11].attn.proj_drop.training
    assert not model.blocks[10].attn.proj_drop.training
