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


#: Per-channel statistics with equal means: a folded ``sum`` stem then needs no bias, so
#: zero padding agrees too and whole logits can be compared; the stds still differ.
EQUAL_MEANS = {"mean": (0.45, 0.45, 0.45), "std": (0.2, 0.25, 0.3)}


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(shape)
    return (x - mean_t) / torch.tensor(std, dtype=x.dtype).view(shape)


@pytest.fixture
def normalise() -> Callable[..., torch.Tensor]:
    """``normalise(x, mean, std)``: ``(x - mean) / std`` per channel, in ``x``'s dtype."""
    return _normalise


@pytest.fixture
def equal_means() -> dict[str, tuple[float, ...]]:
    """Statistics with equal means and different stds (:data:`EQUAL_MEANS`)."""
    return EQUAL_MEANS


@pytest.fixture
def logits() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``logits(model, x)``: the model's float64 eval-mode output, without autograd."""
    return _logits


@pytest.fixture
def assert_same_logits() -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Assert logits equal up to float32 rounding of an adapted stem."""
    return _assert_same_logits
