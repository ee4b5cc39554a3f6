"""Build models without allocating or initialising their weights (the meta device)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["build_on_meta", "empty_init"]


@contextlib.contextmanager
def empty_init() -> Iterator[None]:
    """Move every parameter and buffer to the meta device as soon as it is registered.

    Unlike ``with torch.device("meta")``, tensors the constructor computes with (layer
    widths, index tables) stay real, so builders that compute at construction still run.
    Not thread-safe: it patches ``nn.Module.register_parameter`` and ``register_buffer``.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def meta_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    def meta_buffer(
        self: nn.Module, name: str, tensor: torch.Tensor | None, *a: Any, **k: Any
    ) -> None:
        register_buffer(self, name, tensor, *a, **k)
        if tensor is not None:
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter = meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = meta_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Run ``builder`` with every parameter and buffer on the meta device.

    Tries ``torch.device("meta")`` first and falls back to :func:`empty_init` for builders
    that compute with tensors while constructing (torchvision's RegNets, for example).
    """
    try:
        with torch.device("meta"):
            return builder()
    except Exception:  # noqa: BLE001 - any failure: retry the tolerant way
        with empty_init():
            return builder()
