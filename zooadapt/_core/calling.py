"""Running a model on a batch of images the way its family says.

Most models are called as ``model(images)`` and return logits (or a tuple with aux
outputs). A family whose models take keywords or return an output object declares
``Family.call`` (Hugging Face: ``model(pixel_values=images).logits``); every zooadapt
function that runs a model (predict, bench, the memory estimator, the feature cache, the
conformance kit) goes through :func:`caller`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from zooadapt._core.anatomy import describe
from zooadapt._core.distributed import unwrap
from zooadapt.errors import FamilyNotFoundError

__all__ = ["caller"]


def caller(model: nn.Module) -> Callable[[Any], Any]:
    """A function that runs ``model`` (a wrapper such as DDP too) on a batch of images.

    The family is looked up once, here, so the returned function costs nothing extra per
    call. A model no family understands is called as ``model(images)``.
    """
    try:
        declared = describe(unwrap(model))[0]
    except FamilyNotFoundError:
        return model
    call = declared.item.call
    if call is None:
        return model
    return lambda images: call(model, images)
