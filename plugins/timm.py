"""The timm zoo, and one family for every timm model driven by the data timm models carry.

Head: ``pretrained_cfg["classifier"]`` (else ``get_classifier()``); a head that is not a
layer (``nn.Identity`` in a headless encoder) is built by timm's ``reset_classifier``.
Stem: ``pretrained_cfg["first_conv"]``. Groups: the coarse stages of ``group_matcher()``,
then the parameters no stage claims, then the head. ``OVERRIDES`` fixes the few
architectures where that data is missing or wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn
from zooadapt_plugins._layout import exact, present_roles

from zooadapt import (
    AdaptError,
    DataConfig,
    Family,
    RenameRule,
    StemLayout,
    Weights,
    Zoo,
    hookimpl,
    read_state_dict,
)

ZOO = "timm"
#: timm's default checkpoint file on the Hugging Face Hub, and its safetensors twin.
HF_WEIGHTS = "pytorch_model.bin"


# -- the zoo -------------------------------------------------------------------------------


def _architectures() -> list[str]:
    import timm

    return timm.list_models()


def _weights(arch: str) -> list[Weights]:
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

    default = get_pretrained_cfg(arch)
    found = []
    for name, cfg in get_arch_pretrained_cfgs(arch).items():
        tag = name.partition(".")[2]
        common = {
            "model": f"{ZOO}/{arch}",
            "tag": tag,
            "default": default is not None and tag == default.tag,
            "num_classes": cfg.num_classes or None,
            "data_config": _data_config(cfg.to_dict(), f"timm {name} pretrained_cfg"),
            "labels": _class_names(cfg.to_dict()),
        }
        if cfg.hf_hub_id:
            found.append(_hub_weights(cfg.hf_hub_id, cfg.hf_hub_filename, common))
        elif cfg.url:
            file = Path(_hub_checkpoints()) / cfg.url.rsplit("/", 1)[-1]
            found.append(Weights(url=cfg.url, file=file, **common))
    return found


def _hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _candidates(filename: str | None) -> list[str]:
    """The files timm tries in a hub repository: the safetensors twin first."""
    filename = filename or HF_WEIGHTS
    if filename.endswith(HF_WEIGHTS):
        return [filename[: -len(HF_WEIGHTS)] + "model.safetensors", filename]
    return [filename]


def _hub_weights(hub_id: str, filename: str | None, common: dict[str, Any]) -> Weights:
    """Weights in the Hugging Face cache: the cached file if any, else where it would go."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    files = _candidates(filename)
    for name in files:
        cached = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(cached, str):
            file = Path(cached)
            break
    else:
        snapshot = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        file = snapshot / "snapshots" / (revision or "main") / files[0]
    return Weights(
        url=f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{file.name}",
        file=file,
        source=f"Hugging Face Hub repo {repo}, file {' or '.join(files)}",
        download=lambda: _hub_download(repo, revision or None, files),
        **common,
    )


def _hub_download(repo: str, revision: str | None, files: list[str]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in files[:-1]:
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except EntryNotFoundError:
            continue
    return Path(hf_hub_download(repo, files[-1], revision=revision))


def _build(arch: str, weights: Weights | None = None, **kwargs: Any) -> nn.Module:
    """Build with timm's ``create_model``; pretrained weights go through timm's own loading.

    The file is read by zooadapt (memory-mapped, never unpickling code) and handed to
    timm as a state dict, so timm's checkpoint filters for the architecture still apply.
    """
    import timm

    if weights is None:
        return timm.create_model(arch, pretrained=False, **kwargs)
    overlay = {"state_dict": read_state_dict(weights.file)}
    model = timm.create_model(
        f"{arch}.{weights.tag}", pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
    )
    model.pretrained_cfg.pop("state_dict", None)  # do not keep the checkpoint alive
    return model


def _data_config(cfg: Mapping[str, Any] | None, source: str) -> DataConfig | None:
    """Timm's own resolution of a ``pretrained_cfg`` (``resolve_data_config``)."""
    if not cfg:
        return None
    from timm.data import resolve_data_config

    values = resolve_data_config(pretrained_cfg=dict(cfg))
    return DataConfig(
        input_size=values["input_size"],
        mean=values["mean"],
        std=values["std"],
        interpolation=values["interpolation"],
        crop_pct=values["crop_pct"],
        crop_mode=values.get("crop_mode", "center"),
        source=source,
    )


def _class_names(cfg: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The ImageNet class names a ``pretrained_cfg``'s head predicts, if timm knows them."""
    from timm.data import infer_imagenet_subset

    subset = infer_imagenet_subset(dict(cfg)) if cfg else None
    return _subset_names(subset) if subset else None


@functools.cache
def _subset_names(subset: str) -> tuple[str, ...] | None:
    """Short names (the first synonym of each description: ``tench``) of an ImageNet subset."""
    from timm.data import ImageNetInfo

    try:
        descriptions = ImageNetInfo(subset).label_descriptions()
    except Exception:  # noqa: BLE001 - a subset this timm ships no label files for
        return None
    return tuple(description.split(",")[0].strip() for description in descriptions)


def _model_data_config(model: nn.Module) -> DataConfig | None:
    cfg = getattr(model, "pretrained_cfg", None)
    return (
        _data_config(cfg, f"timm {cfg.get('architecture')}.{cfg.get('tag')} pretrained_cfg")
        if cfg
        else None
    )


def _model_class_names(model: nn.Module) -> tuple[str, ...] | None:
    """The pretrained config's class names, while the model still has that many classes."""
    names = _class_names(getattr(model, "pretrained_cfg", None))
    classes = getattr(model, "num_classes", None)
    return names if names is None or classes in (None, len(names)) else None


# -- the family ----------------------------------------------------------------------------


def _paths(value: object) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]


def _declared(model: nn.Module, key: str) -> tuple[str, ...] | None:
    """A ``pretrained_cfg`` path entry, if every path in it exists in the model."""
    paths = _paths((getattr(model, "pretrained_cfg", None) or {}).get(key))
    modules = dict(model.named_modules())
    return paths if paths and all(p in modules for p in paths) else None


def _head(model: nn.Module) -> tuple[str, ...]:
    declared = _declared(model, "classifier")
    if declared is not None:
        return declared
    get_classifier = getattr(model, "get_classifier", None)
    found = get_classifier() if get_classifier is not None else None
    found = found if isinstance(found, tuple) else (found,)
    names = {id(m): n for n, m in model.named_modules() if n}
    return tuple(names[id(m)] for m in found if isinstance(m, nn.Module) and id(m) in names)


#: Attention modules in timm's layouts: ``attn`` (ViT, DeiT, BEiT, EVA, Swin, LeViT,
#: MobileNetV4, EfficientViT), ``attn_block``/``attn_grid`` (MaxViT), ``attn_in``/
#: ``attn_out`` (TNT), ``token_mixer`` (MetaFormers, EfficientFormer, FastViT).
_ATTENTION = r".*\.(attn\w*|token_mixer)"
#: A conv-norm or linear-norm pair (LeViT, EfficientFormerV2, EfficientViT) holds its
#: layer as ``.linear`` or ``.conv``.
_LAYER = r"(\.linear|\.conv)?"
#: LoRA roles in the layouts of timm's transformers: fused ``qkv`` (a linear layer or an
#: ungrouped convolution, as in MaxxViT and MobileViTv2) or separate ``q``/``k``/``v``,
#: the output projection, and the MLP's ``fc1``/``fc2`` (LeViT's ``ln1``/``ln2``).
ROLES = {
    "qkv": rf"{_ATTENTION}\.(qkv|qkv_proj|qkvs\.\d+){_LAYER}",
    "q": rf"{_ATTENTION}\.(q|q_proj|to_query|query\.proj){_LAYER}",
    "k": rf"{_ATTENTION}\.(k|k_proj|to_key|key\.proj){_LAYER}",
    "v": rf"{_ATTENTION}\.(v|v_proj|value\.proj){_LAYER}",
    "attn_out": rf"{_ATTENTION}\.(proj|o_proj|out_proj|output\.proj)(\.ln|\.\d+)?{_LAYER}",
    "mlp": r".*\.mlp\.(fc[12]|ln[12]\.linear)",
}


def _reset_head(model: nn.Module, num_classes: int) -> None:
    """Build the head with ``reset_classifier``; a feature encoder without one has none."""
    if not callable(getattr(model, "reset_classifier", None)):
        raise AdaptError(
            f"{type(model).__qualname__} has no classifier head (timm defines none for this "
            f"feature encoder), so num_classes={num_classes} cannot be applied; use its "
            "features under your own head"
        )
    model.reset_classifier(num_classes)


def _stem(model: nn.Module) -> tuple[str, ...]:
    declared = _declared(model, "first_conv")
    if declared is not None:
        return declared
    convs = (n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))
    first = next(convs, None)
    return (first,) if first else ()


def _grouper(head_paths: Callable[[nn.Module], tuple[str, ...]]) -> Callable[..., Any]:
    """Groups for a family whose heads are ``head_paths(model)``."""

    def groups(model: nn.Module) -> list[tuple[str, str]]:
        """Coarse timm stages, then what no stage claims, then exactly the head's parameters."""
        head = {
            f"{path}.{name}"
            for path in head_paths(model)
            for name, _ in model.get_submodule(path).named_parameters()
        }
        names = [n for n, _ in model.named_parameters() if n not in head]
        matcher = _matcher(model)
        ordered = _timm_groups(names, matcher) if matcher else _child_groups(model, names)
        labels = _labels(ordered, matcher if isinstance(matcher, dict) else {})
        pairs = zip(labels, (exact(*g) for g in ordered), strict=True)
        return [*pairs, ("head", exact(*head))]

    return groups


def _matcher(model: nn.Module) -> dict[str, Any] | Callable[..., Any] | None:
    group_matcher = getattr(model, "group_matcher", None)
    try:
        return group_matcher(coarse=True) if group_matcher is not None else None
    except (NotImplementedError, AssertionError):  # RDNet: "coarse grouping not implemented"
        return None


def _timm_groups(names: list[str], matcher: Any) -> list[list[str]]:
    from timm.models._manipulate import group_with_matcher

    grouped = group_with_matcher(((n, None) for n in names), matcher)
    return [members for _, members in sorted(grouped.items()) if members]


def _child_groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Without a ``group_matcher``: one group per top-level child, per item of a sequence."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        child = getattr(model, parts[0]) if len(parts) > 1 else None
        depth = 2 if isinstance(child, (nn.Sequential, nn.ModuleList)) else 1
        groups.setdefault(".".join(parts[:depth][: len(parts) - 1]), []).append(name)
    return list(groups.values())


def _labels(groups: list[list[str]], matcher: dict[str, Any]) -> list[str]:
    """Unique readable group names, mostly the module path the group covers."""
    keys = [_matcher_key(g[0], matcher) for g in groups]
    labels = [
        _label(g, groups, key if keys.count(key) == 1 else "")
        for g, key in zip(groups, keys, strict=True)
    ]
    labels = ["neck" if label == "head" else label for label in labels]
    total, seen = Counter(labels), Counter[str]()
    unique: list[str] = []
    for label in labels:
        if total[label] > 1:
            seen[label] += 1
            label = f"{label}.{seen[label] - 1}"
        while label in unique:
            label += "_"
        unique.append(label)
    return unique


def _label(group: list[str], groups: list[list[str]], key: str) -> str:
    """The shortest module path holding the group's parameters and no others.

    A group spread over several modules is named by its ``group_matcher`` key (``stem``)
    when no other group shares it, else by the path of its leading parameters.
    """
    path = _common_module(group)
    if not path and key:
        return key
    top = group[0].split(".")[0]
    path = path or _common_module([n for n in group if n.startswith(top + ".")])
    others = [n for g in groups if g is not group for n in g]
    parts = path.split(".") if path else []
    for depth in range(1, len(parts) + 1):
        candidate = ".".join(parts[:depth]) + "."
        if not any(n.startswith(candidate) for n in others):
            return candidate[:-1]
    return path or ("root" if "." not in group[0] else "group")


def _common_module(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _matcher_key(name: str, matcher: dict[str, Any]) -> str:
    for key, spec in matcher.items():
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        if any(pattern and re.match(pattern, name) for pattern, _ in specs):
            return key
    return ""


def _input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The spatial part of ``pretrained_cfg["input_size"]`` (channels first), if any."""
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return tuple(size[1:]) if isinstance(size, (tuple, list)) and len(size) >= 3 else None


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


TIMM = Family(
    name="timm",
    match=_is_timm,
    head=_head,
    stem=_stem,
    groups=_grouper(_head),
    reset_head=_reset_head,
    roles=present_roles(ROLES),
    input_size=_input_size,
    data_config=_model_data_config,
    labels=_model_class_names,
)


# -- where timm's own data is missing or wrong ---------------------------------------------


def _patch_layout(channels_last: bool) -> Callable[[nn.Module], StemLayout]:
    """A linear patch embedding that reads ``patch_size`` pixels per channel."""

    def layout(model: nn.Module) -> StemLayout:
        patch = next(m.patch_size for m in model.modules() if hasattr(m, "patch_size"))
        return StemLayout(fold=math.prod(_pair(patch)), channels_last=channels_last)

    return layout


def _pair(value: int | Iterable[int]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


#: ConvNeXt checkpoints in the original (facebookresearch) layout.
CONVNEXT_ORIGINAL = (
    RenameRule(r"^downsample_layers\.0\.", "stem.", name="convnext original stem"),
    RenameRule(
        r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", name="convnext downsample"
    ),
    RenameRule(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", name="convnext blocks"),
    RenameRule(r"\.dwconv\.", ".conv_dw.", name="convnext dwconv"),
    RenameRule(r"\.pwconv(\d)\.", r".mlp.fc\1.", name="convnext pwconv"),
    RenameRule(r"^head\.(weight|bias)$", r"head.fc.\1", name="convnext head"),
    RenameRule(r"^norm\.(weight|bias)$", r"head.norm.\1", name="convnext final norm"),
)


def _levit_heads(model: nn.Module) -> tuple[str, ...]:
    linear = ("head.linear", "head_dist.linear")
    modules = dict(model.named_modules())
    return linear if all(p in modules for p in linear) else ("head", "head_dist")


#: Per-architecture corrections: class -> fields replaced in the generic family.
OVERRIDES: dict[str, dict[str, Any]] = {
    # Space-to-depth: the stem convolution reads 16 positions per channel, channel fastest.
    "timm.models.tresnet.TResNet": {"stem_layout": StemLayout(fold=16, channels_last=True)},
    # Linear patch embeddings over flattened P-P-C (NaFlexViT) or C-P-P (Gemma 4) patches.
    "timm.models.naflexvit.NaFlexVit": {"stem_layout": _patch_layout(channels_last=True)},
    "timm.models.gemma4_vit.Gemma4VitClassifier": {"stem_layout": _patch_layout(False)},
    "timm.models.gemma4_vit.Gemma4VitEncoder": {"stem_layout": _patch_layout(False)},
    # A fixed RGB -> YCbCr DCT transform reads the image: no input convolution to adapt.
    "timm.models.csatv2.CSATv2": {"stem": None},
    "timm.models.convnext.ConvNeXt": {"rename_rules": CONVNEXT_ORIGINAL},
    # The untrained LeViT configs name only the class head, not the distillation head;
    # a headless LeViT (num_classes=0) has nn.Identity heads, rebuilt by reset_classifier.
    "timm.models.levit.LevitDistilled": {"head": _levit_heads},
}


def _override(cls: str, fields: dict[str, Any]) -> Family:
    name = f"timm.{cls.rsplit('.', 1)[-1].lower()}"
    if "head" in fields:
        heads = fields["head"]
        paths = heads if callable(heads) else lambda model: heads
        fields = {**fields, "groups": _grouper(paths)}
    return dataclasses.replace(TIMM, name=name, classes=(cls,), match=None, **fields)


@hookimpl
def zooadapt_zoos() -> list[Zoo]:
    """Every ``timm.list_models()`` architecture, searched after torchvision."""
    return [Zoo(name=ZOO, models=_architectures, build=_build, weights=_weights, order=20)]


@hookimpl
def zooadapt_families() -> list[Family]:
    """The generic timm family and its per-architecture corrections."""
    return [TIMM, *(_override(cls, fields) for cls, fields in OVERRIDES.items())]
