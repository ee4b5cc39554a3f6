"""Helpers shared by the family tests: logits compared in float64."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.double().eval()(x)


def _assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding of the adapted stem, relative to the logits' scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture
def logits() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``logits(model, x)``: the model's float64 eval-mode output, without autograd."""
    return _logits


@pytest.fixture
def assert_same_logits() -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Assert logits equal up to float32 rounding of an adapted stem."""
    return _assert_same_logits
