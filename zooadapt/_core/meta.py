"""Build models without allocating or initialising their weights (the meta device)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zooadapt._core.patches import ScopedPatch, gc_paused

__all__ = ["SkipMetaInit", "build_on_meta", "empty_init", "gc_paused", "meta_copy", "shape_key"]


def _meta_parameter(
    original: Callable[..., None], module: nn.Module, name: str, param: nn.Parameter | None
) -> None:
    original(module, name, param)
    if param is not None:
        module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _meta_buffer(
    original: Callable[..., None],
    module: nn.Module,
    name: str,
    tensor: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> None:
    original(module, name, tensor, *args, **kwargs)
    if tensor is not None:
        module._buffers[name] = tensor.to("meta")


_PARAMETERS_ON_META = ScopedPatch(nn.Module, "register_parameter", _meta_parameter)
_BUFFERS_ON_META = ScopedPatch(nn.Module, "register_buffer", _meta_buffer)


@contextlib.contextmanager
def empty_init() -> Iterator[None]:
    """Move every parameter and buffer to the meta device as soon as it is registered.

    Unlike ``with torch.device("meta")``, tensors the constructor computes with (layer
    widths, index tables) stay real, so builders that compute at construction still run.
    It patches ``nn.Module.register_parameter`` and ``register_buffer`` for the calling
    thread only (:class:`~zooadapt._core.patches.ScopedPatch`).
    """
    with _PARAMETERS_ON_META.active(), _BUFFERS_ON_META.active():
        yield


#: In-place value operations that weight initialisation uses; on meta tensors they only
#: cost time (PyTorch runs their decompositions), so :class:`SkipMetaInit` skips them.
INIT_OPS = frozenset(
    {
        "normal_",
        "uniform_",
        "fill_",
        "zero_",
        "erfinv_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "clamp_",
        "copy_",
        "exponential_",
        "log_normal_",
        "random_",
        "bernoulli_",
        "sqrt_",
    }
)


class SkipMetaInit(TorchFunctionMode):
    """Return meta tensors unchanged from in-place initialisation operations."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        target = args[0] if args else None
        if (
            getattr(func, "__name__", "") in INIT_OPS
            and isinstance(target, torch.Tensor)
            and target.is_meta
        ):
            return target
        return func(*args, **(kwargs or {}))


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Run ``builder`` with every parameter and buffer on the meta device.

    Tries ``torch.device("meta")`` first and falls back to :func:`empty_init` for builders
    that compute with tensors while constructing (torchvision's RegNets, for example).
    Initialisation on meta tensors is skipped (:class:`SkipMetaInit`).
    """
    try:
        with torch.device("meta"), SkipMetaInit():
            return builder()
    except Exception:  # noqa: BLE001 - any failure: retry the tolerant way
        with empty_init(), SkipMetaInit():
            return builder()


def shape_key(module: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Parameter names and shapes: what facts derived from a module's layout depend on."""
    return tuple((name, tuple(p.shape)) for name, p in module.named_parameters())


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every parameter and buffer on the meta device.

    No data is copied: the copy allocates nothing, whatever the size of the model.
    ``requires_grad`` flags, hooks and modes are kept; ``module`` is not touched. Tensors
    a module caches in plain attributes (LeViT's attention biases, computed in an eval
    forward and not leaves of the graph, so ``deepcopy`` refuses them) go to meta too.
    """
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(param.detach().to("meta"), param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer.detach().to("meta")
    for inner in module.modules():
        for value in vars(inner).values():
            for tensor in _cached_tensors(value):
                memo.setdefault(id(tensor), tensor.detach().to("meta"))
    return copy.deepcopy(module, memo)


def _cached_tensors(value: Any, depth: int = 2) -> list[torch.Tensor]:
    """Tensors in a plain attribute value: itself, or inside dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth == 0:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _cached_tensors(item, depth - 1)]
    return []
