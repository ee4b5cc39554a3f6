"""Safe but useful unpickling: inert types load without ``trust_pickle``; anything else is
refused with one plain message naming the blocked global, and never runs."""

from __future__ import annotations

import argparse
import collections
import datetime
import pathlib

import numpy as np
import pytest
import torch

import zooadapt as za


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


INERT = {
    "args": argparse.Namespace(lr=0.1, model="resnet50"),
    "best": np.float64(0.75),
    "history": np.arange(4, dtype=np.float32),
    "flag": np.bool_(True),
    "out": pathlib.Path("/tmp/run"),
    "started": datetime.datetime(2026, 12, 2, 1, 0),
    "elapsed": datetime.timedelta(minutes=5),
    "counts": collections.Counter({"a": 1}),
}


def test_a_timm_style_checkpoint_with_args_loads_without_trust_pickle(tmp_path):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    torch.save({"state_dict": model.state_dict(), **INERT}, tmp_path / "train.pth.tar")
    state = za.read_state_dict(tmp_path / "train.pth.tar")
    assert set(state) == set(model.state_dict())
    loaded = za.adapt("resnet18", pretrained=tmp_path / "train.pth.tar")
    assert loaded.fc.out_features == 3


def test_save_training_keeps_inert_extras(tmp_path):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    za.save_training(model, tmp_path / "run.pt", optimizer, **INERT)
    extra = za.load_training(tmp_path / "run.pt").extra
    assert extra["args"] == INERT["args"] and extra["out"] == INERT["out"]
    assert np.array_equal(extra["history"], INERT["history"]) and extra["best"] == 0.75
    assert extra["started"] == INERT["started"] and extra["counts"] == {"a": 1}


def test_save_training_refuses_what_load_training_cannot_read(tmp_path):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        za.CheckpointError, match=r"extra value 'hook' holds a pickled getattr"
    ) as info:
        za.save_training(model, tmp_path / "run.pt", optimizer, hook=Payload(tmp_path / "x"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run.pt").exists()


@pytest.mark.parametrize(
    "read",
    [
        lambda path: za.read_state_dict(path),
        lambda path: za.load_training(path),
        lambda path: za.adapt("resnet18", pretrained=path),
    ],
    ids=["read_state_dict", "load_training", "adapt"],
)
def test_a_pickled_object_is_refused_with_one_plain_line_and_never_runs(read, tmp_path):
    marker = tmp_path / "ran"
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    torch.save({"state_dict": model.state_dict(), "hook": Payload(marker)}, tmp_path / "bad.pth")
    with pytest.raises(za.CheckpointError) as info:
        read(tmp_path / "bad.pth")
    message = str(info.value)
    assert "holds a pickled getattr" in message  # the global its __reduce__ needs
    assert "--trust-pickle" in message and "trust_pickle=True" in message
    assert "\x1b" not in message and "\n" not in message
    assert not marker.exists()
