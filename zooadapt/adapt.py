"""``za.adapt``: build or take a model and make it fine-tune-ready, as named steps."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import describe, manager_of
from zooadapt._core.distributed import unwrap
from zooadapt._core.files import read_state_dict
from zooadapt._core.meta import build_on_meta, gc_paused
from zooadapt._core.names import ModelRef, resolve_name
from zooadapt._core.plan import CheckpointStem, Plan, plan_surgery, plan_sync
from zooadapt._core.plugins import PluginManager, get_plugin_manager
from zooadapt._core.pretrained import ensure_local, select_weights
from zooadapt._core.surgery import StemInit, StemStats, default_stem_init, stem_in_chans
from zooadapt.data import adapted_config, data_config, record_config
from zooadapt.errors import AdaptError, PluginError, WeightsNotAvailableError, ZooAdaptError
from zooadapt.freeze import FreezeSpec
from zooadapt.freeze import freeze as freeze_model
from zooadapt.freeze import select as select_frozen
from zooadapt.labels import check_classes, labels, record_labels, resolve_classes
from zooadapt.loading import (
    Targets,
    check_inflate,
    checkpoint_rules,
    head_rows,
    load_state,
    materialize,
    record_load_report,
    rename_keys,
    stem_channels,
)
from zooadapt.types import Adaptation, Anatomy, DataConfig, Family, Weights

__all__ = ["adapt", "adapted_from", "sync_config"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
_ORIGIN = "_zooadapt_origin"
_WEIGHTS = "_zooadapt_weights_tag"


@dataclass(frozen=True)
class _Request:
    """What the caller asked ``adapt`` to do to the model's head and stem."""

    num_classes: int | None
    in_chans: int | None
    stem_init: StemInit | None
    freeze: FreezeSpec
    family: str | Family | None
    pm: PluginManager | None  # None: the model's own (recorded) or the shared manager
    classes: list[str | int] | None = None
    mean: Sequence[float | None] | None = None
    std: Sequence[float | None] | None = None
    inflate: str | None = None
    lora: Mapping[str, Any] | None = None

    @property
    def restats(self) -> bool:
        """Whether the input statistics are asked to change."""
        return self.mean is not None or self.std is not None


@gc_paused()
def adapt(
    model: str | nn.Module,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem_init: StemInit | None = None,
    classes: Sequence[str | int] | None = None,
    mean: Sequence[float | None] | None = None,
    std: Sequence[float | None] | None = None,
    pretrained: bool | str | os.PathLike[str] = True,
    inflate: str | None = None,
    freeze: FreezeSpec = None,
    lora: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    trust_pickle: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """Return ``model`` ready to fine-tune: weights loaded, head and stem adapted.

    Args:
        model: A registry name (``"resnet152"``, ``"torchvision/resnet152"``) or a module,
            which is changed in place (wrappers such as DataParallel are accepted).
        num_classes: Outputs of every declared head (aux heads too). ``None`` keeps the
            head, or takes the class count of a checkpoint given as ``pretrained``.
        in_chans: Input channels; the stem is rebuilt from the pretrained filters.
            ``None`` keeps them, or takes the channel count of a checkpoint.
        stem_init: ``"sum"`` (default for 1 channel), ``"repeat"`` (default otherwise),
            ``"zeros"``, or a channel map; see :func:`zooadapt._core.surgery.adapt_conv_weight`.
            The new channels get matching statistics in :func:`zooadapt.data_config`
            (``"sum"`` folds the pretrained per-channel statistics into the stem).
        classes: Class names or indices for the new head, in order: a name or index the
            pretrained labels know keeps its pretrained head row (aux heads too), a new
            name gets a fresh row. Implies ``num_classes``; the names become
            :func:`zooadapt.labels`.
        mean: Per-channel means of your data for the input (``None`` entries keep the
            derived ones), e.g. for a NIR band; the stem keeps its filters for it.
        std: Per-channel standard deviations, like ``mean``.
        pretrained: ``True`` for the zoo's default weights, ``False`` for random
            initialisation, a weights tag (``"IMAGENET1K_V1"``), a checkpoint path, or
            another registry model's weights (``"torchvision/densenet121"``,
            ``"timm/resnet18.a1_in1k"``), loaded as a checkpoint file.
            A module argument keeps its own weights unless a path is given.
        inflate: ``"spread"`` or ``"center"`` loads a 2-D checkpoint into a 3-D model,
            each kernel inflated along depth: ``"spread"`` divides it evenly, so that a
            volume constant along depth gives the 2-D activations away from the depth
            borders; ``"center"`` puts it in the centre slice (exact everywhere).
        freeze: Freeze spec passed to :func:`zooadapt.freeze` (``"backbone"``, a group
            name, a group count, a list of groups or regexes), with BatchNorm frozen.
        lora: Arguments of :func:`zooadapt.lora` (``dict(r=8, targets="attention")``):
            LoRA adapters are injected last, and only they and the head train.
        device: Where the result lives. ``"meta"`` builds without allocating memory and
            without loading weights.
        dtype: Floating-point dtype of the result.
        family: Force the family by name, or pass a :class:`Family` for an unknown model.
        plugin_manager: Defaults to the shared manager with every installed plugin.
        trust_pickle: Unpickle any object in a ``pretrained`` file (only for files you
            trust: unpickling can run code); inert types need no trust.
        **model_kwargs: Passed to the zoo's builder.

    Returns:
        The zoo's own module class, changed in place (never a wrapper).

    Raises:
        ZooAdaptError: A subclass naming the model, argument, file or plugin at fault; a
            module argument is then left exactly as it was.
    """
    _check_count("num_classes", num_classes)
    _check_count("in_chans", in_chans)
    entries = None if classes is None else check_classes(classes)
    if entries is not None and num_classes not in (None, len(entries)):
        raise AdaptError(
            f"num_classes={num_classes} but classes lists {len(entries)}; give one of them"
        )
    check_inflate(inflate)
    if lora is not None and not isinstance(lora, Mapping):
        raise AdaptError(f"lora= takes the arguments of za.lora as a dict, got {lora!r}")
    request = _Request(
        num_classes, in_chans, stem_init, freeze, family, plugin_manager, entries, mean, std,
        inflate, lora,
    )  # fmt: skip
    on_meta = device is not None and torch.device(device).type == "meta"
    if not on_meta:
        pretrained = _referenced_file(pretrained, request.pm or get_plugin_manager())
    path = pretrained if _is_path(pretrained) and not on_meta else None
    checkpoint = (
        read_state_dict(path, trust_pickle=trust_pickle)  # type: ignore[arg-type]
        if path is not None
        else None
    )
    if isinstance(model, nn.Module):
        _check_module_arguments(pretrained, model_kwargs, request, checkpoint)
        _adapt_in_place(unwrap(model), request, checkpoint, str(path), assign=False)
        return _finish(model, request, device, dtype)
    if not isinstance(model, str):
        raise AdaptError(f"model must be a registry name or nn.Module, got {type(model).__name__}")
    ref = resolve_name(model, request.pm or get_plugin_manager())
    if checkpoint is not None:
        module = _from_checkpoint(ref, model_kwargs, request, checkpoint, str(path))
    else:
        sized = _sized(ref, request) if pretrained is False or pretrained is None else {}
        module = _from_zoo(ref, pretrained, on_meta, {**sized, **model_kwargs})
        _adapt_in_place(module, request, None, "", assign=False)
    origin = {"model": ref.qualified, "model_kwargs": dict(model_kwargs)}
    setattr(module, _ORIGIN, {**origin, "weights": module.__dict__.pop(_WEIGHTS, None)})
    return _finish(module, request, device, dtype)


def adapted_from(model: nn.Module) -> dict[str, Any] | None:
    """The registry name, builder arguments and weights tag ``adapt`` built ``model`` from.

    ``weights`` is the zoo weights' tag, or ``None`` (random, or a checkpoint file).
    """
    return getattr(unwrap(model), _ORIGIN, None)


def sync_config(model: nn.Module) -> None:
    """Bring the model's own configuration in line with what it is now (``Family.sync``).

    ``za.load`` calls it once it has restored the labels a file records.
    """
    model = unwrap(model)
    declared, anat = describe(model)
    plan = Plan()
    plan_sync(plan, model, declared, Adaptation(anat.num_classes, anat.in_chans, labels(model)))
    plan.apply(model)


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdaptError(f"{name} must be a positive int, got {value!r}")


def _check_module_arguments(
    pretrained: object, model_kwargs: dict[str, Any], request: _Request, checkpoint: object
) -> None:
    if request.classes is not None and checkpoint is not None:
        raise AdaptError(
            "classes= keeps rows of the head the model has, but pretrained= loads a file "
            "over it; load it first (za.load_weights(model, path)), then "
            "za.adapt(model, classes=...)"
        )
    if model_kwargs:
        raise AdaptError(f"model keyword arguments {sorted(model_kwargs)} need a model name")
    if isinstance(pretrained, str) and not _is_path(pretrained):
        raise AdaptError(
            f"pretrained={pretrained!r} names zoo weights; a module argument takes "
            "True/False or a checkpoint path"
        )


def _referenced_file(pretrained: object, pm: PluginManager) -> object:
    """The local file of weights named by registry reference (``torchvision/densenet121``).

    Anything else (a flag, a tag, an existing path) is returned as it is.
    """
    if not isinstance(pretrained, str) or Path(pretrained).exists():
        return pretrained
    zoo, slash, _ = pretrained.partition("/")
    if not slash or zoo not in {z.item.name for z in pm.zoos()}:
        return pretrained
    ref = resolve_name(pretrained, pm)
    return ensure_local(select_weights(ref, ref.tag or True), ref)


def _is_path(pretrained: object) -> bool:
    if isinstance(pretrained, os.PathLike):
        return True
    return isinstance(pretrained, str) and (
        os.sep in pretrained
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
        or Path(pretrained).exists()
    )


def _finish(
    model: nn.Module, request: _Request, device: Any, dtype: torch.dtype | None
) -> nn.Module:
    if request.freeze is not None:
        freeze_model(model, request.freeze, family=request.family, plugin_manager=request.pm)
    if request.lora is not None:
        from zooadapt.lora import lora

        lora(model, family=request.family, plugin_manager=request.pm, **request.lora)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# -- building ------------------------------------------------------------------------------


def _from_zoo(
    ref: ModelRef, pretrained: object, on_meta: bool, model_kwargs: dict[str, Any]
) -> nn.Module:
    """Build from the zoo: on meta, with random weights, or with its pretrained weights.

    The weights' data config and class names are recorded on the model; on meta, those
    of the weights ``pretrained`` names, when the zoo knows them.
    """
    random = pretrained is False or pretrained is None  # whatever tag the name has
    if on_meta:
        module = build_on_meta(lambda: _build(ref, None, model_kwargs))
        if not random:
            with contextlib.suppress(WeightsNotAvailableError):  # on meta, nothing is loaded
                _record_weights(module, select_weights(ref, pretrained))  # type: ignore[arg-type]
        return module
    if random:
        return _build(ref, None, model_kwargs)
    weights = select_weights(ref, pretrained)  # type: ignore[arg-type]
    local = dataclasses.replace(weights, file=ensure_local(weights, ref))
    module = _build(ref, local, model_kwargs)
    _record_weights(module, weights)
    return module


def _sized(ref: ModelRef, request: _Request) -> dict[str, Any]:
    """The requested ``in_chans``/``num_classes`` under the builder's own keywords."""
    names = ref.zoo.item.size_arguments
    if names is None:
        return {}
    try:
        keywords = dict(names(ref.arch))
    except Exception as err:
        raise PluginError(
            f"plugin {ref.zoo.plugin!r} failed naming the size arguments of {ref.qualified!r}: "
            f"{err!r}",
            plugin=ref.zoo.plugin,
        ) from err
    wanted = {"in_chans": request.in_chans, "num_classes": request.num_classes}
    return {keywords[k]: v for k, v in wanted.items() if v is not None and k in keywords}


def _record_weights(module: nn.Module, weights: Weights) -> None:
    module.__dict__[_WEIGHTS] = weights.tag
    if weights.data_config is not None:
        record_config(module, weights.data_config)
    if weights.labels is not None:
        record_labels(module, weights.labels)


def _from_checkpoint(
    ref: ModelRef,
    model_kwargs: dict[str, Any],
    request: _Request,
    checkpoint: dict[str, torch.Tensor],
    source: str,
) -> nn.Module:
    """Build on meta and install the checkpoint's tensors: no random init, no second copy.

    Builders whose constructors compute tensors that no checkpoint holds are built for real.
    ``classes`` then keeps rows of the checkpoint's head, in a second step.
    """
    builder: Callable[[], nn.Module] = lambda: _build(ref, None, model_kwargs)  # noqa: E731
    loading = request
    if request.classes is not None:
        loading = dataclasses.replace(request, classes=None, num_classes=None)
    module = build_on_meta(builder)
    heads = _adapt_in_place(module, loading, checkpoint, source, assign=True)
    if materialize(module, heads):
        module = builder()
        _adapt_in_place(module, loading, checkpoint, source, assign=False)
    if request.classes is not None:
        choosing = dataclasses.replace(request, in_chans=None, stem_init=None, mean=None, std=None)
        _adapt_in_place(module, choosing, None, "", assign=False)
    return module


def _build(ref: ModelRef, weights: Weights | None, kwargs: dict[str, Any]) -> nn.Module:
    zoo = ref.zoo
    try:
        module = zoo.item.build(ref.arch, weights, **kwargs)
    except ZooAdaptError:
        raise
    except TypeError as err:
        raise AdaptError(f"{ref.qualified} does not accept {sorted(kwargs)}: {err}") from err
    except Exception as err:
        raise PluginError(
            f"plugin {zoo.plugin!r} failed building {ref.qualified!r}: {err!r}", plugin=zoo.plugin
        ) from err
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"plugin {zoo.plugin!r} built {type(module).__name__} for {ref.qualified!r}",
            plugin=zoo.plugin,
        )
    return module


# -- adapting --------------------------------------------------------------------------------


def _adapt_in_place(
    model: nn.Module,
    request: _Request,
    checkpoint: dict[str, torch.Tensor] | None,
    source: str,
    *,
    assign: bool,
) -> tuple[str, ...]:
    """Replace heads, rebuild the stem, then load ``checkpoint``; undo all on failure.

    The data config and labels recorded on the model follow, once everything succeeded.

    Returns:
        The head paths.
    """
    declared, anat = describe(model, request.pm, request.family)
    num_classes, in_chans = request.num_classes, request.in_chans
    rules = checkpoint_rules(model, declared, manager_of(model))
    saved = None
    if checkpoint is not None:
        renamed, _ = rename_keys(checkpoint, rules, model.state_dict())
        num_classes = num_classes or head_rows(renamed, anat.head)
        in_chans = in_chans or stem_channels(renamed, anat)
        _check_count(f"the class count of {source}'s head", num_classes)
        _check_count(f"the input channels of {source}'s stem", in_chans)
        saved = _checkpoint_stems(renamed, anat)
    rows, new_labels = _labels_after(model, anat, request, num_classes, known=checkpoint is None)
    if rows is not None:
        num_classes = len(rows)
    before = data_config(model)
    after = _config_after(before, anat, request, in_chans)
    stats = StemStats(before.mean, before.std, after.mean, after.std)
    plan = plan_surgery(
        model,
        declared.item,
        anat,
        num_classes,
        in_chans,
        request.stem_init,
        rows=rows,
        stats=stats,
        checkpoint=saved,
    )
    after_state = Adaptation(num_classes or anat.num_classes, in_chans or anat.in_chans, new_labels)
    plan_sync(plan, model, declared, after_state)
    if request.freeze is not None:  # validate the spec before anything changes
        select_frozen(anat.groups, request.freeze, [n for n, _ in model.named_parameters()])
    targets = Targets.of(
        anat,
        request.stem_init,
        new_heads=plan.replaces_heads,
        stats=stats,
        inflate=request.inflate,
    )
    try:
        plan.apply(model)  # inside: a reset_head that fails half-way is undone too
        if checkpoint is not None:
            report = load_state(
                model, checkpoint, rules=rules, targets=targets, source=source, assign=assign
            )
    except BaseException:
        plan.revert(model)
        raise
    if checkpoint is not None:
        record_load_report(model, report)
    record_config(model, after)
    record_labels(model, new_labels)
    return anat.head


def _checkpoint_stems(state: dict[str, torch.Tensor], anat: Anatomy) -> dict[str, CheckpointStem]:
    """Input channels and bias of each stem, as the (renamed) checkpoint holds them."""
    stems = {}
    for path in anat.stems:
        weight = state.get(f"{path}.weight")
        chans = stem_in_chans(weight, anat.stem_layout) if weight is not None else None
        stems[path] = CheckpointStem(chans, f"{path}.bias" in state)
    return stems


def _labels_after(
    model: nn.Module, anat: Anatomy, request: _Request, num_classes: int | None, *, known: bool
) -> tuple[list[int | None] | None, tuple[str, ...] | None]:
    """Head rows ``classes`` keeps (``None``: no request) and the labels afterwards.

    A checkpoint's classes are unknown (``known=False``): its labels are not guessed.
    (``classes`` never comes with a checkpoint: its rows are chosen once it is loaded.)
    """
    current = labels(model) if known else None
    if request.classes is not None:
        name = f"{type(model).__qualname__} (family {anat.family!r})"
        return resolve_classes(request.classes, current, anat.num_classes, name)
    if num_classes is not None and num_classes != anat.num_classes:
        return None, None
    return None, current


def _config_after(
    before: DataConfig, anat: Anatomy, request: _Request, in_chans: int | None
) -> DataConfig:
    """The data config once the stem has ``in_chans`` channels built with ``stem_init``."""
    target = in_chans or anat.in_chans
    if target is None:
        return before
    if target == before.in_chans and request.stem_init is None:
        if not request.restats:
            return before
        init: StemInit = list(range(target))  # the channels keep their own statistics
    else:
        init = request.stem_init or default_stem_init(target)
    return adapted_config(before, target, init, request.mean, request.std)
