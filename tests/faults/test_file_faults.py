"""Damaged files: truncated at many offsets, a flipped bit, crafted headers and metadata.
Each is a ``CheckpointError`` naming the file, never silently different weights."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import zooadapt as za


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    path = za.save(model, tmp_path_factory.mktemp("saved") / "model.safetensors")
    return model, path, path.read_bytes()


def _header_length(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def test_a_flipped_bit_is_caught(saved, tmp_path):
    model, _, data = saved
    damaged = bytearray(data)
    position = _header_length(data) + len(data[_header_length(data) :]) // 2
    damaged[position] ^= 0x10
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(damaged))
    with pytest.raises(za.CheckpointError, match="does not match its checksum"):
        za.load(path)
    unchecked = za.load(path, verify=False)  # the opt-out loads the damaged weights
    differs = [
        k for k, v in unchecked.state_dict().items() if not torch.equal(v, model.state_dict()[k])
    ]
    assert len(differs) == 1


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999])
def test_a_truncated_file_is_refused(saved, tmp_path, fraction):
    _, _, data = saved
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(za.CheckpointError, match=str(path)):
        za.load(path)
    with pytest.raises(za.CheckpointError):
        za.read_state_dict(path)


@pytest.mark.parametrize(
    "header",
    [
        b"{not json",
        json.dumps({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}}).encode(),
        json.dumps({"w": {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}}).encode(),
        json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 10**9]}}).encode(),
    ],
    ids=["json", "huge-shape", "dtype", "offsets"],
)
def test_a_crafted_safetensors_header_is_refused(header, tmp_path):
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(za.CheckpointError, match=str(path)):
        za.read_state_dict(path)


def test_a_huge_header_length_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(za.CheckpointError):
        za.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda info: "{broken", "metadata is damaged"),
        (lambda info: json.dumps({**info, "format": "zooadapt/99"}), "upgrade zooadapt"),
        (lambda info: json.dumps({k: v for k, v in info.items() if k != "model"}), "'model'"),
        (lambda info: json.dumps({**info, "num_classes": "ten"}), "'num_classes'"),
        (lambda info: json.dumps([1, 2]), "not a JSON object"),
        (lambda info: json.dumps({**info, "labels": [1, 2]}), "'labels' holds non-strings"),
        (lambda info: json.dumps({**info, "labels": "cat"}), "'labels'"),
        (
            lambda info: json.dumps({**info, "data_config": {**info["data_config"], "std": [0]}}),
            "'data_config' is invalid",
        ),
        (
            lambda info: json.dumps({**info, "data_config": {"input_size": "x", "exec": 1}}),
            "unknown DataConfig fields",
        ),
        (lambda info: json.dumps({**info, "lora": {"targets": 5}}), "'lora'"),
        (
            lambda info: json.dumps(
                {**info, "lora": {"r": 0, "alpha": 1, "dropout": 0, "targets": ["fc"]}}
            ),
            "'lora'",
        ),
        (lambda info: json.dumps({**info, "lora": "r=8"}), "'lora'"),
    ],
    ids=[
        "json",
        "format",
        "missing",
        "type",
        "list",
        "label-ints",
        "label-str",
        "std",
        "fields",
        "lora-fields",
        "lora-rank",
        "lora-str",
    ],
)
def test_bad_za_save_metadata_is_refused(saved, tmp_path, change, message):
    from safetensors.torch import load_file, save_file

    _, path, _ = saved
    info = za.saving.read_metadata(path)
    target = tmp_path / "meta.safetensors"
    save_file(load_file(str(path)), str(target), metadata={"zooadapt": change(info)})
    with pytest.raises(za.CheckpointError, match=message):
        za.load(target)


@pytest.mark.parametrize(
    "targets",
    [["nothing.here"], ["layer1.0.bn1"], ["layer1.0.conv1", "layer1.0.bn1"]],
    ids=["absent", "not-adaptable", "half-adaptable"],
)
def test_recorded_adapters_the_model_cannot_take_are_refused(saved, tmp_path, targets):
    """Well-formed 'lora' metadata naming modules that are absent or a BatchNorm."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file

    _, path, _ = saved
    lora = {"r": 2, "alpha": 2, "dropout": 0.0, "targets": targets}
    target = tmp_path / "lora.safetensors"
    metadata = {"zooadapt": json.dumps({**za.saving.read_metadata(path), "lora": lora})}
    save_file(load_file(str(path)), str(target), metadata=metadata)
    with pytest.raises(za.CheckpointError, match=f"{target}: the LoRA adapters it records"):
        za.load(target)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_a_truncated_torch_zip_is_refused(tmp_path, fraction):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(za.CheckpointError, match="truncated or not a checkpoint"):
        za.read_state_dict(path)


def test_a_torch_zip_with_a_garbage_pickle_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", b"\x80\x02garbage that is no pickle")
        archive.writestr("crafted/version", "3\n")
    with pytest.raises(za.CheckpointError, match=str(path)):
        za.read_state_dict(path)
