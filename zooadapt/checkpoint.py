"""Read checkpoints safely and load them into (adapted) models, with a report.

Loading is validate-then-copy: the complete set of tensors to load is computed and
checked first, so on any error the model is exactly as it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt.errors import CheckpointError
from zooadapt.surgery import StemInit, adapt_conv_weight, default_stem_init
from zooadapt.types import RenameRule

__all__ = ["GENERIC_RULES", "LoadReport", "load_state", "read_state_dict", "rename_keys"]

#: Keys under which training checkpoints nest the model's state dict, in preference order.
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model_state_dict", "model", "module")

#: Entries of each kind that a report's text shows before summarising the rest.
REPORT_LINES = 10

#: Prefixes that wrappers add: DataParallel/DDP, torch.compile, Lightning.
GENERIC_RULES = (
    RenameRule(r"^module\.", "", name="strip DataParallel/DDP 'module.'"),
    RenameRule(r"^_orig_mod\.", "", name="strip torch.compile '_orig_mod.'"),
    RenameRule(r"^model\.", "", name="strip Lightning 'model.'"),
)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never running pickled code.

    Torch files are read with ``weights_only=True`` and memory-mapped when possible; a
    training checkpoint's nested state dict (``state_dict``, ``model``, ...) is unwrapped.

    Raises:
        CheckpointError: If the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = _torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    return _unwrap(data, path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(data: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(data, Mapping) and not _is_state_dict(data):
        nested = next((k for k in NESTED_KEYS if isinstance(data.get(k), Mapping)), None)
        if nested is None:
            raise CheckpointError(
                f"{path} is a dict without tensors or a known nested key {NESTED_KEYS}; "
                f"its keys: {sorted(map(str, data))[:10]}"
            )
        data = data[nested]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{path} holds {type(data).__name__}, not a state dict")
    return dict(data)


def _is_state_dict(data: Mapping[Any, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def rename_keys(
    state: Mapping[str, torch.Tensor], rules: Iterable[RenameRule], model_keys: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str]]]:
    """Apply ``rules`` in order to every key that the model does not already have.

    Returns:
        The renamed state dict, and old key -> (new key, rule names) for renamed keys.
    """
    known = set(model_keys)
    renamed: dict[str, tuple[str, str]] = {}
    result: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new, applied = key, []
        for rule in rules:
            if new in known:
                break
            candidate = rule.apply(new)
            if candidate != new:
                new, applied = candidate, [*applied, rule.name]
        if new in result:
            raise CheckpointError(f"rename rules map two checkpoint keys onto {new!r}")
        result[new] = tensor
        if applied:
            renamed[key] = (new, ", ".join(applied))
    return result, renamed


@dataclass
class LoadReport:
    """What loading a checkpoint did, key by key."""

    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, tuple[str, str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every tensor the model needs was loaded or deliberately replaced."""
        return not (self.mismatched or self.missing or self.unexpected)

    def __str__(self) -> str:
        sections = [
            ("renamed", [f"{old} -> {new} ({rule})" for old, (new, rule) in self.renamed.items()]),
            ("adapted", [f"{k} (input channels)" for k in self.adapted]),
            ("dropped", [f"{k} (head replaced)" for k in self.dropped]),
            (
                "mismatched",
                [
                    f"{k}: checkpoint {list(got)}, model {list(want)}"
                    for k, (got, want) in self.mismatched.items()
                ],
            ),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ]
        lines = [f"loaded {len(self.loaded)} tensors"]
        for label, entries in sections:
            lines += [f"  {label:<11} {entry}" for entry in entries[:REPORT_LINES]]
            if len(entries) > REPORT_LINES:
                lines.append(f"  {label:<11} ... and {len(entries) - REPORT_LINES} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class Targets:
    """Where the model was adapted: checkpoint tensors there are reshaped or dropped."""

    heads: tuple[str, ...] = ()
    stem: str | None = None
    stem_init: StemInit | None = None


def _under(key: str, paths: Iterable[str]) -> bool:
    return any(key.startswith(path + ".") for path in paths)


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    rules: Iterable[RenameRule] = (),
    targets: Targets = Targets(),
    strict: bool = True,
    source: str = "checkpoint",
) -> LoadReport:
    """Load ``state`` into ``model``: rename, drop replaced heads, adapt the stem.

    Raises:
        CheckpointError: With ``strict``, if anything is mismatched, missing or unexpected;
            the model is then unchanged.
    """
    own = model.state_dict()
    state, renamed = rename_keys(state, rules, own)
    report = LoadReport(renamed=renamed)
    final: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        want = own.get(key)
        if want is None:
            report.unexpected.append(key)
        elif tensor.shape == want.shape:
            final[key] = tensor
        elif _under(key, targets.heads):
            report.dropped.append(key)
        elif targets.stem and key == f"{targets.stem}.weight" and _channels_differ(tensor, want):
            init = targets.stem_init or default_stem_init(want.shape[1])
            final[key] = adapt_conv_weight(tensor, want.shape[1], init)
            report.adapted.append(key)
        else:
            report.mismatched[key] = (tuple(tensor.shape), tuple(want.shape))
    report.missing = [
        k
        for k in own
        if k not in final
        and not k.endswith("num_batches_tracked")
        and not (_under(k, targets.heads) and report.dropped)
    ]
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {type(model).__qualname__}:\n{report}")
    _copy_into(model, final)
    report.loaded = sorted(final)
    return report


def _channels_differ(tensor: torch.Tensor, want: torch.Tensor) -> bool:
    return (
        tensor.dim() == want.dim()
        and tensor.shape[:1] + tensor.shape[2:] == want.shape[:1] + want.shape[2:]
    )


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in tensors.items():
            target = _lookup_tensor(model, key)
            if target.shape != value.shape:  # adapted stem: the model has the new shape
                raise CheckpointError(f"internal error: shape of {key} changed during load")
            target.copy_(value)


def _lookup_tensor(model: nn.Module, key: str) -> torch.Tensor:
    owner_path, _, name = key.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    tensor = getattr(owner, name)
    assert isinstance(tensor, torch.Tensor)
    return tensor


def head_rows(state: Mapping[str, torch.Tensor], heads: Iterable[str]) -> int | None:
    """Output count of the first head found in ``state`` (its weight's first dimension)."""
    for path in heads:
        weight = state.get(f"{path}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def stem_channels(state: Mapping[str, torch.Tensor], stem: str | None) -> int | None:
    """Input channels of the stem convolution in ``state``."""
    weight = state.get(f"{stem}.weight") if stem else None
    return int(weight.shape[1]) if weight is not None and weight.dim() > 2 else None


def generic_and(rules: Iterable[RenameRule]) -> list[RenameRule]:
    """Generic wrapper rules followed by ``rules``."""
    return [*GENERIC_RULES, *rules]


def user_rules(rules: Iterable[RenameRule | tuple[str, str]]) -> list[RenameRule]:
    """Normalise user rules given as ``(regex, replacement)`` pairs or RenameRules."""
    result = []
    for rule in rules:
        if isinstance(rule, RenameRule):
            result.append(rule)
        else:
            pattern, replacement = rule
            try:
                result.append(RenameRule(pattern, replacement, name=f"user {pattern!r}"))
            except re.error as err:
                raise CheckpointError(
                    f"rename rule {pattern!r} is not a valid regex: {err}"
                ) from err
    return result
