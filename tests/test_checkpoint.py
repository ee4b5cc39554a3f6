"""Loading local checkpoints through ``za.adapt(..., pretrained=<path>)``."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import zooadapt as za


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18()


def assert_weights_equal(model, state, skip=()):
    own = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith(skip):
            assert torch.equal(own[key], tensor), key


def test_dataparallel_prefix_is_stripped(tmp_path, resnet):
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in resnet.state_dict().items()}, path)
    assert_weights_equal(za.adapt("resnet18", pretrained=path), resnet.state_dict())


def test_nested_training_checkpoint_in_safetensors_and_torch_formats(tmp_path, resnet):
    torch.save(
        {"epoch": 3, "model_state_dict": resnet.state_dict(), "optimizer": {}}, tmp_path / "t.ckpt"
    )
    save_file(resnet.state_dict(), tmp_path / "w.safetensors")
    for name in ("t.ckpt", "w.safetensors"):
        assert_weights_equal(za.adapt("resnet18", pretrained=tmp_path / name), resnet.state_dict())


def test_densenet_legacy_keys_are_renamed(tmp_path):
    torch.manual_seed(0)
    original = torchvision.models.densenet121()
    legacy_pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    legacy = {  # pre-0.3 checkpoints: 'norm.1' keys and no num_batches_tracked buffers
        legacy_pattern.sub(r"\1.\2.", k): v
        for k, v in original.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert sum(k != legacy_pattern.sub(r"\1.\2.", k) for k in original.state_dict()) > 100
    torch.save(legacy, tmp_path / "legacy.pth")
    model = za.adapt("densenet121", pretrained=tmp_path / "legacy.pth", num_classes=4)
    assert_weights_equal(model, original.state_dict(), skip=("classifier.",))


def test_fine_tuned_checkpoint_infers_classes_and_channels(tmp_path):
    tuned = za.adapt("resnet18", num_classes=10, in_chans=1, pretrained=False)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    model = za.adapt("resnet18", pretrained=tmp_path / "tuned.pth")
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert_weights_equal(model, tuned.state_dict())


def test_wrong_architecture_fails_and_leaves_a_module_unchanged(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fc, conv1 = model.fc, model.conv1
    with pytest.raises(za.CheckpointError, match="unexpected  layer1.2"):
        za.adapt(model, num_classes=3, in_chans=1, pretrained=tmp_path / "r34.pth")
    assert model.fc is fc and model.conv1 is conv1 and conv1.in_channels == 3
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(za.CheckpointError, match="notes.pth"):
        za.adapt("resnet18", pretrained=tmp_path / "notes.pth")
    with pytest.raises(za.CheckpointError, match="does not exist"):
        za.adapt("resnet18", pretrained=tmp_path / "missing.pth")
