"""Load state dicts into (adapted) models, with a report of what happened to each key.

Loading is validate-then-copy: the complete set of tensors to load is computed and
checked first, so on any error the model is exactly as it was.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from zooadapt._core.anatomy import call_family, describe, manager_of
from zooadapt._core.distributed import unwrap
from zooadapt._core.files import Source, read_state_dict
from zooadapt._core.meta import gc_paused
from zooadapt._core.plugins import Declared, PluginManager
from zooadapt._core.surgery import (
    INFLATE_MODES,
    StemInit,
    StemStats,
    adapt_stem,
    default_stem_init,
    inflatable,
    inflate_kernel,
    owner_of,
    stem_in_chans,
)
from zooadapt.data import data_config, pretrained_config
from zooadapt.errors import AdaptError, CheckpointError, FamilyNotFoundError
from zooadapt.types import Anatomy, Family, RenameRule, StemLayout

__all__ = [
    "GENERIC_RULES",
    "check_inflate",
    "checkpoint_rules",
    "LoadReport",
    "Targets",
    "load_report",
    "load_state",
    "load_weights",
    "materialize",
    "rename_keys",
]

#: Where ``adapt`` records the report of the checkpoint it loaded.
_REPORT = "_zooadapt_load_report"
#: Entries of each kind that a report's text shows before summarising the rest.
REPORT_LINES = 10

#: Prefixes that wrappers add (DataParallel/DDP, torch.compile, Lightning) and the
#: ``backbone.`` of detection-style checkpoints. Each applies only to keys the model lacks.
GENERIC_RULES = (
    RenameRule(r"^module\.", "", name="strip DataParallel/DDP 'module.'"),
    RenameRule(r"^_orig_mod\.", "", name="strip torch.compile '_orig_mod.'"),
    RenameRule(r"^model\.", "", name="strip Lightning 'model.'"),
    RenameRule(r"^backbone\.", "", name="strip 'backbone.'"),
)


def checkpoint_rules(
    model: nn.Module, declared: Declared[Family] | None, pm: PluginManager
) -> list[RenameRule]:
    """The rules every checkpoint of ``model`` gets: generic, the family's, other plugins'."""
    if declared is None:
        return list(GENERIC_RULES)
    family = call_family(declared, "rename_rules", lambda: pm.rename_rules(declared.item, model))
    return [*GENERIC_RULES, *family]


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
    cast: dict[str, tuple[str, str]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    inflated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every tensor the model needs was loaded or deliberately replaced."""
        return not (self.mismatched or self.missing or self.unexpected or self.invalid)

    def __str__(self) -> str:
        sections = [
            ("renamed", [f"{old} -> {new} ({rule})" for old, (new, rule) in self.renamed.items()]),
            ("inflated", [f"{k} (2-D kernel along depth)" for k in self.inflated]),
            ("adapted", [f"{k} (input channels)" for k in self.adapted]),
            ("dropped", [f"{k} (head replaced)" for k in self.dropped]),
            ("cast", [f"{k}: {got} -> {want}" for k, (got, want) in self.cast.items()]),
            ("invalid", [f"{k}: {why}" for k, why in self.invalid.items()]),
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
    stems: tuple[str, ...] = ()
    stem_init: StemInit | None = None
    stem_layout: StemLayout = StemLayout()
    new_heads: bool = False
    stats: StemStats | None = None
    inflate: str | None = None

    @classmethod
    def of(
        cls,
        anat: Anatomy,
        stem_init: StemInit | None = None,
        *,
        new_heads: bool = False,
        stats: StemStats | None = None,
        inflate: str | None = None,
    ) -> Targets:
        """The heads and stems an :class:`Anatomy` declares.

        Args:
            anat: The model's anatomy.
            stem_init: Strategy for a stem whose channel count differs.
            new_heads: The heads were just replaced, so the checkpoint need not hold them.
            stats: Statistics that a ``sum``-adapted stem is folded with (the
                checkpoint's, and the model's).
            inflate: How 2-D kernels of the checkpoint become the model's 3-D ones
                (:func:`zooadapt._core.surgery.inflate_kernel`); ``None`` refuses them.
        """
        return cls(anat.head, anat.stems, stem_init, anat.stem_layout, new_heads, stats, inflate)

    def is_stem(self, key: str) -> bool:
        """Whether ``key`` is a stem's weight."""
        return any(key == f"{stem}.weight" for stem in self.stems)


def _under(key: str, paths: Iterable[str]) -> bool:
    return any(key.startswith(path + ".") for path in paths)


def load_report(model: nn.Module) -> LoadReport | None:
    """What ``za.adapt(..., pretrained=FILE or "zoo/model")`` did loading that checkpoint.

    Returns:
        The :class:`LoadReport` (renamed, inflated, adapted, dropped... tensors), or
        ``None`` when ``adapt`` loaded no checkpoint (a zoo's own weights are loaded by
        its builder, before any surgery).
    """
    return unwrap(model).__dict__.get(_REPORT)


def record_load_report(model: nn.Module, report: LoadReport | None) -> None:
    """Keep ``report`` on the model for :func:`load_report`."""
    unwrap(model).__dict__[_REPORT] = report


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    rules: Iterable[RenameRule] = (),
    targets: Targets = Targets(),
    strict: bool = True,
    source: str = "checkpoint",
    assign: bool = False,
) -> LoadReport:
    """Load ``state`` into ``model``: rename, drop replaced heads, adapt the stem.

    Args:
        model: The (possibly adapted) model.
        state: The checkpoint's state dict.
        rules: Rename rules, applied in order to keys the model does not have.
        targets: Heads whose mismatched tensors are dropped, and the stem whose weight is
            adapted to the model's input channels.
        strict: Raise unless every tensor fits or was deliberately dropped or adapted.
        source: Name of the checkpoint, for messages.
        assign: Install the checkpoint's tensors instead of copying into the model's
            (for models built on the meta device); what the checkpoint does not hold is
            then initialised by :func:`materialize`.

    Raises:
        CheckpointError: With ``strict``, if anything is mismatched, missing or unexpected;
            the model is then unchanged.
    """
    own = model.state_dict()
    renamed_state, renamed = rename_keys(state, rules, own)
    report = LoadReport(renamed=renamed)
    final: dict[str, torch.Tensor] = {}
    replaced = _replaced_heads(renamed_state, own, targets)
    for key, tensor in renamed_state.items():
        want = own.get(key)
        problem = _uninstallable(tensor)
        if targets.inflate and want is not None and not problem and inflatable(tensor, want):
            tensor = inflate_kernel(tensor, want.shape[2], targets.inflate)
            report.inflated.append(key)
        if want is None:
            report.unexpected.append(key)
        elif problem:
            report.invalid[key] = problem
        elif _under(key, replaced):
            report.dropped.append(key)
        elif tensor.shape == want.shape:
            if key not in final:  # else: an adapted stem's bias, already folded
                final[key] = _in_dtype_of(key, tensor, want, report)
        elif targets.is_stem(key) and _channels_differ(tensor, want):
            weight, bias = _adapted_stem(key, tensor, renamed_state, own, targets)
            final[key] = _in_dtype_of(key, weight, want, report)
            if bias is not None:
                bias_key = key.removesuffix("weight") + "bias"
                final[bias_key] = _in_dtype_of(bias_key, bias, own[bias_key], report)
            report.adapted.append(key)
        else:
            report.mismatched[key] = (tuple(tensor.shape), tuple(want.shape))
    report.missing = [
        k
        for k in own
        if k not in final
        and not k.endswith("num_batches_tracked")
        and not (_under(k, targets.heads) and (report.dropped or targets.new_heads))
    ]
    if report.invalid:  # never installable, strict or not: nothing is changed
        raise CheckpointError(
            f"{source} cannot be loaded into {type(model).__qualname__}:\n{report}"
        )
    if strict and not report.ok:
        raise CheckpointError(
            f"{source} does not fit {type(model).__qualname__}:\n{report}{_inflate_hint(report)}"
        )
    if assign:
        model.load_state_dict(_with_metadata(final, state, own, renamed), strict=False, assign=True)
    else:
        _copy_into(model, final)
    report.loaded = sorted(final)
    return report


def check_inflate(inflate: object) -> None:
    """Refuse an ``inflate`` that is neither ``None`` nor one of ``INFLATE_MODES``."""
    if inflate is not None and inflate not in INFLATE_MODES:
        raise AdaptError(f"inflate={inflate!r} is not one of {INFLATE_MODES} (or None)")


def _inflate_hint(report: LoadReport) -> str:
    """A hint when the mismatches are 2-D kernels meeting 3-D ones."""
    flat = any(len(want) == len(got) + 1 for got, want in report.mismatched.values())
    if not flat:
        return ""
    return (
        "\n2-D kernels for a 3-D model: pass inflate='spread' (divided over the depth) or "
        "inflate='center' (the centre slice) to inflate them"
    )


def _adapted_stem(
    key: str,
    tensor: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    targets: Targets,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A checkpoint stem weight adapted to the model's channels, and the stem's bias.

    The bias is folded (``sum``) when the model's stem has one to hold it; else it is the
    checkpoint's, or zeros where only the model's stem has one.
    """
    bias_key = key.removesuffix("weight") + "bias"
    chans = stem_in_chans(own[key], targets.stem_layout)
    init = targets.stem_init or default_stem_init(chans)
    saved_bias = state.get(bias_key)
    stats = targets.stats if bias_key in own else None
    weight, bias = adapt_stem(tensor, saved_bias, chans, init, targets.stem_layout, stats)
    if bias is None and bias_key in own:
        bias = torch.zeros_like(own[bias_key], device=tensor.device)
    return weight, bias


def _stem_stats(model: nn.Module) -> StemStats:
    """A checkpoint of another channel count is taken to expect the pretrained statistics."""
    before, after = pretrained_config(model), data_config(model)
    return StemStats(before.mean, before.std, after.mean, after.std)


def _replaced_heads(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], targets: Targets
) -> tuple[str, ...]:
    """Heads whose class count differs between checkpoint and model: dropped as a whole.

    A head whose count matches but whose other dimension differs was not replaced: its
    tensors are a mismatch, never half-loaded.
    """
    replaced = []
    for path in targets.heads:
        got, want = state.get(f"{path}.weight"), own.get(f"{path}.weight")
        if got is not None and want is not None and got.shape[:1] != want.shape[:1]:
            replaced.append(path)
    return tuple(replaced)


def _uninstallable(tensor: object) -> str:
    """Why ``tensor`` cannot be installed in a model (``""`` if it can)."""
    if not isinstance(tensor, torch.Tensor):
        return f"a {type(tensor).__name__}, not a tensor"
    if tensor.layout is not torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor; only dense tensors load"
    if tensor.is_quantized:
        return "a quantized tensor; dequantize it first"
    if tensor.is_meta:
        return "a meta tensor: it holds no data"
    return ""


def _in_dtype_of(
    key: str, tensor: torch.Tensor, want: torch.Tensor, report: LoadReport
) -> torch.Tensor:
    """``tensor`` in the model's dtype: floats are cast (and reported), other kinds refused."""
    if tensor.dtype == want.dtype:
        return tensor
    same_kind = tensor.is_floating_point() == want.is_floating_point() and (
        tensor.dtype == torch.bool
    ) == (want.dtype == torch.bool)
    if not same_kind:
        report.invalid[key] = f"{_dtype_name(tensor)} where the model holds {_dtype_name(want)}"
        return tensor
    report.cast[key] = (_dtype_name(tensor), _dtype_name(want))
    return tensor.to(want.dtype)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _with_metadata(
    final: dict[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    renamed: Mapping[str, object],
) -> Mapping[str, torch.Tensor]:
    """Attach module versions (``_metadata``), which some modules need to load."""
    source = own if renamed else state
    metadata = getattr(source, "_metadata", None) or getattr(own, "_metadata", None)
    result = OrderedDict(final)
    if metadata is not None:
        result._metadata = metadata  # type: ignore[attr-defined]
    return result


def _channels_differ(tensor: torch.Tensor, want: torch.Tensor) -> bool:
    return (
        tensor.dim() == want.dim()
        and tensor.shape[:1] + tensor.shape[2:] == want.shape[:1] + want.shape[2:]
    )


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in tensors.items():
            getattr(*owner_of(model, key)).copy_(value)


def materialize(model: nn.Module, heads: Iterable[str]) -> list[str]:
    """Initialise, on the CPU, what a meta-built model still lacks after an assign-load.

    Replaced heads get fresh default initialisation and BatchNorm counters start at zero.

    Returns:
        Names of tensors still on the meta device (values the constructor computed that no
        checkpoint holds); the caller must then build the model for real.
    """
    for path in heads:
        head = model.get_submodule(path)
        if any(t.is_meta for t in head.parameters()):
            head.to_empty(device="cpu")
            head.reset_parameters()
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name.endswith("num_batches_tracked"):
            owner, attr = owner_of(model, name)
            owner._buffers[attr] = torch.zeros((), dtype=torch.long)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    attributes = [
        (f"{path}.{attr}".lstrip("."), value)
        for path, module in model.named_modules()
        for attr, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]
    return [name for name, tensor in (*tensors, *attributes) if tensor.is_meta]


def head_rows(state: Mapping[str, torch.Tensor], heads: Iterable[str]) -> int | None:
    """Output count of the first head found in ``state`` (its weight's first dimension)."""
    for path in heads:
        weight = state.get(f"{path}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def stem_channels(state: Mapping[str, torch.Tensor], anat: Anatomy) -> int | None:
    """Input channels that the (first) stem's weight in ``state`` reads."""
    weight = state.get(f"{anat.stem}.weight") if anat.stem else None
    if weight is None or weight.dim() < 2:
        return None
    return stem_in_chans(weight, anat.stem_layout)


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


@gc_paused()
def load_weights(
    model: nn.Module,
    source: Source,
    *,
    rules: Iterable[RenameRule | tuple[str, str]] = (),
    strict: bool = True,
    key: str | None = None,
    trust_pickle: bool = False,
    map_location: str | torch.device | None = None,
    stem_init: StemInit | None = None,
    inflate: str | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` and report what happened to every key.

    Keys are renamed by, in order: the generic wrapper rules (``module.``,
    ``_orig_mod.``, ``model.``, ``backbone.``), the family's rules, then ``rules``. A head
    whose shape differs from the checkpoint's (the model was adapted) is not loaded; a
    stem whose input channels differ gets the checkpoint's filters adapted with
    ``stem_init`` (a ``sum`` stem with a bias is folded from the family's pretrained
    statistics to the model's :func:`zooadapt.data_config`).

    Args:
        model: The model (wrappers such as DataParallel are accepted).
        source: Checkpoint path or open binary file; see :func:`read_state_dict`.
        rules: Extra ``(regex, replacement)`` renames or :class:`RenameRule` objects.
        strict: Raise unless every tensor fits or was deliberately dropped or adapted.
        key: Entry of a checkpoint dict holding the state dict.
        trust_pickle: Allow pickled objects (only for files you trust).
        map_location: Where to read the tensors before they are copied into the model's
            own (default: the CPU).
        stem_init: Strategy for a stem whose channel count differs.
        inflate: ``"spread"`` or ``"center"``: a 2-D checkpoint's kernels are inflated
            along depth into a 3-D model's (listed as ``inflated`` in the report; see
            :func:`zooadapt._core.surgery.inflate_kernel`); ``None`` reports them as
            mismatched.
        family: Force the family by name or pass a :class:`Family`; without one, a model
            no family understands loads with the generic rules only.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointError: If the file cannot be read or (``strict``) does not fit; the model
            is then unchanged.
    """
    model = unwrap(model)
    try:
        declared, anat = describe(model, plugin_manager, family)
    except FamilyNotFoundError:  # no family: the generic rules, nothing adapted
        if family is not None:
            raise
        declared, anat = None, None
    extra = user_rules(rules)  # a bad rule fails before the file is read
    state = read_state_dict(source, key=key, trust_pickle=trust_pickle, map_location=map_location)
    pm = plugin_manager or manager_of(model)
    all_rules = [*checkpoint_rules(model, declared, pm), *extra]
    check_inflate(inflate)
    targets = (
        Targets.of(anat, stem_init, stats=_stem_stats(model), inflate=inflate)
        if anat
        else Targets(inflate=inflate)
    )
    label = str(getattr(source, "name", source))
    return load_state(model, state, rules=all_rules, targets=targets, strict=strict, source=label)
