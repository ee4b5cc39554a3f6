"""Freeze and unfreeze a model by its family's freeze groups, with a BatchNorm policy.

Frozen parameters get ``requires_grad=False``. BatchNorm layers all of whose parameters
are frozen follow the ``bn=`` policy:

- ``"frozen"``: they normalise with their running statistics and never update them, also
  after a later ``model.train()``. The layer is marked (a plain attribute) and one
  process-wide forward pre-hook sets a marked layer's ``training`` flag to ``False``
  before each call; modules, hooks and state_dict keys stay as they are, the model stays
  scriptable, and :func:`unfreeze` removes the mark. Under this policy every *block* (a
  module all of whose parameters are frozen) also runs in eval mode, the same way: dropout inside it
  is off and inference kernels apply (a frozen ViT-B/16 trains its head at the speed of
  an inference forward instead of 1.45x, ``benchmarks/README.md``), and training
  through the frozen backbone computes exactly the features :class:`FeatureCache` caches.
- ``"eval"``: they are put in eval mode once; a later ``model.train()`` undoes that.
- ``"train"``: their weight and bias stay trainable and their statistics keep updating
  (fastai's ``train_bn``).

"BatchNorm" means every ``torch.nn.modules.batchnorm._BatchNorm`` (BatchNorm1d/2d/3d,
SyncBatchNorm, timm's BatchNormAct2d). A BatchNorm without affine parameters counts as
frozen when the closest module with parameters registered before it (the layer whose
output it normalises) is frozen.

Distributed training: freeze before wrapping in DistributedDataParallel. DDP synchronises
only the parameters trainable when it was built, so after a freeze or unfreeze of a
DDP-wrapped model (a warning says so) wrap it again on every rank with
``model = za.rewrap(model)``. FSDP2 (``fully_shard``) models need nothing more: call these
functions on every rank.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from zooadapt._core.distributed import trainable_ids, unwrap, warn_if_ddp_is_stale
from zooadapt._core.plugins import PluginManager
from zooadapt.errors import FreezeError, OptimizerError
from zooadapt.optim import LearningRate, add_groups, foreign_tensors, held_ids, model_groups
from zooadapt.types import Family

__all__ = ["BN_POLICIES", "FreezeSpec", "freeze", "freeze_state", "load_freeze_state", "unfreeze"]

#: ``"backbone"``, ``"last"``, a group name, an int, a list of group names / parameter
#: regexes, or None.
FreezeSpec = str | int | Sequence[str] | None
BN_POLICIES = ("frozen", "eval", "train")
_RECORD = "_zooadapt_freeze"  # plain attribute on the model: {"bn": policy, "norms": [...]}
STATE_VERSION = 1


#: Attribute of a held module: ``"norm"`` (a frozen BatchNorm) or ``"block"`` (a module
#: whose parameters are all frozen). Copies and pickles of the model keep it.
HOLD = "_zooadapt_hold"
_hook: RemovableHandle | None = None
_hook_lock = threading.Lock()


def _hold_in_eval(module: nn.Module, args: Any) -> None:
    """Global forward pre-hook: a held module (and a held block's content) runs in eval.

    It is one process-wide hook (``register_module_forward_pre_hook``) reading a plain
    attribute, so that models stay scriptable (``torch.jit.script`` compiles per-module
    hooks, never global ones) and copies of a model (``copy.deepcopy``, DataParallel
    replicas) are held like the original.
    """
    kind = module.__dict__.get(HOLD)
    if kind == "norm":
        module.training = False
    elif kind == "block":
        for inner in module.modules():
            inner.training = False


def _ensure_hook() -> None:
    global _hook
    with _hook_lock:
        if _hook is None:
            _hook = register_module_forward_pre_hook(_hold_in_eval)


def select(
    groups: Mapping[str, Sequence[str]],
    spec: FreezeSpec,
    params: Sequence[str],
    *,
    unfreeze: bool = False,
) -> list[str]:
    """Resolve a freeze spec to parameter names, in model order.

    For :func:`freeze`, a group name selects the groups from the input up to and including
    it, and an int n ``groups[:n]``. For :func:`unfreeze`, a group name selects it and
    every group after it, and an int n ``groups[n:]``; ``None`` selects everything.

    Raises:
        FreezeError: For an unknown group, a bad int, a regex matching no parameter, or a
            spec of another type.
    """
    order = list(groups)
    if isinstance(spec, (list, tuple)):
        chosen = _from_list(groups, spec, params)
    elif spec is None:
        chosen = set(params) if unfreeze else set()
    elif isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise FreezeError(
            f"a freeze spec is 'backbone', a group name, an int, a list or None; got {spec!r}"
        )
    elif isinstance(spec, int):
        if not -len(order) <= spec <= len(order):
            raise FreezeError(f"spec {spec} is out of range for {len(order)} groups: {order}")
        chosen = _members(groups, order[spec:] if unfreeze else order[:spec])
    elif spec == "backbone":
        chosen = _members(groups, order[:-1])
    elif spec == "last" and "last" not in groups:
        chosen = _members(groups, order[:-2] if not unfreeze else order[-2:])
    elif spec in groups:
        index = order.index(spec)
        chosen = _members(groups, order[index:] if unfreeze else order[: index + 1])
    else:
        raise FreezeError(f"unknown freeze group {spec!r}; valid groups: {', '.join(order)}")
    return [name for name in params if name in chosen]


def _members(groups: Mapping[str, Sequence[str]], names: Sequence[str]) -> set[str]:
    return {param for name in names for param in groups[name]}


def _from_list(
    groups: Mapping[str, Sequence[str]], spec: Sequence[str], params: Sequence[str]
) -> set[str]:
    chosen: set[str] = set()
    for item in spec:
        if not isinstance(item, str):
            raise FreezeError(f"a freeze list holds group names or regexes, got {item!r}")
        if item in groups:
            chosen.update(groups[item])
            continue
        try:
            regex = re.compile(item)
        except re.error as err:
            raise FreezeError(f"{item!r} is no group and no valid regex: {err}") from err
        hits = [name for name in params if regex.search(name)]
        if not hits:
            raise FreezeError(
                f"{item!r} is neither a freeze group nor a regex matching any parameter; "
                f"valid groups: {', '.join(groups)}"
            )
        chosen.update(hits)
    return chosen


def _check_policy(bn: object) -> None:
    if bn not in BN_POLICIES:
        raise FreezeError(f"bn must be one of {', '.join(map(repr, BN_POLICIES))}; got {bn!r}")


def freeze(
    model: nn.Module,
    spec: FreezeSpec = "backbone",
    *,
    bn: str = "frozen",
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> nn.Module:
    """Freeze part of a model by its freeze groups (see ``za.anatomy(model).groups``).

    Only freezes: parameters frozen before stay frozen (call :func:`unfreeze` first to
    start over). The ``bn`` policy of the latest call applies to every frozen BatchNorm.
    Everything is validated before anything changes.

    Args:
        model: A model (wrappers such as DDP are looked through; a DDP model whose
            trainable set changes warns: wrap it again with :func:`zooadapt.rewrap`).
        spec: ``"backbone"`` (every group but the head, the last group); ``"last"``
            (every group but the last stage and the head: those two train); a group name
            (from the input up to and including it); an int n (the first n groups,
            negative counts from the end: ``-1`` is all but the head); a list of group
            names and/or parameter-name regexes (exactly those); ``None`` (nothing).
        bn: ``"frozen"``, ``"eval"`` or ``"train"``; see the module documentation.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        ``model``, changed in place.

    Raises:
        FreezeError: If the spec or ``bn`` is invalid; the model is left unchanged.

    Example:
        >>> za.freeze(model, "layer2")  # stem, layer1 and layer2 of a ResNet
    """
    _check_policy(bn)
    root = unwrap(model)
    groups = model_groups(root, family, plugin_manager)
    params = dict(root.named_parameters())
    names = select(groups, spec, list(params))
    if bn == "train":
        keep = _batchnorm_params(root)
        names = [n for n in names if n not in keep]
    before = trainable_ids(root)
    for name in names:
        params[name].requires_grad_(False)
    _sync_norms(root, bn)
    warn_if_ddp_is_stale(model, before)
    return model


def unfreeze(
    model: nn.Module,
    spec: FreezeSpec = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: LearningRate | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> nn.Module:
    """Make part of a model trainable again, optionally adding it to an optimizer.

    Args:
        model: A model (wrappers such as DDP are looked through; a DDP model whose
            trainable set changes warns: wrap it again with :func:`zooadapt.rewrap`).
        spec: ``None`` (everything); ``"backbone"`` (all but the head); ``"last"``
            (the last stage and the head); a group name
            (that group and every group after it, so that ``unfreeze(model, "layer4")``
            after ``freeze(model)`` makes exactly ``layer4`` trainable); an int n
            (``groups[n:]``: ``-2`` is the last two groups); a list of group names and/or
            parameter-name regexes (exactly those).
        optimizer: If given, the selected tensors it does not hold yet (normally exactly
            the newly trainable ones) are added as new groups named after their freeze
            groups, split into decayed and ``.no_decay`` parts when
            ``optimizer.defaults["weight_decay"] > 0``. A tensor is never added twice.
        lr: Learning rate of the new groups, as in :func:`zooadapt.param_groups`;
            ``None`` uses ``optimizer.defaults["lr"]``.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        ``model``, changed in place.

    Raises:
        FreezeError: If the spec or ``lr`` is invalid, ``lr`` is given without an
            optimizer, or the optimizer holds tensors that are not parameters of the
            model; model and optimizer are left unchanged.

    Example:
        >>> za.unfreeze(model, "layer4", optimizer=opt, lr=1e-4)
    """
    root = unwrap(model)
    groups = model_groups(root, family, plugin_manager)
    params = dict(root.named_parameters())
    names = select(groups, spec, list(params), unfreeze=True)
    new_groups: list[dict[str, Any]] = []
    if optimizer is not None:
        foreign = foreign_tensors(optimizer, root)
        if foreign:
            raise OptimizerError(
                f"the optimizer holds {foreign} tensor(s) that are not parameters of this "
                f"{type(root).__name__}; pass the optimizer built for this model"
            )
        held = held_ids(optimizer)
        missing = [n for n in names if id(params[n]) not in held]
        new_groups = add_groups(optimizer, root, groups, missing, lr=lr)
    elif lr is not None:
        raise OptimizerError("lr= is the learning rate of new optimizer groups: pass optimizer=")
    for group in new_groups:
        optimizer.add_param_group(group)  # type: ignore[union-attr]
    before = trainable_ids(root)
    for name in names:
        params[name].requires_grad_(True)
    record = getattr(root, _RECORD, None)
    if record is not None:  # nothing is held before the first freeze
        _sync_norms(root, record["bn"])
    warn_if_ddp_is_stale(model, before)
    return model


def _batchnorm_params(root: nn.Module) -> set[str]:
    return {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in root.named_modules()
        if isinstance(module, _BatchNorm)
        for name, _ in module.named_parameters(recurse=False)
    }


def _frozen_norms(root: nn.Module) -> list[str]:
    """Names of the BatchNorm layers whose parameters are all frozen, in model order.

    A BatchNorm without parameters follows the closest module with parameters before it
    in registration order (the layer whose output it normalises), or after it if none.
    """
    held: list[str] = []
    pending: list[str] = []
    last: bool | None = None  # whether the latest module with own parameters is frozen
    for name, module in root.named_modules():
        own = list(module.parameters(recurse=False))
        if own:
            last = not any(p.requires_grad for p in own)
            held += pending if last else []
            pending = []
        if not isinstance(module, _BatchNorm):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            held.append(name)
        elif not params and last is None:
            pending.append(name)
        elif not params and last:
            held.append(name)
    order = {name: i for i, (name, _) in enumerate(root.named_modules())}
    return sorted(held, key=order.__getitem__)


#: Modules whose own forward callers may skip (they iterate over the children instead).
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _frozen_blocks(root: nn.Module) -> list[str]:
    """The largest called modules with parameters, none of them trainable, in order.

    Containers are looked into rather than held (a model may iterate over an
    ``nn.ModuleList`` without calling it), and BatchNorm layers have their own hook.
    """
    blocks: list[str] = []
    for name, module in root.named_modules():
        if _within(name, blocks) or isinstance(module, (*_CONTAINERS, _BatchNorm)):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            blocks.append(name)
    return blocks


def _within(name: str, blocks: Sequence[str]) -> bool:
    return any(name == b or name.startswith(b + ".") or not b for b in blocks)


def _release(root: nn.Module) -> None:
    """Undo every hold: unmark the held layers and give them the model's mode."""
    record = getattr(root, _RECORD, None)
    for module in root.modules():
        module.__dict__.pop(HOLD, None)
    held = [*record["norms"], *record.get("blocks", [])] if record else []
    for name in held:
        try:
            for module in root.get_submodule(name).modules():
                module.training = root.training
        except AttributeError:
            continue  # the module was replaced since; nothing to undo


def _hold(root: nn.Module, names: Sequence[str], bn: str) -> None:
    blocks = _frozen_blocks(root) if bn == "frozen" else []
    if bn == "frozen" and (blocks or names):
        _ensure_hook()
    for name in blocks:
        root.get_submodule(name).__dict__[HOLD] = "block"
    for name in names:
        module = root.get_submodule(name)
        module.training = False
        if bn == "frozen":
            module.__dict__[HOLD] = "norm"
    root.__dict__[_RECORD] = {"bn": bn, "norms": list(names), "blocks": blocks}


def _sync_norms(root: nn.Module, bn: str) -> None:
    """Hold exactly the BatchNorm layers that are now frozen, under policy ``bn``."""
    _release(root)
    _hold(root, _frozen_norms(root) if bn != "train" else [], bn)


def freeze_state(model: nn.Module) -> dict[str, Any]:
    """What is frozen, as JSON-serialisable data (for checkpoints; see :func:`load_freeze_state`).

    Returns:
        ``{"version": 1, "frozen": [parameter names], "bn": policy or None,
        "norms": [names of the BatchNorm layers held frozen or put in eval]}``.
    """
    root = unwrap(model)
    record = getattr(root, _RECORD, None) or {"bn": None, "norms": []}
    return {
        "version": STATE_VERSION,
        "frozen": [n for n, p in root.named_parameters() if not p.requires_grad],
        "bn": record["bn"],
        "norms": list(record["norms"]),
    }


def load_freeze_state(model: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """Restore exactly the state :func:`freeze_state` returned (e.g. when resuming).

    Every parameter not listed as frozen becomes trainable; exactly the listed norm
    layers are held under the recorded policy.

    Raises:
        FreezeError: If the state names parameters or norm layers the model lacks, or is
            malformed; the model is left unchanged.
    """
    root = unwrap(model)
    params = dict(root.named_parameters())
    norms = dict(root.named_modules())
    try:
        frozen, bn, held = set(state["frozen"]), state["bn"], list(state["norms"])
    except (KeyError, TypeError) as err:
        raise FreezeError(f"not a freeze state: {err!r}") from err
    if bn is not None:
        _check_policy(bn)
    unknown = sorted(frozen - params.keys())
    unknown += [n for n in held if not isinstance(norms.get(n), _BatchNorm)]
    if unknown or (bn in (None, "train") and held):
        problem = f"unknown names {unknown[:5]}" if unknown else f"norms held under bn={bn!r}"
        raise FreezeError(f"freeze state does not fit {type(root).__name__}: {problem}")
    before = trainable_ids(root)
    for name, param in params.items():
        param.requires_grad_(name not in frozen)
    _release(root)
    if bn is None:
        root.__dict__.pop(_RECORD, None)
    else:
        _hold(root, held, bn)
    warn_if_ddp_is_stale(model, before)
    return model
