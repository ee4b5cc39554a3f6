"""Small helpers that turn a model's layout into freeze-group regexes.

Built-in families use these to stay data-like: each helper returns a function of the
model that yields ``(group name, regex)`` pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from zooadapt import is_adapter, lora_base_name

GroupList = list[tuple[str, str]]


def prefix(*paths: str) -> str:
    """Regex matching parameters under any of the module ``paths``."""
    return r"^(" + "|".join(re.escape(p) for p in paths) + r")\."


def exact(*names: str) -> str:
    """Regex matching exactly ``names`` (parameters owned by the root, or module names)."""
    return r"^(" + "|".join(re.escape(n) for n in names) + r")$"


def either(*patterns: str) -> str:
    """Regex matching any of ``patterns``."""
    return "|".join(f"(?:{p})" for p in patterns)


def _children_with_params(model: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    parent = model.get_submodule(path)
    return [(n, c) for n, c in parent.named_children() if any(True for _ in c.parameters())]


def _is_pool(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd))


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def _named(path: str, runs: Iterable[list[str]], name: str, start: int = 1) -> GroupList:
    return [
        (f"{name}{i}", prefix(*(f"{path}.{child}" for child in run)))
        for i, run in enumerate((r for r in runs if r), start=start)
    ]


def pooled_blocks(path: str, name: str = "block") -> Callable[[nn.Module], GroupList]:
    """One group per run of ``path``'s children that ends at a pooling layer (VGG)."""

    def groups(model: nn.Module) -> GroupList:
        runs: list[list[str]] = [[]]
        for child_name, child in model.get_submodule(path).named_children():
            if any(True for _ in child.parameters()):
                runs[-1].append(child_name)
            if _is_pool(child):
                runs.append([])
        return _named(path, runs, name)

    return groups


def strided_stages(
    path: str, skip: int = 1, name: str = "stage"
) -> Callable[[nn.Module], GroupList]:
    """Stages of ``path``'s children (after the first ``skip``), split where one downsamples."""

    def groups(model: nn.Module) -> GroupList:
        runs: list[list[str]] = [[]]
        for child_name, child in _children_with_params(model, path)[skip:]:
            if _downsamples(child) and runs[-1]:
                runs.append([])
            runs[-1].append(child_name)
        return _named(path, runs, name)

    return groups


def child_stages(
    path: str, skip: int = 1, name: str = "stage", merge_last: int = 0
) -> Callable[[nn.Module], GroupList]:
    """One group per child of ``path`` after the first ``skip``.

    The last ``merge_last`` children join the stage before them (a final 1x1 conv, say).
    """

    def groups(model: nn.Module) -> GroupList:
        children = [n for n, _ in _children_with_params(model, path)[skip:]]
        runs = [[c] for c in children[: len(children) - merge_last]]
        runs[-1].extend(children[len(children) - merge_last :])
        return _named(path, runs, name)

    return groups


def present_roles(table: dict[str, str]) -> Callable[[nn.Module], dict[str, str]]:
    """The LoRA roles of ``table`` that the model's adaptable layers play.

    For families that cover many layouts (timm, transformers): each role's regex is
    narrowed to the linear layers and ungrouped convolutions it full-matches (those that
    already hold adapters included), and a role none matches is not declared.
    """

    def roles(model: nn.Module) -> dict[str, str]:
        layers = _layers(model, _adaptable)
        found = {role: [n for n in layers if re.fullmatch(p, n)] for role, p in table.items()}
        return {role: exact(*names) for role, names in found.items() if names}

    return roles


def _layers(model: nn.Module, wanted: Callable[[nn.Module], bool]) -> list[str]:
    """Names of the modules ``wanted`` keeps; a layer holding adapters under its own name."""
    return [
        lora_base_name(name)
        for name, module in model.named_modules()
        if wanted(module) and not is_adapter(f"{name}.")
    ]


def _adaptable(module: nn.Module) -> bool:
    """A layer LoRA can adapt: linear, or a convolution that is not grouped."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return module.groups == 1
    return isinstance(module, nn.Linear)


def pointwise_convs(model: nn.Module) -> str:
    """Regex full-matching the names of the model's ungrouped 1x1 convolutions (LoRA ``conv``)."""
    names = _layers(
        model, lambda m: isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and _adaptable(m)
    )
    return exact(*names)
