"""The generic fallback family: any ``nn.Module`` whose classifier zooadapt can show.

It is used only when no other family claims a model (a user's own network, a tutorial
CNN). It claims a head only when a meta-device trace shows it: the head is the one
``nn.Linear`` (or 1x1 convolution) that produces the model's output, with no parameter
acting after it on any path to the output. Stem: the first convolution. Groups:
parameters owned by the root, then one group per top-level child, then the head.
The trace also gives the input size the model accepts.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from zooadapt_plugins._layout import exact, prefix

from zooadapt import Family, FamilyNotFoundError, hookimpl, meta_copy

#: Input sides tried, per spatial dimension count, until the model accepts one.
SMALL = (64, 32, 28, 16, 8, 4, 3, 2, 1)
SIDES = {1: (1024, 256, *SMALL), 2: (224, 256, 299, 384, 128, 96, *SMALL), 3: (96, 128, *SMALL)}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_traced: weakref.WeakKeyDictionary[nn.Module, tuple[Any, tuple[str, tuple[int, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def _is_classifier(module: nn.Module) -> bool:
    pointwise = (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    )
    return isinstance(module, nn.Linear) or pointwise


def _stem(model: nn.Module) -> str | None:
    convs = (n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))
    return next(convs, None)


def _inputs(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes to try: from the first convolution, else the first linear layer."""
    stem = _stem(model)
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


def _last_layer(output: torch.Tensor, produced: dict[Any, str]) -> str | None:
    """The one candidate layer feeding ``output`` with no parameter acting after it."""
    if output.grad_fn is None:
        return None
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
            return None
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found.pop() if len(found) == 1 else None


def _traceable(model: nn.Module) -> tuple[nn.Module, dict[Any, str]]:
    """A meta copy of ``model`` that records which candidate layer produced which node."""
    copy = meta_copy(model).eval()
    for param in copy.parameters():
        param.requires_grad_(True)
    produced: dict[Any, str] = {}
    names = {id(m): n for n, m in copy.named_modules() if n and _is_classifier(m)}

    def record(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            produced[out.grad_fn] = names[id(module)]

    for module in copy.modules():
        if id(module) in names:
            module.register_forward_hook(record)
    return copy, produced


def _trace(model: nn.Module) -> tuple[str, tuple[int, ...]]:
    """The head path and the spatial input size the trace ran at (memoised per model)."""
    key = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
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
        head = _last_layer(output, produced) if output is not None else None
        if head is None:
            break
        _traced[model] = (key, (head, shape[2:]))
        return head, shape[2:]
    raise FamilyNotFoundError(
        f"the generic family cannot show which layer of {type(model).__qualname__} is its "
        "classifier (no nn.Linear or 1x1 conv produces the output with nothing trainable "
        "after it, on a meta-device trace); declare a family for it with head=, stem= and "
        "groups= (see 'Writing a plugin'), or pass family=Family(...)"
    )


def _head(model: nn.Module) -> str:
    return _trace(model)[0]


def _input_size(model: nn.Module) -> tuple[int, ...]:
    return _trace(model)[1]


def _groups(model: nn.Module) -> list[tuple[str, str]]:
    head = _head(model)
    root = [name for name, _ in model.named_parameters(recurse=False)]
    groups = [("root", exact(*root))] if root else []
    head_params = sum(1 for _ in model.get_submodule(head).parameters())
    for name, child in model.named_children():
        if name == head or not any(True for _ in child.parameters()):
            continue
        label = "pre_head" if name == "head" else name
        if head.startswith(name + "."):
            if sum(1 for _ in child.parameters()) == head_params:
                continue
            groups.append((label, rf"^(?!{prefix(head)[1:]}){prefix(name)[1:]}"))
        else:
            groups.append((label, prefix(name)))
    groups.append(("head", prefix(head)))
    return groups


def _spatial_dims(model: nn.Module) -> int:
    return len(_input_size(model))


@hookimpl
def zooadapt_families():
    """The fallback family for any module whose classifier a trace can show."""
    yield Family(
        name="generic",
        head=_head,
        stem=_stem,
        groups=_groups,
        input_size=_input_size,
        spatial_dims=_spatial_dims,
        fallback=True,
    )
