"""Random damage to a ``za.save`` file (hypothesis): a truncation anywhere or a bit flipped
anywhere is a ``CheckpointError``, or the file still loads to exactly the saved tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import zooadapt as za


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.stem(x).mean((2, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny()
    path = za.save(model, tmp_path_factory.mktemp("fuzz") / "tiny.safetensors")
    return model.state_dict(), path.read_bytes(), tmp_path_factory.mktemp("damaged")


def _loads_exactly_or_refuses(data: bytes, original: dict, directory) -> None:
    path = directory / "damaged.safetensors"
    path.write_bytes(data)
    try:
        state = za.read_state_dict(path)
        za.saving.verify_checksums(path, za.saving.read_metadata(path))
    except za.CheckpointError:
        return
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in original)


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_a_truncation_anywhere(saved, data):
    original, content, directory = saved
    cut = data.draw(st.integers(0, len(content) - 1))
    _loads_exactly_or_refuses(content[:cut], original, directory)


@FUZZ
@given(st.data())
def test_a_bit_flipped_anywhere(saved, data):
    original, content, directory = saved
    position = data.draw(st.integers(0, len(content) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(content)
    damaged[position] ^= 1 << bit
    _loads_exactly_or_refuses(bytes(damaged), original, directory)
