"""``za.load_weights``, checkpoint formats and safety, ``za.save`` / ``za.load``."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch import nn

import zooadapt as za
from zooadapt import saving


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18()


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_equal_state(model: nn.Module, expected: dict[str, torch.Tensor], skip=()) -> None:
    state = model.state_dict()
    for key, tensor in expected.items():
        if not key.startswith(skip):
            assert torch.equal(state[key], tensor), key


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors"])
def test_every_file_format_loads_exactly(tmp_path, resnet, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(resnet.state_dict(), path)
    else:
        torch.save(resnet.state_dict(), path)
    target = torchvision.models.resnet18()
    report = za.load_weights(target, path)
    assert report.ok and len(report.loaded) == len(resnet.state_dict())
    assert_equal_state(target, resnet.state_dict())


@pytest.mark.parametrize(
    "nesting", ["state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "module"]
)
def test_nested_training_checkpoints(tmp_path, resnet, nesting):
    torch.save(
        {nesting: resnet.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "c.pth"
    )
    target = torchvision.models.resnet18()
    za.load_weights(target, tmp_path / "c.pth")
    assert_equal_state(target, resnet.state_dict())


def test_key_chooses_among_several_and_a_missing_key_lists_entries(tmp_path, resnet):
    other = torchvision.models.resnet18()
    torch.save(
        {"state_dict": other.state_dict(), "state_dict_ema": resnet.state_dict()},
        tmp_path / "c.pth",
    )
    target = torchvision.models.resnet18()
    za.load_weights(target, tmp_path / "c.pth", key="state_dict_ema")
    assert_equal_state(target, resnet.state_dict())
    with pytest.raises(za.CheckpointError, match="state_dict_ema"):
        za.load_weights(target, tmp_path / "c.pth", key="ema")


def test_open_file_objects(resnet):
    for writer in (
        torch.save,
        lambda state, handle: handle.write(safetensors_bytes(state)),
    ):
        buffer = io.BytesIO()
        writer(resnet.state_dict(), buffer)
        buffer.seek(0)
        target = torchvision.models.resnet18()
        za.load_weights(target, buffer)
        assert_equal_state(target, resnet.state_dict())


@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("module.", "DataParallel"),
        ("_orig_mod.", "torch.compile"),
        ("model.", "Lightning"),
        ("backbone.", "backbone"),
        ("module._orig_mod.", "torch.compile"),
    ],
)
def test_wrapper_prefixes_are_renamed_and_reported(tmp_path, resnet, prefix, rule):
    torch.save({prefix + k: v for k, v in resnet.state_dict().items()}, tmp_path / "w.pth")
    target = torchvision.models.resnet18()
    report = za.load_weights(target, tmp_path / "w.pth")
    assert_equal_state(target, resnet.state_dict())
    new, rules = report.renamed[f"{prefix}fc.weight"]
    assert new == "fc.weight" and rule in rules


def test_user_rules_apply_after_the_builtin_ones(tmp_path, resnet):
    torch.save(
        {k.replace("layer", "stage"): v for k, v in resnet.state_dict().items()}, tmp_path / "w.pth"
    )
    target = torchvision.models.resnet18()
    report = za.load_weights(target, tmp_path / "w.pth", rules=[(r"^stage", "layer")])
    assert report.ok
    assert_equal_state(target, resnet.state_dict())


def test_adapted_model_drops_the_head_and_adapts_the_stem(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    target = za.adapt("resnet18", num_classes=4, in_chans=2, pretrained=False)
    head_before = target.fc.weight.clone()
    report = za.load_weights(target, tmp_path / "w.pth")
    assert report.dropped == ["fc.weight", "fc.bias"] and report.adapted == ["conv1.weight"]
    assert torch.equal(target.fc.weight, head_before)
    torch.testing.assert_close(target.conv1.weight, resnet.conv1.weight[:, :2] * 1.5)
    assert_equal_state(target, resnet.state_dict(), skip=("fc.", "conv1."))
    assert "dropped     fc.weight (head replaced)" in str(report)


def test_wrapped_models_are_accepted(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    wrapped = nn.DataParallel(torchvision.models.resnet18())
    za.load_weights(wrapped, tmp_path / "w.pth")
    assert_equal_state(wrapped.module, resnet.state_dict())
    assert za.anatomy(wrapped).family == "resnet"
    za.adapt(wrapped, num_classes=3)
    assert wrapped.module.fc.out_features == 3


# -- errors leave the model unchanged -------------------------------------------------------


def test_truncated_file(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    target = torchvision.models.resnet18()
    before = tensors_of(target)
    with pytest.raises(za.CheckpointError, match="cut.pth"):
        za.load_weights(target, tmp_path / "cut.pth")
    assert_equal_state(target, before)


def test_truncated_safetensors(tmp_path, resnet):
    save_file(resnet.state_dict(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:1000])
    with pytest.raises(za.CheckpointError, match="cut.safetensors"):
        za.load_weights(torchvision.models.resnet18(), tmp_path / "cut.safetensors")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "img.pth").write_bytes(b"\x89PNG\r\n" + bytes(100))
    with pytest.raises(za.CheckpointError, match="img.pth"):
        za.load_weights(torchvision.models.resnet18(), tmp_path / "img.pth")


def test_other_architecture_and_non_head_mismatch(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    target = torchvision.models.resnet18()
    before = tensors_of(target)
    with pytest.raises(za.CheckpointError, match="unexpected"):
        za.load_weights(target, tmp_path / "r34.pth")
    assert_equal_state(target, before)

    wide = torchvision.models.resnet18()
    state = wide.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(za.CheckpointError, match=r"mismatched  layer2.0.conv1.weight"):
        za.load_weights(target, tmp_path / "bad.pth")
    assert_equal_state(target, before)


def test_non_strict_reports_instead_of_raising(tmp_path, resnet):
    state = resnet.state_dict()
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "w.pth")
    report = za.load_weights(torchvision.models.resnet18(), tmp_path / "w.pth", strict=False)
    assert report.missing == ["layer4.1.bn2.running_var"] and not report.ok


# -- security ---------------------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this object creates a file: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"fc.weight": _CreatesFile(str(marker))}, handle)
    torch.save({"payload": _CreatesFile(str(marker))}, tmp_path / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        with pytest.raises(za.CheckpointError, match="trust_pickle=True"):
            za.load_weights(torchvision.models.resnet18(), tmp_path / name)
        assert not marker.exists()


def test_whole_pickled_model_needs_trust_pickle(tmp_path, resnet):
    torch.save(resnet, tmp_path / "whole.pth")
    with pytest.raises(za.CheckpointError, match="trust_pickle"):
        za.load_weights(torchvision.models.resnet18(), tmp_path / "whole.pth")
    target = torchvision.models.resnet18()
    za.load_weights(target, tmp_path / "whole.pth", trust_pickle=True)
    assert_equal_state(target, resnet.state_dict())


# -- no wasted work ----------------------------------------------------------------------------


def test_checkpoint_path_never_initialises_real_tensors(tmp_path, resnet, real_inits):
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    model = za.adapt("resnet18", pretrained=tmp_path / "w.pth", num_classes=3)
    assert real_inits == []  # no kaiming_normal_ on real tensors
    assert not any(t.is_meta for t in model.state_dict().values())
    assert_equal_state(model, resnet.state_dict(), skip=("fc.",))


# -- za.save / za.load ----------------------------------------------------------------------


def test_save_and_load_round_trip_without_arguments(tmp_path):
    model = za.adapt("mobilenet_v3_small", num_classes=5, in_chans=2, pretrained=False, dropout=0.3)
    path = za.save(model, tmp_path / "m.safetensors")
    info = saving.read_metadata(path)
    assert info["model"] == "torchvision/mobilenet_v3_small" and info["num_classes"] == 5
    assert info["in_chans"] == 2 and info["model_kwargs"] == {"dropout": 0.3}
    assert info["zooadapt_version"] == za.__version__
    loaded = za.load(path)
    assert loaded.classifier[2].p == 0.3
    assert_equal_state(loaded, model.state_dict())
    assert list(tmp_path.iterdir()) == [path]


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    path = za.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("power cut")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(za.CheckpointError, match=r"cannot write .*m.safetensors: power cut"):
        za.save(za.adapt("resnet18", num_classes=3, pretrained=False), path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_load_rejects_files_not_written_by_save(tmp_path, resnet):
    save_file(resnet.state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(za.CheckpointError, match="not written by za.save"):
        za.load(tmp_path / "plain.safetensors")


def test_module_models_save_and_reload_through_load_weights(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 8, 8))
    path = za.save(model, tmp_path / "m.safetensors")
    with pytest.raises(za.CheckpointError, match="load_weights"):
        za.load(path)
    clone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    za.load_weights(clone, path)
    assert_equal_state(clone, model.state_dict())


def test_ddp_wrapped_models_save_unwrapped_and_load_into_either(tmp_path, resnet):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = za.adapt("resnet18", num_classes=3, pretrained=False)
        ddp = nn.parallel.DistributedDataParallel(model)
        path = za.save(ddp, tmp_path / "ddp.safetensors")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == set(model.state_dict())
        assert_equal_state(za.load(path), model.state_dict())
        other = nn.parallel.DistributedDataParallel(
            za.adapt("resnet18", num_classes=3, pretrained=False)
        )
        za.load_weights(other, path)
        assert_equal_state(other.module, model.state_dict())
    finally:
        dist.destroy_process_group()
