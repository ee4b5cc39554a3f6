"""``za.predict``: a model's top-k classes for images, through its own transforms."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.calling import caller
from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt.errors import DataError
from zooadapt.labels import labels
from zooadapt.transforms import transforms
from zooadapt.types import Family

__all__ = ["Prediction", "predict", "read_image"]

#: Images per forward pass.
BATCH = 16


@dataclass(frozen=True)
class Prediction:
    """One of an image's top classes.

    Attributes:
        index: Output index of the class.
        label: Its name, or ``None`` when the model's labels are unknown.
        probability: Softmax probability.
    """

    index: int
    label: str | None
    probability: float

    @property
    def name(self) -> str:
        """The label, else ``"class <index>"``."""
        return self.label if self.label is not None else f"class {self.index}"


def read_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file with PIL, fully read.

    Raises:
        DataError: Naming the file, if it is missing or not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else str(err)
        raise DataError(f"cannot read image {path}: {reason}") from err


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Iterable[Any],
    *,
    top_k: int = 5,
    transform: Callable[[Any], torch.Tensor] | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> list[list[Prediction]]:
    """The ``top_k`` most probable classes of each image, best first.

    The model runs in eval mode (its previous mode is restored) on its own device and
    dtype, with ``za.transforms(model)`` unless ``transform`` is given.

    Args:
        model: A classifier.
        images: File paths, PIL images, arrays or tensors.
        top_k: Classes per image (at most the class count).
        transform: Preprocessing that returns a ``CxHxW`` tensor.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.

    Raises:
        DataError: If an image cannot be read or ``top_k`` is not positive.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DataError(f"top_k must be a positive int, got {top_k!r}")
    options = {"family": family, "plugin_manager": plugin_manager}
    prepare = transform or transforms(model, **options)
    names = labels(model, **options)
    batch = [prepare(_opened(image)) for image in images]
    parameter = next(unwrap(model).parameters(), None)
    factory = (
        {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
    )
    was_training, run = model.training, caller(model)
    model.eval()
    try:
        logits = [
            run(torch.stack(batch[i : i + BATCH]).to(**factory)).float()
            for i in range(0, len(batch), BATCH)
        ]
    finally:
        model.train(was_training)
    if not logits:
        return []
    probabilities = torch.cat(logits).softmax(dim=-1)
    top = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    return [_ranked(values, indices, names) for values, indices in zip(*top, strict=True)]


def _opened(image: Any) -> Any:
    return read_image(image) if isinstance(image, (str, Path)) else image


def _ranked(
    values: torch.Tensor, indices: torch.Tensor, names: Sequence[str] | None
) -> list[Prediction]:
    return [
        Prediction(int(i), names[int(i)] if names else None, float(p))
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
