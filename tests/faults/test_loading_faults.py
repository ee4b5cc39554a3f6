"""Loading under bad input: all or nothing, bounded, and always a ``ZooAdaptError``.

Every case asserts that the error is a ``zooadapt`` error naming what is at fault and that
the model is bit-identical afterwards (same tensors, same dtypes, same trainable flags).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

import zooadapt as za


def small():
    torch.manual_seed(0)
    return za.adapt("resnet18", num_classes=3, pretrained=False)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": [id(m) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["grad"] == before["grad"] and after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    for key, (dtype, value) in before["state"].items():
        assert after["state"][key][0] == dtype and torch.equal(after["state"][key][1], value), key


@pytest.fixture
def alarm():
    """Fail instead of hanging: a reader that blocks is stopped after 10 seconds."""

    def stop(signum, frame):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _with(state: dict, key: str, value) -> dict:
    return {**state, key: value}


BAD_TENSORS = {
    "sparse": (lambda t: t.to_sparse(), "sparse_coo tensor"),
    "quantized": (
        lambda t: torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8),
        "quantized tensor",
    ),
    "meta": (lambda t: t.to("meta"), "meta tensor"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_a_tensor_that_cannot_be_installed_changes_nothing(kind, tmp_path):
    model = small()
    make, message = BAD_TENSORS[kind]
    state = model.state_dict()
    # the last key: a half-way failure would already have copied everything before it
    last = [k for k, v in state.items() if v.is_floating_point()][-1]
    torch.save(_with(state, last, make(state[last].clone() + 1)), tmp_path / "bad.pth")
    before = snapshot(model)
    with pytest.raises(za.CheckpointError, match=message) as info:
        za.load_weights(model, tmp_path / "bad.pth")
    assert last in str(info.value)
    assert_unchanged(model, before)
    with pytest.raises(za.CheckpointError, match=message):
        za.adapt("resnet18", num_classes=3, pretrained=tmp_path / "bad.pth")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_checkpoint_in_another_float_dtype_gives_one_dtype(dtype, tmp_path):
    source = small()
    torch.save(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()},
        tmp_path / "w.pth",
    )
    model = za.adapt("resnet18", num_classes=5, pretrained=tmp_path / "w.pth")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    assert torch.equal(model.conv1.weight, source.conv1.weight.to(dtype).float())
    half = za.adapt("resnet18", num_classes=5, pretrained=tmp_path / "w.pth", dtype=torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    report = za.load_weights(small(), tmp_path / "w.pth")
    assert report.cast["conv1.weight"] == (str(dtype).removeprefix("torch."), "float32")


def test_an_integer_checkpoint_is_refused_and_nothing_is_cast(tmp_path):
    model = small()
    state = {
        k: v.to(torch.int64) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    torch.save(state, tmp_path / "int.pth")
    before = snapshot(model)
    with pytest.raises(za.CheckpointError, match="int64 where the model holds float32"):
        za.load_weights(model, tmp_path / "int.pth")
    assert_unchanged(model, before)
    with pytest.raises(za.CheckpointError, match="int64 where the model holds float32"):
        za.adapt("resnet18", num_classes=3, pretrained=tmp_path / "int.pth")


def test_a_wrong_head_weight_is_a_mismatch_not_a_replaced_head(tmp_path):
    model = small()
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(3, 7)  # same class count, wrong width: not replaced
    torch.save(state, tmp_path / "w.pth")
    before = snapshot(model)
    with pytest.raises(za.CheckpointError, match=r"fc.weight: checkpoint \[3, 7\]"):
        za.load_weights(model, tmp_path / "w.pth")
    assert_unchanged(model, before)
    report = za.load_weights(model, tmp_path / "w.pth", strict=False)
    assert "fc.weight" in report.mismatched and "fc.bias" in report.loaded


def test_a_self_referential_checkpoint_is_refused(tmp_path, alarm):
    nested: dict = {"epoch": 1}
    nested["state_dict"] = nested
    torch.save(nested, tmp_path / "loop.pth")
    with pytest.raises(za.CheckpointError, match="refers to itself"):
        za.read_state_dict(tmp_path / "loop.pth")


def test_deep_nesting_is_refused(tmp_path):
    data: dict = {"weight": "none"}
    for _ in range(20):
        data = {"state_dict": data}
    torch.save(data, tmp_path / "deep.pth")
    with pytest.raises(za.CheckpointError, match="nests over 8 deep"):
        za.read_state_dict(tmp_path / "deep.pth")


@pytest.mark.parametrize(
    "call",
    [
        lambda path: za.read_state_dict(path),
        lambda path: za.load(path),
        lambda path: za.load_training(path),
        lambda path: za.load_weights(small(), path),
        lambda path: za.adapt("resnet18", pretrained=path),
    ],
    ids=["read_state_dict", "load", "load_training", "load_weights", "adapt"],
)
def test_a_fifo_is_never_opened(call, tmp_path, alarm):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(za.CheckpointError, match="not a regular file"):
        call(fifo)


def test_a_directory_is_named(tmp_path):
    with pytest.raises(za.CheckpointError, match="is a directory"):
        za.read_state_dict(tmp_path)


# -- load_training: everything checked before the model changes --------------------------


def _training_file(tmp_path):
    model = small()
    za.freeze(model, "layer3")
    optimizer = za.optimizer(model, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    path = za.save_training(model, tmp_path / "run.pt", optimizer, scheduler, epoch=1)
    return path, torch.load(path, weights_only=True)


def _broken(payload: dict, part: str) -> dict:
    """One way a training checkpoint can be damaged, by name."""
    payload = {**payload, "optimizer": dict(payload["optimizer"])}
    if part == "groups":
        payload["optimizer"]["groups"] = [["no.such.param"]]
    elif part == "group_count":
        payload["optimizer"]["groups"] = payload["optimizer"]["groups"][:1]
    elif part == "optimizer_state":
        state = payload["optimizer"]["state_dict"]
        payload["optimizer"]["state_dict"] = {**state, "param_groups": state["param_groups"][:1]}
    elif part == "optimizer_class":
        payload["optimizer"]["class"] = "NoSuchOptimizer"
    elif part == "freeze":
        payload["freeze"] = {**payload["freeze"], "frozen": ["no.such.param"]}
    elif part == "freeze_policy":
        payload["freeze"] = {**payload["freeze"], "bn": "sometimes"}
    elif part == "freeze_missing":
        payload["freeze"] = {}
    elif part == "weights_shape":
        payload["model"] = {**payload["model"], "fc.weight": torch.zeros(9, 512)}
    elif part == "weights_dtype":
        payload["model"] = {**payload["model"], "fc.weight": torch.zeros(3, 512, dtype=torch.int64)}
    elif part == "scheduler":
        payload["scheduler"] = "not a state dict"
    elif part == "defaults":
        payload["optimizer"]["defaults"] = "nope"
    return payload


PARTS = [
    "groups",
    "group_count",
    "optimizer_state",
    "optimizer_class",
    "freeze",
    "freeze_policy",
    "freeze_missing",
    "weights_shape",
    "weights_dtype",
    "scheduler",
    "defaults",
]


@pytest.mark.parametrize("part", PARTS)
def test_a_damaged_training_checkpoint_leaves_the_model_unchanged(part, tmp_path):
    path, payload = _training_file(tmp_path)
    torch.save(_broken(payload, part), path)
    model = small()
    za.freeze(model, "layer1")
    before = snapshot(model)
    freeze_before = za.freeze_state(model)

    def scheduler(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, 1)

    with pytest.raises(za.ZooAdaptError):
        za.load_training(path, model=model, scheduler=scheduler)
    assert_unchanged(model, before)
    assert za.freeze_state(model) == freeze_before


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [("fc.weight", (0, 512), "class count"), ("conv1.weight", (64, 0, 7, 7), "input channels")],
)
def test_a_checkpoint_with_an_empty_head_or_stem_is_refused(key, shape, message, tmp_path):
    state = small().state_dict()
    state[key] = torch.zeros(shape)
    if key == "fc.weight":
        state["fc.bias"] = torch.zeros(0)
    torch.save(state, tmp_path / "empty.pth")
    with pytest.raises(za.AdaptError, match=f"{message} of .*must be a positive int, got 0"):
        za.adapt("resnet18", pretrained=tmp_path / "empty.pth")
