"""The generic fallback family: any ``nn.Module`` whose classifier zooadapt can show.

It is used only when no other family claims a model (a user's own network, a tutorial
CNN). It claims a head only when a meta-device trace shows it: the head is the one
``nn.Linear`` (or 1x1 convolution) that produces the model's output, with no parameter
acting after it on any path to the output. Stem: the first convolution. Groups:
parameters owned by the root, then one group per top-level child, then the head.
The trace also gives the input size the model accepts.
"""

from __future__ import annotations

from torch import nn
from zooadapt_plugins._layout import exact, prefix

from zooadapt import Family, FamilyNotFoundError, first_conv, hookimpl, output_layer


def _trace(model: nn.Module) -> tuple[str, tuple[int, ...]]:
    found = output_layer(model)
    if found is None:
        raise FamilyNotFoundError(
            f"the generic family cannot show which layer of {type(model).__qualname__} is its "
            "classifier (no nn.Linear or 1x1 conv produces the output with nothing trainable "
            "after it, on a meta-device trace); declare a family for it with head=, stem= and "
            "groups= (see 'Writing a plugin'), or pass family=Family(...)"
        )
    return found


def _stem(model: nn.Module) -> str | None:
    return first_conv(model)


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
