"""Hugging Face transformers image classifiers: one family for every ``*ForImageClassification``.

Everything is read from the model: the heads are the layers a meta-device trace shows
producing the logits (a distilled model's class and distillation heads both), the stem is
the first convolution, the groups are the embeddings, one per encoder layer or stage, what
follows them, and the head. The model's own ``config`` follows an adaptation
(``num_labels``, ``id2label``, ``label2id``, ``num_channels``, and ``num_channels`` of the
embedding modules holding the stem), and models are called as
``model(pixel_values=images).logits``. The data config is the image processor config
beside the model's weights (``config._name_or_path``). No import of transformers is needed
to match. The ``hf`` zoo of Hub repositories is in ``_hf_hub``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from torch import nn
from zooadapt_plugins import _hf_hub as hub
from zooadapt_plugins._layout import exact, present_roles

from zooadapt import (
    Adaptation,
    DataConfig,
    Family,
    FamilyNotFoundError,
    RenameRule,
    Zoo,
    first_conv,
    hookimpl,
    output_layers,
)

#: Module names that hold one stage or layer each, followed by its index.
STAGES = ("layer", "layers", "stages", "stage", "block", "blocks", "patch_embeddings")
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
_NUMBERED = re.compile(r"^(layer|stage|block)s?\d+$")
#: LoRA roles in transformers' layouts: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and
#: ``mlp.fc1``/``fc2`` since transformers 5, ``query``/``key``/``value``,
#: ``attention.output.dense``, ``intermediate.dense`` and ``output.dense`` before.
ROLES = {
    "q": r".*\.(q_proj|query)",
    "k": r".*\.(k_proj|key)",
    "v": r".*\.(v_proj|value)",
    "attn_out": r".*\.(o_proj|attention\.output\.dense)",
    "mlp": r".*\.(mlp\.fc[12]|intermediate\.dense|(?<!attention\.)output\.dense)",
}
#: transformers' own "legacy" renames, applied to every checkpoint it loads.
LEGACY_RULES = (
    RenameRule(r"LayerNorm\.gamma$", "LayerNorm.weight", name="legacy LayerNorm.gamma"),
    RenameRule(r"LayerNorm\.beta$", "LayerNorm.bias", name="legacy LayerNorm.beta"),
)


def _is_classifier(model: nn.Module) -> bool:
    cls = type(model)
    return (
        cls.__module__.startswith("transformers.models.")
        and "ForImageClassification" in cls.__name__
        and hasattr(model, "config")
    )


def _heads(model: nn.Module) -> tuple[str, ...]:
    found = output_layers(model)
    if found is None:
        raise FamilyNotFoundError(
            f"no layer of {type(model).__name__} produces its logits directly; pass "
            "family=Family(...) naming its head"
        )
    return found[0]


def _stem(model: nn.Module) -> str | None:
    return first_conv(model)


def _groups(model: nn.Module) -> list[tuple[str, str]]:
    """Embeddings, one group per stage or layer, what follows, then the head."""
    heads = _heads(model)
    named: dict[str, list[str]] = {}
    head: list[str] = []
    staged = False
    for name, _ in model.named_parameters():
        if any(name.startswith(h + ".") for h in heads):
            head.append(name)
            continue
        label = _stage(name)
        staged = staged or label is not None
        named.setdefault(label or ("neck" if staged else "embeddings"), []).append(name)
    return [*((label, exact(*names)) for label, names in named.items()), ("head", exact(*head))]


def _stage(name: str) -> str | None:
    """The stage of a parameter: ``encoder.layer.3``, ``timm_model.layer1``, or ``None``.

    ``vit.encoder.layer.3.attention...`` is in ``encoder.layer.3``; a wrapped timm ResNet's
    ``timm_model.layer1.0.conv1.weight`` in ``timm_model.layer1``.
    """
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in STAGES and parts[i + 1].isdigit():
            return ".".join(parts[max(0, i - 1) : i + 2])
        if _NUMBERED.match(part):
            return ".".join(parts[max(0, i - 1) : i + 1])
    return None


def _labels(model: nn.Module) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]
    if not names or all(_DEFAULT_LABEL.match(n) for n in names) or "" in names:
        return None
    return names


def _sync(model: nn.Module, change: Adaptation) -> dict[str, Any]:
    """A changed copy of the config for every module holding it, and the channel counts.

    transformers shares one config object among the models built from it (and the
    caller's): changing it in place would make another model's config lie about its
    head, so the adapted model gets its own.
    """
    config = copy.deepcopy(model.config)
    if change.num_classes is not None:
        names = change.labels or [f"LABEL_{i}" for i in range(change.num_classes)]
        config.num_labels = change.num_classes
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in enumerate(names)}
    settings: dict[str, Any] = {}
    if change.in_chans is not None:
        for owner in _channel_configs(config):
            owner.num_channels = change.in_chans
        settings.update({f"{path}num_channels": change.in_chans for path in _channel_owners(model)})
    holders = [p for p, m in model.named_modules() if getattr(m, "config", None) is model.config]
    return {**{f"{p}.config" if p else "config": config for p in holders}, **settings}


def _channel_configs(config: Any) -> list[Any]:
    """The config and, for CLIP-like models, its ``vision_config``, that record channels."""
    configs = [config, getattr(config, "vision_config", None)]
    return [c for c in configs if isinstance(getattr(c, "num_channels", None), int)]


def _channel_owners(model: nn.Module) -> Iterator[str]:
    """The modules above the stem that record the input's channels."""
    configs = _channel_configs(model.config)
    if not configs:
        return
    channels = configs[0].num_channels
    stem = _stem(model) or ""
    for path, module in model.named_modules():
        inside = path and (stem == path or stem.startswith(path + "."))
        if inside and getattr(module, "num_channels", None) == channels:
            yield path + "."


def _input_size(model: nn.Module) -> tuple[int, ...] | None:
    """``config.image_size`` (or its ``vision_config``'s), when the config records one."""
    for config in (model.config, getattr(model.config, "vision_config", None)):
        size = getattr(config, "image_size", None)
        if isinstance(size, int):
            return (size, size)
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return tuple(int(v) for v in size)
    return None


def _data_config(model: nn.Module) -> DataConfig | None:
    """The image processor config beside the weights, while it fits the channels."""
    file = hub.processor_file(str(getattr(model.config, "_name_or_path", "") or ""))
    if file is None:
        return None
    config = hub.processor_config(hub.read_json(file), f"Hugging Face {file}")
    channels = getattr(model.config, "num_channels", None)
    if config is None or (isinstance(channels, int) and config.in_chans != channels):
        return None
    return config


def _rename_rules(model: nn.Module) -> list[RenameRule]:
    """The legacy renames of transformers, and the base model's prefix for a backbone checkpoint.

    A checkpoint of ``ViTModel`` (``embeddings.*``, as ``facebook/dino-vits16`` publishes)
    loads into ``ViTForImageClassification`` (``vit.embeddings.*``).
    """
    prefix = getattr(model, "base_model_prefix", "")
    rules = list(LEGACY_RULES)
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        name = f"add the base model's '{prefix}.'"
        rules.append(RenameRule(rf"^(?!{re.escape(prefix)}\.)", f"{prefix}.", name=name))
    return rules


def _call(model: nn.Module, images: Any) -> Any:
    """``.logits``, else the first output (PP-LCNet returns its logits as the hidden state)."""
    output = model(pixel_values=images)
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output[0]


HF = Family(
    name="hf",
    match=_is_classifier,
    head=_heads,
    stem=_stem,
    groups=_groups,
    labels=_labels,
    sync=_sync,
    call=_call,
    input_size=_input_size,
    data_config=_data_config,
    rename_rules=_rename_rules,
    roles=present_roles(ROLES),
)

#: Repositories of the Hugging Face Hub (cached ones listed) and save_pretrained folders.
HUB = Zoo(
    name=hub.ZOO,
    models=hub.models,
    build=hub.build,
    weights=hub.weights,
    order=30,
    find=hub.find,
)


@hookimpl
def zooadapt_families() -> list[Family]:
    """The Hugging Face image-classification family."""
    return [HF]


@hookimpl
def zooadapt_zoos() -> list[Zoo]:
    """The Hugging Face Hub zoo."""
    return [HUB]
