"""The generic fallback family: any ``nn.Module`` zooadapt can reason about.

It is used only when no other family claims a model (a user's own network, a tutorial
CNN). Head: the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``) in registration order. Stem:
the first convolution. Groups: parameters owned by the root, then one group per
top-level child, then the head.
"""

from torch import nn
from zooadapt_plugins._layout import exact, prefix

from zooadapt import Family, FamilyNotFoundError, hookimpl


def _is_classifier(module: nn.Module) -> bool:
    pointwise = (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    )
    return isinstance(module, nn.Linear) or pointwise


def _head(model: nn.Module) -> str:
    heads = [name for name, module in model.named_modules() if name and _is_classifier(module)]
    if not heads:
        raise FamilyNotFoundError(
            "the generic family found no nn.Linear or 1x1 conv head in "
            f"{type(model).__qualname__}; "
            "declare a family for it (see 'Writing a plugin') or pass family=Family(...)"
        )
    return heads[-1]


def _stem(model: nn.Module) -> str | None:
    convs = (n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))
    return next(convs, None)


def _groups(model: nn.Module) -> list[tuple[str, str]]:
    head = _head(model)
    root = [name for name, _ in model.named_parameters(recurse=False)]
    groups = [("root", exact(*root))] if root else []
    for name, child in model.named_children():
        if name == head or not any(True for _ in child.parameters()):
            continue
        if head.startswith(name + "."):
            if sum(1 for _ in child.parameters()) == sum(
                1 for _ in model.get_submodule(head).parameters()
            ):
                continue
            groups.append((name, rf"^(?!{prefix(head)[1:]}){prefix(name)[1:]}"))
        else:
            groups.append((name, prefix(name)))
    groups.append(("head", prefix(head)))
    return groups


@hookimpl
def zooadapt_families():
    """The fallback family for any module with a linear (or 1x1 conv) classifier."""
    yield Family(name="generic", head=_head, stem=_stem, groups=_groups, fallback=True)
