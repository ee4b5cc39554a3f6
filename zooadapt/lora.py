"""``za.lora``: LoRA adapters on the layers each family says play a role, and merging them.

A family declares ``Family.roles``: role name -> regex full-matching the module names
that play it (``qkv``, ``q``, ``k``, ``v``, ``attn_out``, ``mlp``, ``conv``). The
adapters are PEFT's (``peft.inject_adapter_in_model``), injected into the model itself:
the zoo's own class stays, no wrapper. Needs ``pip install 'zooadapt[peft]'``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from zooadapt._core.adapters import ADAPTER, is_adapter, lora_base_name
from zooadapt._core.anatomy import call_family, describe
from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt._core.surgery import set_submodule
from zooadapt.errors import AdaptError
from zooadapt.freeze import freeze, unfreeze
from zooadapt.types import Family

__all__ = [
    "ROLES",
    "TARGET_SETS",
    "adapter_names",
    "is_adapter",
    "lora",
    "lora_base_name",
    "lora_roles",
    "lora_settings",
    "lora_targets",
    "merge_lora",
]

#: The roles a family may declare.
ROLES = ("qkv", "q", "k", "v", "attn_out", "mlp", "conv")
#: Names for sets of roles that ``targets`` accepts.
TARGET_SETS = {"attention": ("qkv", "q", "k", "v", "attn_out"), "all": ROLES}
#: Where :func:`lora` records its settings on the model.
_RECORD = "_zooadapt_lora"


def lora_targets(
    model: nn.Module,
    targets: str | Sequence[str] = "attention",
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> list[str]:
    """The module names ``targets`` selects: roles, role sets, or module-name regexes.

    Raises:
        AdaptError: If a role is not declared by the model's family, or a target matches
            no module; the message lists the roles the family declares.
    """
    root = unwrap(model)
    declared, roles, names = _declared_roles(root, family, plugin_manager)
    chosen: list[str] = []
    for target in [targets] if isinstance(targets, str) else list(targets):
        wanted = _patterns(target, roles, declared.item.name)
        found = [n for n in names if any(re.fullmatch(p, n) for p in wanted)]
        if not found:
            raise AdaptError(
                f"LoRA target {target!r} matches no module of {type(root).__qualname__} "
                f"(family {declared.item.name!r} declares roles {sorted(roles) or 'none'})"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def lora_roles(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> dict[str, list[str]]:
    """The roles the model's family declares, each with the modules playing it.

    Returns:
        Role name -> module names (heads excluded), in the family's order; empty for a
        family that declares none.
    """
    _, roles, names = _declared_roles(unwrap(model), family, plugin_manager)
    return {role: [n for n in names if re.fullmatch(regex, n)] for role, regex in roles.items()}


def _declared_roles(
    root: nn.Module, family: str | Family | None, plugin_manager: PluginManager | None
) -> tuple[Any, Mapping[str, str], list[str]]:
    """The model's declared family, its roles, and the names of its non-head modules."""
    declared, anat = describe(root, plugin_manager, family)
    roles = call_family(declared, "roles", lambda: declared.item.roles_of(root))
    names = [n for n, _ in root.named_modules() if n and not _is_head(n, anat.head)]
    return declared, roles, names


def _patterns(target: str, roles: Mapping[str, str], family: str) -> list[str]:
    if target in TARGET_SETS:
        declared = [roles[r] for r in TARGET_SETS[target] if r in roles]
        if not declared:
            raise AdaptError(f"family {family!r} declares no {target} roles for LoRA")
        return declared
    if target in ROLES:
        if target not in roles:
            raise AdaptError(
                f"family {family!r} declares no {target!r} role (it declares "
                f"{sorted(roles) or 'none'}); pass module-name regexes to target others"
            )
        return [roles[target]]
    try:
        re.compile(target)
    except re.error as err:
        raise AdaptError(
            f"LoRA target {target!r} is neither a role ({', '.join(ROLES)}), a role set "
            f"({', '.join(TARGET_SETS)}) nor a valid module-name regex: {err}"
        ) from err
    return [target]


def _is_head(name: str, heads: Sequence[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: str | Sequence[str] = "attention",
    bn: str = "frozen",
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> nn.Module:
    """Inject LoRA adapters into ``model`` and train only them and the head.

    The logits are unchanged at injection (the adapters' ``B`` starts at zero). The base
    weights are frozen with :func:`zooadapt.freeze` (``"backbone"``, BatchNorm policy
    ``bn``), then the adapters and the head are made trainable, so that a module holding
    adapters runs in the model's mode while wholly frozen ones run in eval mode.

    Layers whose weights a module reads as tensors (``nn.MultiheadAttention``, Swin's
    attention) get zooadapt's layers, which add ``alpha / r * B @ A`` to the weight out
    of place (:mod:`zooadapt._core.lora_layers`); others get PEFT's.

    Args:
        model: A model (wrappers such as DDP are looked through), changed in place.
        r: Rank of each adapter.
        alpha: Scale numerator (``alpha / r`` multiplies the update); ``None``: ``r``.
        dropout: Dropout on the adapters' input (none where a module reads the weight as
            a tensor, as ``nn.MultiheadAttention`` and Swin's attention do: the update is
            added to the weight there).
        targets: A role (``"qkv"``, ``"mlp"``...), ``"attention"``, ``"all"``, module-name
            regexes, or a list of them. Heads are never targeted.
        bn: BatchNorm policy of the frozen base, as in :func:`zooadapt.freeze`.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.

    Returns:
        ``model``, with adapters.

    Raises:
        AdaptError: If PEFT is missing, ``r`` is not positive, the model holds adapters
            already, a target matches nothing or is a layer PEFT cannot adapt; the model
            is then unchanged.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdaptError(f"LoRA rank r must be a positive int, got {r!r}")
    root = unwrap(model)
    if held := adapter_names(root):
        raise AdaptError(
            f"{type(root).__qualname__} already holds LoRA adapters on "
            f"{len({n.split('.lora_')[0] for n in held})} modules: pass all the "
            "targets in one za.lora call (targets=[...]), or za.merge_lora(model) first"
        )
    names = lora_targets(root, targets, family=family, plugin_manager=plugin_manager)
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha if alpha is not None else r, lora_dropout=dropout,
        target_modules=names, bias="none",
    )  # fmt: skip
    config._register_custom_module(_layers())
    trainable = {n: p.requires_grad for n, p in root.named_parameters()}
    try:
        peft.inject_adapter_in_model(config, root)
    except (ValueError, TypeError) as err:
        _remove_adapters(root, merge=False)
        for name, param in root.named_parameters():
            param.requires_grad_(trainable[name])
        raise AdaptError(
            f"PEFT cannot put LoRA adapters on the modules of {type(root).__qualname__} "
            f"that targets={targets!r} selects: {err}"
        ) from err
    root.__dict__[_RECORD] = {
        "r": r,
        "alpha": config.lora_alpha,
        "dropout": dropout,
        "targets": names,
    }
    options: dict[str, Any] = {"family": family, "plugin_manager": plugin_manager}
    freeze(root, "backbone", bn=bn, **options)
    head = list(describe(root, plugin_manager, family)[1].groups)[-1]  # the head group
    unfreeze(root, [ADAPTER.pattern, head], **options)  # PEFT froze everything else
    return model


def lora_settings(model: nn.Module) -> dict[str, Any] | None:
    """The adapters :func:`lora` put on ``model``, or ``None`` (none, or merged).

    Returns:
        ``{"r", "alpha", "dropout", "targets"}``, ``targets`` being module names.
    """
    record = unwrap(model).__dict__.get(_RECORD)
    return dict(record) if record else None


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the LoRA adapter parameters of ``model``."""
    return [n for n, _ in unwrap(model).named_parameters() if is_adapter(n)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain base layers back.

    The model computes the same function (up to float rounding) with the zoo's own
    modules again, ready for export.

    Returns:
        ``model``, changed in place.
    """
    _remove_adapters(unwrap(model), merge=True)
    return model


def _remove_adapters(root: nn.Module, *, merge: bool) -> None:
    """Put every PEFT layer's base layer back, folding its adapters in when ``merge``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    while True:  # outermost first: the attention layer merges its out_proj itself
        layers = [(n, m) for n, m in root.named_modules() if isinstance(m, BaseTunerLayer)]
        if not layers:
            break
        name, layer = min(layers, key=lambda item: item[0].count("."))
        if merge and not layer.merged:
            layer.merge()
        set_submodule(root, name, layer.get_base_layer())
    root.__dict__.pop(_RECORD, None)
    root.__dict__.pop("peft_config", None)  # PEFT's record of its adapters


def _layers() -> dict[type[nn.Module], type[nn.Module]]:
    """The LoRA layers for weights read functionally, by the layer type they adapt."""
    from zooadapt._core.lora_layers import Linear, MultiheadAttention

    return {nn.MultiheadAttention: MultiheadAttention, nn.Linear: Linear}


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise AdaptError(
            "LoRA needs PEFT: pip install 'zooadapt[peft]' (or pip install peft)"
        ) from err
    return peft
