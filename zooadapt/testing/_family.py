"""Checking one family on one model: ``check_family`` and ``family_report``."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import NO_MATCH, anatomy, class_name, family_rank, present_heads
from zooadapt._core.anatomy import select_family as _select_family
from zooadapt._core.calling import caller
from zooadapt._core.checks import duplicate_groups, find, head_problems
from zooadapt._core.files import read_state_dict
from zooadapt._core.meta import build_on_meta
from zooadapt._core.plugins import (
    PluginManager,
    get_plugin_manager,
    make_plugin_manager,
    strict_plugins,
)
from zooadapt._core.surgery import check_stem, head_out_features, is_replaceable_head, stem_in_chans
from zooadapt._core.trace import output_layer
from zooadapt.adapt import adapt
from zooadapt.errors import AdaptError, CheckpointError
from zooadapt.freeze import freeze
from zooadapt.loading import GENERIC_RULES, rename_keys
from zooadapt.lora import ROLES
from zooadapt.testing._report import (
    _FAILED,
    DEFAULT_INPUT,
    MAX_LISTED,
    CheckpointKeys,
    ConformanceReport,
    ModelSource,
    _attempt,
    _describe,
    _did_you_mean,
    _names,
)
from zooadapt.types import Family, RenameRule, StemLayout

# -- checking one family on one model ------------------------------------------------------


@dataclass
class _Context:
    """What every family check needs: the family, the model and where to report."""

    family: Family
    plugin: str
    model: nn.Module
    pm: PluginManager | None
    report: ConformanceReport
    rebuild: Callable[[ConformanceReport], nn.Module | None]

    @property
    def adapt_pm(self) -> PluginManager:
        """The manager za.adapt and za.freeze use: the caller's, or an empty one."""
        return self.pm if self.pm is not None else make_plugin_manager()


def check_family(
    family: str | Family,
    model: ModelSource,
    *,
    input_shape: tuple[int, ...] = DEFAULT_INPUT,
    num_classes: int = 3,
    in_chans: int | None = 1,
    rules_checkpoint: CheckpointKeys | None = None,
    plugin_manager: PluginManager | None = None,
    device: str | torch.device | None = None,
    forward: bool = True,
) -> ConformanceReport:
    """Check that ``family`` fits ``model``; raise one error listing every problem.

    Checks that the family owns the model (it is the family ``za.anatomy`` picks, or at
    least claims it); that every head path exists and is an ``nn.Linear`` or 1x1
    convolution (or the family has ``reset_head``); that every stem path exists, is an
    adaptable layer and reads the input's channels; that a declared ``data_config`` fits
    the input and declared ``labels`` the head's class count; that every group regex matches a
    parameter, every parameter is in exactly one group, and the last group holds exactly
    the head's parameters; that every rename rule is idempotent and, given
    ``rules_checkpoint``, maps its keys onto the model's; that ``za.adapt(model,
    num_classes=..., in_chans=...)`` followed by a forward pass gives ``(N, num_classes)``;
    and that ``za.freeze(model, "backbone")`` leaves exactly the head trainable.

    Args:
        family: A family name (looked up in ``plugin_manager``) or a :class:`Family`.
        model: The model, or a function without arguments that builds it. A module
            argument is copied, never changed.
        input_shape: ``(N, C, H, W)`` of an input the unadapted model accepts; the adapted
            model gets the same shape with ``in_chans`` channels.
        num_classes: Classes of the new head.
        in_chans: Input channels of the adapted stem; ``None`` keeps the stem.
        rules_checkpoint: A checkpoint in a historical layout (state dict, its keys, or a
            file path) that the family's rename rules must map onto the model's keys.
        plugin_manager: Where to look ``family`` up, whose other plugins' rename rules
            apply, and where the family must win the model; defaults to the shared
            manager for a name. With a :class:`Family` and no manager, the check is
            hermetic.
        device: ``"meta"`` builds a model factory on the meta device: no memory, no
            initialisation, and the forward pass checks only shapes.
        forward: Run the forward pass (turn off for models that cannot run on the input).

    Returns:
        The :class:`ConformanceReport`, if no problem was found.

    Raises:
        ConformanceError: Listing every problem found.

    Example:
        >>> check_family("tinynet", TinyNet, plugin_manager=za.make_plugin_manager(tinynet))
    """
    return family_report(
        family,
        model,
        input_shape=input_shape,
        num_classes=num_classes,
        in_chans=in_chans,
        rules_checkpoint=rules_checkpoint,
        plugin_manager=plugin_manager,
        device=device,
        forward=forward,
    ).raise_if_failed()


@strict_plugins()  # the kit reports a broken plugin instead of skipping it
def family_report(
    family: str | Family,
    model: ModelSource,
    *,
    input_shape: tuple[int, ...] = DEFAULT_INPUT,
    num_classes: int = 3,
    in_chans: int | None = 1,
    rules_checkpoint: CheckpointKeys | None = None,
    plugin_manager: PluginManager | None = None,
    device: str | torch.device | None = None,
    forward: bool = True,
) -> ConformanceReport:
    """Run the checks of :func:`check_family` and return the report without raising."""
    pm = plugin_manager
    if isinstance(family, str) and pm is None:
        pm = get_plugin_manager()
    label = family if isinstance(family, str) else family.name
    report = ConformanceReport(f"family {label!r}")
    resolved = _resolve_family(family, pm, report)
    built = _build_model(model, device, report) if resolved is not None else None
    if resolved is None or built is None:
        return report
    fam, plugin = resolved
    declared_by = f" (plugin {plugin!r})" if plugin != "<caller>" else ""
    report.subject = f"family {fam.name!r}{declared_by} on {type(built).__name__}"
    ctx = _Context(fam, plugin, built, pm, report, lambda r: _build_model(model, device, r))
    _check_owner(ctx)
    heads = _check_heads(ctx)
    if heads and all(is_replaceable_head(ctx.model.get_submodule(h)) for h in heads):
        _check_output(ctx, heads)  # a headless model's output comes from before its head
    stems = _check_stems(ctx, input_shape)
    _check_data(ctx, heads, input_shape)
    assigned = _check_groups(ctx, heads)
    _check_rename_rules(ctx, rules_checkpoint)
    _check_roles(ctx, input_shape)
    if heads is None or stems is None or not assigned:
        report.notes.append("za.adapt, forward and za.freeze not checked: fix the above first")
        return report
    request = _request(ctx, heads, stems, num_classes, in_chans, input_shape)
    _check_adapt_forward_freeze(ctx, request, forward)
    return report


def _resolve_family(
    family: str | Family, pm: PluginManager | None, report: ConformanceReport
) -> tuple[Family, str] | None:
    """The family object and the plugin that declares it (``"<caller>"`` if none)."""
    if pm is None:
        return (family, "<caller>") if isinstance(family, Family) else None
    declared = _attempt(report, "plugin", "collecting the families", pm.families)
    if declared is _FAILED:
        return None
    by_name = {d.item.name: d for d in declared}
    if isinstance(family, Family):
        entry = by_name.get(family.name)
        return family, entry.plugin if entry is not None and entry.item == family else "<caller>"
    if family not in by_name:
        names = ", ".join(sorted(by_name)) or "none"
        report.add("owner", f"no family named {family!r} is declared; declared: {names}")
        return None
    return by_name[family].item, by_name[family].plugin


def _build_model(
    source: ModelSource, device: str | torch.device | None, report: ConformanceReport
) -> nn.Module | None:
    """The model to check: a copy of a module, or a freshly built one."""
    on_meta = device is not None and torch.device(device).type == "meta"
    if isinstance(source, nn.Module):
        build: Callable[[], nn.Module] = lambda: copy.deepcopy(source)  # noqa: E731
    elif callable(source):
        build = lambda: build_on_meta(source) if on_meta else source()  # noqa: E731
    else:
        report.add("model", f"expected an nn.Module or a function building one, got {source!r}")
        return None
    model = _attempt(report, "model", "building the model", build)
    if model is _FAILED:
        return None
    if not isinstance(model, nn.Module):
        report.add("model", f"the model factory returned {type(model).__name__}, not nn.Module")
        return None
    return model.to(device) if device is not None else model


# -- owner ---------------------------------------------------------------------------------


def _check_owner(ctx: _Context) -> None:
    """The family must be the one za.anatomy picks (or, without a manager, claim the model)."""
    fam, model = ctx.family, ctx.model
    qualified = class_name(type(model))
    declared = ctx.pm is not None and ctx.plugin != "<caller>"
    if not declared:
        rank = _attempt(ctx.report, "owner", "the family's match", lambda: family_rank(fam, model))
        if rank is not _FAILED and rank == NO_MATCH:
            ctx.report.add(
                "owner",
                f"the family does not claim {qualified}: list {qualified!r} in Family.classes "
                "or give the family a match predicate",
            )
        return
    chosen = _attempt(
        ctx.report, "owner", "choosing the family", lambda: _select_family(model, ctx.pm)
    )
    if chosen is not _FAILED and chosen.item.name != fam.name:
        ctx.report.add(
            "owner",
            f"za.anatomy picks family {chosen.item.name!r} (plugin {chosen.plugin!r}) for "
            f"{qualified}, not {fam.name!r}: list {qualified!r} in Family.classes",
        )


# -- head and stem -------------------------------------------------------------------------


def _check_heads(ctx: _Context) -> tuple[str, ...] | None:
    """Every head path exists and can be replaced; returns the heads present."""
    fam, model = ctx.family, ctx.model
    heads = _attempt(ctx.report, "head", "the family's head", lambda: present_heads(model, fam))
    if heads is _FAILED:
        return None
    ok = True
    for path in heads:
        module = find(model, path)
        if module is None:
            ctx.report.add(
                "head",
                f"head path {path!r} does not exist in {type(model).__name__}"
                + _did_you_mean(path, model),
            )
            ok = False
        else:
            for message in head_problems(model, fam, path):  # the checks za.anatomy runs
                ctx.report.add("head", message)
                ok = False
    return tuple(heads) if ok else None


def _check_output(ctx: _Context, heads: tuple[str, ...]) -> None:
    """The declared heads include the layer a meta trace shows producing the output."""
    found = _attempt(ctx.report, "head", "tracing the output", lambda: output_layer(ctx.model))
    if found is _FAILED or found is None:
        return  # several heads combined, or no input the model takes: nothing to compare
    if found[0] not in heads:
        ctx.report.add(
            "head",
            f"the layer that produces the output is {found[0]!r}, not the declared head "
            f"{_names(heads)}: point head at {found[0]!r}",
        )


def _check_stems(ctx: _Context, input_shape: Sequence[int]) -> tuple[str, ...] | None:
    """Every stem path exists, is adaptable and reads the input; returns the stem paths."""
    fam, model = ctx.family, ctx.model
    stems = _attempt(ctx.report, "stem", "the family's stem", lambda: fam.stem_paths(model))
    layout = _attempt(
        ctx.report, "stem", "the family's stem_layout", lambda: fam.stem_layout_of(model)
    )
    if stems is _FAILED or layout is _FAILED:
        return None
    channels = input_shape[1] if len(input_shape) > 1 else None
    ok = all([_check_stem(ctx, path, layout, channels) for path in stems])
    return tuple(stems) if ok else None


def _check_stem(ctx: _Context, path: str, layout: StemLayout, channels: int | None) -> bool:
    model = ctx.model
    layer = find(model, path)
    if layer is None:
        ctx.report.add(
            "stem",
            f"stem path {path!r} does not exist in {type(model).__name__}"
            + _did_you_mean(path, model),
        )
        return False
    try:
        check_stem(layer, path)
    except AdaptError as err:
        ctx.report.add("stem", str(err))
        return False
    inner = layer.weight.shape[1]
    if inner % layout.fold:
        ctx.report.add(
            "stem",
            f"stem {path!r} has {inner} input columns, not a multiple of its "
            f"StemLayout.fold={layout.fold}",
        )
        return False
    reads = stem_in_chans(layer.weight, layout)
    if channels is not None and reads != channels:
        ctx.report.add(
            "stem",
            f"stem {path!r} reads {reads} input channels but the input has {channels}: the "
            "stem must be the layer that reads the image",
        )
        return False
    return True


# -- groups --------------------------------------------------------------------------------


def _check_data(ctx: _Context, heads: tuple[str, ...] | None, shape: Sequence[int]) -> None:
    """A declared data config fits the input, declared labels fit the head."""
    fam, model = ctx.family, ctx.model
    config = _attempt(ctx.report, "data", "Family.data_config", lambda: fam.data_config_of(model))
    if config not in (None, _FAILED) and (
        config.in_chans != shape[1] or len(config.spatial_size) != len(shape) - 2
    ):
        ctx.report.add(
            "data",
            f"Family.data_config has input_size {config.input_size}; the model reads "
            f"{tuple(shape[1:])}: give (channels, *spatial) of the pretrained input",
        )
    names = _attempt(ctx.report, "data", "Family.labels", lambda: fam.labels_of(model))
    if names in (None, _FAILED) or not heads:
        return
    head = ctx.model.get_submodule(heads[0])
    count = head_out_features(head) if is_replaceable_head(head) else None
    if count is not None and len(names) != count:
        ctx.report.add(
            "data", f"Family.labels has {len(names)} names for a head of {count} classes"
        )


def _check_groups(ctx: _Context, heads: tuple[str, ...] | None) -> bool:
    """Every regex matches; every parameter is in one group; the last group is the head.

    Returns:
        Whether every parameter is in exactly one group (so that za.adapt can run).
    """
    fam, model = ctx.family, ctx.model
    patterns = _attempt(
        ctx.report, "groups", "the family's groups", lambda: fam.group_patterns(model)
    )
    if patterns is _FAILED:
        return False
    if not patterns:
        ctx.report.add("groups", "the family declares no groups")
        return False
    for message in duplicate_groups(patterns):  # the check za.anatomy runs
        ctx.report.add("groups", message)
    members, assigned = _members(ctx, patterns)
    for name, pattern in patterns[:-1]:
        if not members[name]:
            ctx.report.add("groups", f"group {name!r} (regex {pattern!r}) matches no parameter")
    if heads is not None:
        _check_head_group(ctx, patterns[-1], members[patterns[-1][0]], heads)
    return assigned


def _members(
    ctx: _Context, patterns: Sequence[tuple[str, str]]
) -> tuple[dict[str, list[str]], bool]:
    """Group name -> its parameters, and whether each parameter is in exactly one group.

    Parameters in no group or in several are reported, each by name.
    """
    compiled = [(name, re.compile(pattern)) for name, pattern in patterns]
    members: dict[str, list[str]] = {name: [] for name, _ in patterns}
    orphans: list[str] = []
    shared: list[str] = []
    for param, _ in ctx.model.named_parameters():
        hits = [name for name, regex in compiled if regex.search(param)]
        for name in hits:
            members[name].append(param)
        if not hits:
            orphans.append(param)
        elif len(hits) > 1:
            shared.append(f"parameter {param!r} matches {len(hits)} groups: {_names(hits)}")
    shared += [f"parameter {param!r} matches no group" for param in orphans]
    for message in shared[:MAX_LISTED]:
        ctx.report.add("groups", message)
    if len(shared) > MAX_LISTED:
        ctx.report.add(
            "groups", f"{len(shared) - MAX_LISTED} more parameters match no group or several"
        )
    return members, not shared


def _check_head_group(
    ctx: _Context, last: tuple[str, str], members: list[str], heads: tuple[str, ...]
) -> None:
    name, pattern = last
    expected = _params_under(ctx.model, heads)
    extra = [p for p in members if p not in expected]
    lacking = [p for p in expected if p not in members]
    where = f"the head's parameters (under {_names(heads)})" if heads else "no parameter"
    if not members and expected:
        ctx.report.add(
            "groups",
            f"the last group {name!r} (regex {pattern!r}) matches no parameter; it must hold "
            f"exactly {where}",
        )
        return
    if extra:
        ctx.report.add(
            "groups",
            f"the last group {name!r} must hold exactly {where}, but also holds {_names(extra)}",
        )
    if lacking:
        ctx.report.add(
            "groups",
            f"the last group {name!r} must hold exactly {where}, but lacks {_names(lacking)}",
        )


def _params_under(model: nn.Module, paths: Iterable[str]) -> list[str]:
    prefixes = tuple(f"{path}." for path in paths)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


# -- rename rules --------------------------------------------------------------------------


def _check_rename_rules(ctx: _Context, checkpoint: CheckpointKeys | None) -> None:
    """Each rule is idempotent; given a checkpoint, the renamed keys are the model's."""
    rules = _attempt(ctx.report, "rename", "collecting the rename rules", lambda: _rules(ctx))
    if rules is _FAILED:
        return
    model_keys = list(ctx.model.state_dict())
    keys = _checkpoint_keys(ctx, checkpoint) if checkpoint is not None else None
    for rule in rules:
        _check_idempotent(ctx, rule, [*(keys or []), *model_keys])
    if keys is not None:
        _check_renamed(ctx, [*GENERIC_RULES, *rules], keys, model_keys)


def _rules(ctx: _Context) -> list[RenameRule]:
    if ctx.pm is None:
        return list(ctx.family.rename_rules_of(ctx.model))
    return ctx.pm.rename_rules(ctx.family, ctx.model)


def _checkpoint_keys(ctx: _Context, checkpoint: CheckpointKeys) -> list[str] | None:
    if isinstance(checkpoint, (str, os.PathLike)):
        state = _attempt(
            ctx.report, "rename", f"reading {checkpoint}", lambda: read_state_dict(checkpoint)
        )
        return None if state is _FAILED else list(state)
    return [str(key) for key in checkpoint]


def _check_idempotent(ctx: _Context, rule: RenameRule, keys: Iterable[str]) -> None:
    for key in keys:
        once = rule.apply(key)
        twice = rule.apply(once)
        if twice != once:
            ctx.report.add(
                "rename",
                f"rename rule {rule.name!r} is not idempotent: {key!r} -> {once!r} -> "
                f"{twice!r}; a rule must leave the keys it produces unchanged",
            )
            return


def _check_renamed(
    ctx: _Context, rules: Sequence[RenameRule], keys: Sequence[str], model_keys: Sequence[str]
) -> None:
    try:
        renamed, _ = rename_keys(dict.fromkeys(keys), rules, model_keys)
    except CheckpointError as err:
        ctx.report.add("rename", f"renaming the checkpoint's keys failed: {err}")
        return
    sources = {new: old for old, new in zip(keys, renamed, strict=True)}
    unexpected = [key for key in renamed if key not in set(model_keys)]
    missing = [key for key in model_keys if key not in renamed]
    for key in unexpected[:MAX_LISTED]:
        origin = f" (from {sources[key]!r})" if sources[key] != key else ""
        ctx.report.add("rename", f"renamed checkpoint key {key!r}{origin} is not in the model")
    for key in missing[:MAX_LISTED]:
        ctx.report.add("rename", f"model key {key!r} is missing from the renamed checkpoint")
    overflow = max(len(unexpected) - MAX_LISTED, 0) + max(len(missing) - MAX_LISTED, 0)
    if overflow:
        ctx.report.add("rename", f"{overflow} more keys do not match after renaming")


# -- adapt, forward, freeze ----------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What za.adapt is asked to do, and the inputs before and after."""

    num_classes: int | None
    in_chans: int | None
    input_shape: tuple[int, ...]
    adapted_shape: tuple[int, ...]


def _request(
    ctx: _Context,
    heads: tuple[str, ...],
    stems: tuple[str, ...],
    num_classes: int,
    in_chans: int | None,
    input_shape: tuple[int, ...],
) -> _Request:
    """Skip ``num_classes`` without a head and ``in_chans`` without a stem (with a note)."""
    if not stems and in_chans is not None:
        ctx.report.notes.append(f"in_chans={in_chans} not checked: the model has no stem")
        in_chans = None
    wanted = None if not heads else num_classes
    if wanted is None:
        ctx.report.notes.append(f"num_classes={num_classes} not checked: the model has no head")
    shape = tuple(input_shape)
    adapted = (shape[0], in_chans, *shape[2:]) if in_chans is not None else shape
    return _Request(wanted, in_chans, shape, adapted)


def _check_adapt_forward_freeze(ctx: _Context, request: _Request, forward: bool) -> None:
    model = ctx.model
    call = f"za.adapt(model, num_classes={request.num_classes}, in_chans={request.in_chans})"
    done = _attempt(
        ctx.report,
        "adapt",
        call,
        lambda: adapt(
            model,
            num_classes=request.num_classes,
            in_chans=request.in_chans,
            family=ctx.family,
            plugin_manager=ctx.adapt_pm,
        ),
    )
    if done is _FAILED:
        return
    _check_adapted_layers(ctx, request)
    if forward:
        _check_forward(ctx, request)
    _check_freeze(ctx)


def _check_adapted_layers(ctx: _Context, request: _Request) -> None:
    fam, model = ctx.family, ctx.model
    after = _attempt(
        ctx.report,
        "adapt",
        "za.anatomy of the adapted model",
        lambda: anatomy(model, family=fam, plugin_manager=ctx.adapt_pm),
    )
    if after is _FAILED:
        return
    for path in after.head if request.num_classes is not None else ():
        layer = model.get_submodule(path)
        outputs = head_out_features(layer) if is_replaceable_head(layer) else None
        if outputs != request.num_classes:
            ctx.report.add(
                "adapt",
                f"after za.adapt, head {path!r} ({type(layer).__name__}) has {outputs} "
                f"outputs, expected {request.num_classes}",
            )
    for path in after.stems if request.in_chans is not None else ():
        reads = stem_in_chans(model.get_submodule(path).weight, after.stem_layout)
        if reads != request.in_chans:
            ctx.report.add(
                "adapt",
                f"after za.adapt, stem {path!r} reads {reads} channels, expected "
                f"{request.in_chans}",
            )


def _example(model: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    tensor = next(iter(model.parameters()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(0)
    return torch.rand(*shape, device=device, dtype=dtype, generator=generator)


# -- LoRA roles ----------------------------------------------------------------------------

#: Training steps in which every adapter must receive a gradient: a zero-initialised head
#: (torchvision's ViT) moves first, then each adapter's ``B``, then its ``A``.
ROLE_STEPS = 3


def _check_roles(ctx: _Context, input_shape: Sequence[int]) -> None:
    """Each declared role matches modules; adapters on all of them all receive gradients."""
    roles = _attempt(ctx.report, "roles", "Family.roles", lambda: ctx.family.roles_of(ctx.model))
    if roles is _FAILED or not roles:
        return
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        ctx.report.add("roles", f"roles {unknown} are not LoRA roles; roles are {ROLES}")
    names = [n for n, _ in ctx.model.named_modules() if n]
    matched = []
    for role, pattern in roles.items():
        if any(re.fullmatch(pattern, name) for name in names):
            matched.append(pattern)
        else:
            ctx.report.add("roles", f"role {role!r} ({pattern!r}) matches no module")
    if any(p.is_meta for p in ctx.model.parameters()):
        ctx.report.notes.append("adapter gradients not checked on the meta device")
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        ctx.report.notes.append("adapter gradients not checked: peft is not installed")
        return
    model = ctx.rebuild(ctx.report)
    if model is not None and matched:
        _check_adapter_gradients(ctx, model, matched, input_shape)


def _check_adapter_gradients(
    ctx: _Context, model: nn.Module, patterns: list[str], input_shape: Sequence[int]
) -> None:
    from zooadapt.lora import adapter_names, lora

    done = _attempt(
        ctx.report, "roles", "za.lora on every declared role",
        lambda: lora(model, r=2, targets=patterns, family=ctx.family, plugin_manager=ctx.adapt_pm),
    )  # fmt: skip
    if done is _FAILED:
        return
    names = set(adapter_names(model))
    adapters = {n: p for n, p in list(model.named_parameters()) if n in names}
    got = dict.fromkeys(adapters, False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(ROLE_STEPS):
        optimizer.zero_grad()
        output = caller(model)(_example(model, input_shape))
        target = torch.zeros(output.shape[0], dtype=torch.long)
        torch.nn.functional.cross_entropy(output, target).backward()
        for name, param in adapters.items():
            got[name] |= param.grad is not None and bool(param.grad.abs().sum() > 0)
        optimizer.step()
    never = sorted({n.split(".lora_")[0] for n, ok in got.items() if not ok})
    if never:
        ctx.report.add(
            "roles",
            f"adapters on {never[:3]} received no gradient in {ROLE_STEPS} training steps: "
            "the model reads those layers' weights without calling them (declare the module "
            "that does, as vit's qkv is its nn.MultiheadAttention)",
        )


def _run(model: nn.Module, shape: Sequence[int]) -> Any:
    with torch.no_grad():
        return caller(model.eval())(_example(model, shape))


def _check_forward(ctx: _Context, request: _Request) -> None:
    try:
        output = _run(ctx.model, request.adapted_shape)
    except Exception as err:  # noqa: BLE001 - the failure is the finding
        ctx.report.add(
            "forward",
            f"the adapted model's forward on an input of shape {request.adapted_shape} raised "
            f"{_describe(err)}{_baseline(ctx, request)}",
        )
        return
    if not isinstance(output, torch.Tensor):
        ctx.report.add(
            "forward",
            f"the adapted model's forward returned {type(output).__name__}, not a tensor",
        )
        return
    if request.num_classes is not None:
        want = (request.adapted_shape[0], request.num_classes)
        if tuple(output.shape) != want:
            ctx.report.add(
                "forward",
                f"the adapted model's forward on an input of shape {request.adapted_shape} "
                f"gave shape {tuple(output.shape)}, expected {want}",
            )


def _baseline(ctx: _Context, request: _Request) -> str:
    """Whether the unadapted model runs on ``input_shape``: tells test from family bugs."""
    scratch = ConformanceReport("")
    original = ctx.rebuild(scratch)
    if original is None:
        return ""
    if _attempt(scratch, "", "", lambda: _run(original, request.input_shape)) is _FAILED:
        return (
            f" (the unadapted model fails on {request.input_shape} too: pass an input_shape "
            "it accepts)"
        )
    return f" (the unadapted model runs on {request.input_shape}: the adaptation broke it)"


def _check_freeze(ctx: _Context) -> None:
    model = ctx.model
    for param in model.parameters():
        param.requires_grad_(True)
    done = _attempt(
        ctx.report,
        "freeze",
        'za.freeze(model, "backbone") on the adapted model',
        lambda: freeze(model, "backbone", family=ctx.family, plugin_manager=ctx.adapt_pm),
    )
    if done is _FAILED:
        return
    heads = present_heads(model, ctx.family)
    expected = set(_params_under(model, heads))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    extra = [name for name in trainable if name not in expected]
    frozen = [name for name in _params_under(model, heads) if name not in set(trainable)]
    if extra:
        ctx.report.add(
            "freeze",
            f'after za.freeze(model, "backbone"), parameters outside the head are trainable: '
            f"{_names(extra)}",
        )
    if frozen:
        ctx.report.add(
            "freeze",
            f'after za.freeze(model, "backbone"), head parameters are frozen: {_names(frozen)}',
        )
