"""Which layer produces a model's output: a trace on the meta device."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from zooadapt._core.meta import meta_copy, shape_key
from zooadapt._core.surgery import is_replaceable_head

__all__ = ["first_conv", "output_layer", "output_layers"]


def first_conv(model: nn.Module) -> str | None:
    """Path of the first convolution in registration order, or ``None``."""
    convs = (n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))
    return next(convs, None)


#: Input sides tried, per spatial dimension count, until the model accepts one.
SMALL = (64, 32, 28, 16, 8, 4, 3, 2, 1)
SIDES = {1: (1024, 256, *SMALL), 2: (224, 256, 299, 384, 128, 96, *SMALL), 3: (96, 128, *SMALL)}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_traced: weakref.WeakKeyDictionary[nn.Module, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _inputs(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes to try: from the first convolution, else the first linear layer."""
    stem = first_conv(model)
    if stem is not None:
        conv = model.get_submodule(stem)
        dims = _CONVS.get(type(conv), 2)
        return [(2, conv.in_channels, *(side,) * dims) for side in SIDES[dims]]
    linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return [(2, linear.in_features)] if linear is not None else []


def _output(result: Any) -> torch.Tensor | None:
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)) and result:
        return _output(result[0])
    return None


def _last_layers(output: torch.Tensor, produced: dict[Any, str]) -> tuple[str, ...]:
    """The candidate layers feeding ``output`` with no parameter acting after them."""
    if output.grad_fn is None:
        return ()
    found: set[str] = set()
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced:
            found.add(produced[node])
            continue
        if hasattr(node, "variable"):  # a parameter acts after every candidate
            return ()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return tuple(sorted(found))


def _traceable(model: nn.Module) -> tuple[nn.Module, dict[Any, str]]:
    """A meta copy of ``model`` that records which candidate layer produced which node."""
    copy = meta_copy(model).eval()
    for param in copy.parameters():
        param.requires_grad_(True)
    produced: dict[Any, str] = {}
    names = {id(m): n for n, m in copy.named_modules() if n and is_replaceable_head(m)}

    def record(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            produced[out.grad_fn] = names[id(module)]

    for module in copy.modules():
        if id(module) in names:
            module.register_forward_hook(record)
    return copy, produced


def output_layer(model: nn.Module) -> tuple[str, tuple[int, ...]] | None:
    """:func:`output_layers` when exactly one layer produces the output, else ``None``."""
    found = output_layers(model)
    if found is None or len(found[0]) != 1:
        return None
    return found[0][0], found[1]


def output_layers(model: nn.Module) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The layer that produces ``model``'s output, shown by a meta-device trace.

    A copy of the model on the meta device (nothing allocated, the model untouched) runs
    on inputs read from its first convolution (channels, spatial dimensions; sizes from
    224 down to 1 until one fits) or its first linear layer. The answer is the one
    ``nn.Linear`` or 1x1 convolution layers whose outputs reach the model's output (a
    tensor, the first of a tuple or dict, or ``.logits``) with no parameter acting after
    them on any path, such as ``x @ self.proj`` (two for a distilled model averaging a
    class and a distillation head). Memoised per model while its parameters keep their
    names and shapes.

    Returns:
        ``(module paths, spatial input size it ran at)``, or ``None`` when no such layer
        exists or the model runs on none of the inputs tried.
    """
    key = shape_key(model)
    cached = _traced.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    copy, produced = _traceable(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for shape in _inputs(model):
        produced.clear()
        try:
            with torch.enable_grad():
                output = _output(copy(torch.zeros(shape, dtype=dtype, device="meta")))
        except Exception:  # noqa: BLE001 - the model does not take this shape: try the next
            continue
        heads = _last_layers(output, produced) if output is not None else ()
        found = (heads, shape[2:]) if heads else None
        _traced[model] = (key, found)
        return found
    return None
