"""Saving under faults and concurrency: the file at the path is always one complete save.

Kills happen in a child process that saves in a loop; threads save to one path at once;
disk errors are injected. Each case asserts that the file at the path loads (and equals
one whole save), that the old file survives a failed write, and that no temporary file
is left behind (a SIGKILL's is removed by the next save).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import zooadapt as za
from zooadapt._core.files import TEMP_PREFIX


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return za.adapt("resnet18", num_classes=3, pretrained=False)


def temporaries(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{TEMP_PREFIX}*"))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_threads_saving_to_one_path_leave_one_whole_save(tmp_path):
    models = [tiny(0), tiny(1)]
    path = tmp_path / "model.safetensors"
    errors: list[BaseException] = []

    def save(model):
        try:
            for _ in range(3):
                za.save(model, path)
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    loaded = za.load(path)
    assert any(same_weights(loaded, model) for model in models)
    assert temporaries(tmp_path) == []


def test_threads_saving_training_checkpoints_to_one_path_never_mix(tmp_path):
    models = [tiny(0), tiny(1)]
    path = tmp_path / "run.pt"
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]

    def save(i):
        for _ in range(3):
            za.save_training(models[i], path, optimizers[i], epoch=i)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    resumed = za.load_training(path)
    epoch = resumed.extra["epoch"]
    assert same_weights(resumed.model, models[epoch])  # the weights of the save it names
    assert temporaries(tmp_path) == []


CHILD = textwrap.dedent(
    """
    import sys, torch, zooadapt as za
    from torch import nn
    model = nn.Sequential(nn.Linear(4096, 8192), nn.Linear(8192, 10))
    za.adapt(model)
    print("ready", flush=True)
    while True:
        za.save(model, sys.argv[1], family="generic")
    """
)


def _child(path: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "ready"
    return child


def _wait_for_temporary(directory: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not temporaries(directory):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_save_killed_mid_write_keeps_the_old_file(sig, tmp_path):
    path = tmp_path / "model.safetensors"
    old = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    za.save(za.adapt(old), path, family="generic")
    expected = za.read_state_dict(path)
    child = _child(path)
    try:
        _wait_for_temporary(tmp_path, child)
        child.send_signal(sig)
        child.wait(30)
    finally:
        child.kill()
    state = za.read_state_dict(path)  # the old file, or one complete new save
    assert set(state) == set(expected) or set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    left = temporaries(tmp_path)
    if sig == signal.SIGKILL:
        za.save(za.adapt(old), path, family="generic")  # the next save removes what was left
    else:
        assert left == [], "SIGTERM and SIGINT remove the temporary file"
    assert temporaries(tmp_path) == []


def test_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    za.save(tiny(0), path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(za.CheckpointError, match=r"cannot write .*No space left on device"):
        za.save(tiny(1), path)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


def test_a_read_only_target_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    za.save(tiny(0), path)
    before = path.read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(za.CheckpointError, match="Read-only file system"):
        za.save(tiny(1), path)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (None, "no path to write to"),
        ("missing/dir/model.safetensors", "does not exist"),
        ("file/model.safetensors", "is a file, not a directory"),
        (".", "directory"),
    ],
)
def test_bad_targets_are_named(target, message, tmp_path):
    (tmp_path / "file").write_text("x")
    path = None if target is None else tmp_path / target
    with pytest.raises(za.CheckpointError, match=message):
        za.save(tiny(0), path)
    assert not (tmp_path / "missing").exists()


def test_the_longest_file_name_saves(tmp_path):
    path = tmp_path / ("m" * 243 + ".safetensors")  # 255 bytes, the longest valid name
    za.save(tiny(0), path)
    assert same_weights(za.load(path), tiny(0))


def test_tied_tensors_save_and_load(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.embed = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 4)
            self.fc.weight = self.embed.weight

        def forward(self, x):
            return self.fc(self.embed(self.stem(x).mean((2, 3))))

    model = Tied()
    path = za.save(model, tmp_path / "tied.safetensors")
    other = Tied()
    za.load_weights(other, path)
    assert torch.equal(other.fc.weight, model.fc.weight) and other.fc.weight is other.embed.weight
