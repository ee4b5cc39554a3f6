"""MONAI's classification networks: the ``monai`` zoo, and one family per network, as data.

``monai/densenet121`` builds ``monai.networks.nets.DenseNet121`` for volumes
(``spatial_dims=3``, one input channel, two classes unless told otherwise); builder
arguments pass through ``za.adapt`` under MONAI's own names, and ``in_chans`` /
``num_classes`` reach the builder's ``in_channels`` / ``out_channels`` / ``num_classes``
directly when nothing pretrained is loaded. The families cover the networks built
outside the zoo too. No import of MONAI is needed to match.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from zooadapt_plugins import _hf_hub as hub
from zooadapt_plugins._layout import either, exact, prefix

from zooadapt import (
    AdaptError,
    CheckpointError,
    Family,
    RenameRule,
    Weights,
    Zoo,
    hookimpl,
)

ZOO = "monai"
NETS = "monai.networks.nets"
#: What every zoo model is built with unless the caller says otherwise.
DEFAULTS = {"spatial_dims": 3}
DEFAULT_IN_CHANS = 1
DEFAULT_CLASSES = 2


def _arguments(in_chans: str, classes: str) -> dict[str, str]:
    return {"in_chans": in_chans, "num_classes": classes}


_DENSENET = _arguments("in_channels", "out_channels")
_RESNET = _arguments("n_input_channels", "num_classes")
_OTHERS = _arguments("in_channels", "num_classes")

#: Zoo name -> (builder in ``monai.networks.nets``, its fixed arguments, argument names).
BUILDERS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    **{f"densenet{n}": (f"DenseNet{n}", {}, _DENSENET) for n in (121, 169, 201, 264)},
    **{f"resnet{n}": (f"resnet{n}", {}, _RESNET) for n in (10, 18, 34, 50, 101, 152, 200)},
    **{f"seresnet{n}": (f"SEResNet{n}", {}, _OTHERS) for n in (50, 101, 152)},
    **{f"seresnext{n}": (f"SEResNext{n}", {}, _OTHERS) for n in (50, 101)},
    "senet154": ("SENet154", {}, _OTHERS),
    **{
        f"efficientnet-b{n}": (
            "EfficientNetBN",
            {"model_name": f"efficientnet-b{n}", "pretrained": False},
            _OTHERS,
        )
        for n in range(8)
    },
    "vit": (
        "ViT",
        {"img_size": 96, "patch_size": 16, "classification": True, "post_activation": None},
        _OTHERS,
    ),
}


#: MedicalNet (Chen et al. 2019): 3-D ResNets pretrained on medical segmentation, one input
#: channel, no classifier; published by Tencent on the Hugging Face Hub.
MEDICALNET_REPO = "TencentMedicalNet/MedicalNet-Resnet{depth}"
#: Depths with weights trained on 23 datasets, besides the 8-dataset ones.
MEDICALNET_23 = (10, 18, 34, 50)
#: The segmentation head of MedicalNet checkpoints, which a classifier does not have.
SEGMENTATION_HEAD = "conv_seg."


def medicalnet_arguments(depth: int) -> dict[str, Any]:
    """The builder arguments MedicalNet weights of ``depth`` need (MONAI's own table)."""
    return {
        "spatial_dims": 3,
        "n_input_channels": 1,
        "feed_forward": False,
        "shortcut_type": "A" if depth in (18, 34) else "B",
        "bias_downsample": depth in (18, 34),
    }


# -- the zoo -------------------------------------------------------------------------------


def _architectures() -> list[str]:
    return sorted(BUILDERS)


def _build(arch: str, weights: Weights | None = None, **kwargs: Any) -> nn.Module:
    """The MONAI builder with the zoo's defaults, overridden by ``kwargs``.

    MedicalNet weights build the headless one-channel ResNet they were trained as, and
    load through zooadapt's loader: the ``module.`` prefix goes by the generic rule, the
    segmentation head ``conv_seg.*`` is left out.
    """
    builder, fixed, names = BUILDERS[arch]
    if weights is None:
        sizes = {names["in_chans"]: DEFAULT_IN_CHANS, names["num_classes"]: DEFAULT_CLASSES}
        return getattr(_nets(arch), builder)(**{**DEFAULTS, **sizes, **fixed, **kwargs})
    needed = medicalnet_arguments(_depth(arch))
    clash = {k: v for k, v in kwargs.items() if k in needed and needed[k] != v}
    if clash:
        raise AdaptError(
            f"{ZOO}/{arch} MedicalNet weights need {needed}; got {clash}: drop them, or "
            "pass pretrained=False"
        )
    from zooadapt import load_weights  # imports the loader only when weights are loaded

    model = getattr(_nets(arch), builder)(**{**kwargs, **needed})
    report = load_weights(model, weights.file, strict=False)
    stray = [k for k in report.unexpected if not k.startswith(SEGMENTATION_HEAD)]
    if stray or report.missing or report.mismatched:
        raise CheckpointError(f"{weights.file} is not MedicalNet's {arch}:\n{report}")
    return model


def _depth(arch: str) -> int:
    return int(arch.removeprefix("resnet"))


def _weights(arch: str) -> list[Weights]:
    """MedicalNet's weights for the ResNets: 23 datasets (the default) where published."""
    if not arch.startswith("resnet"):
        return []
    depth = _depth(arch)
    tags = (
        [("medicalnet_23datasets", f"resnet_{depth}_23dataset.pth")]
        if depth in MEDICALNET_23
        else []
    )
    tags.append(("medicalnet", f"resnet_{depth}.pth"))
    return [_medicalnet(arch, depth, tag, file, i == 0) for i, (tag, file) in enumerate(tags)]


def _medicalnet(arch: str, depth: int, tag: str, filename: str, default: bool) -> Weights:
    repo = MEDICALNET_REPO.format(depth=depth)
    file = hub.cached(repo, filename)
    blob = file.resolve().name if file is not None else ""
    return Weights(
        model=f"{ZOO}/{arch}",
        tag=tag,
        url=f"https://huggingface.co/{repo}/resolve/main/{filename}",
        file=file or hub.expected_file(repo, "main", filename),
        sha256=blob if hub.is_sha256(blob) else "",
        default=default,
        source=f"Hugging Face Hub repo {repo}, file {filename} (MedicalNet)",
        download=lambda: _download(repo, filename),
    )


def _download(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, cache_dir=hub.cache_dir()))


def _nets(arch: str) -> Any:
    try:
        import monai.networks.nets as nets
    except ImportError as err:
        raise AdaptError(
            f"{ZOO}/{arch} needs MONAI: pip install 'zooadapt[monai]' (or pip install monai)"
        ) from err
    return nets


def _size_arguments(arch: str) -> Mapping[str, str]:
    return BUILDERS[arch][2]


# -- the families ------------------------------------------------------------------------------


def _densenet_groups(model: nn.Module) -> list[tuple[str, str]]:
    """The stem, one group per dense block with the transition after it, the head."""
    blocks = sum(1 for name, _ in model.features.named_children() if name.startswith("denseblock"))
    groups = [("stem", r"^features\.(conv0|norm0)\.")]
    groups += [
        (f"block{i}", rf"^features\.(denseblock{i}|transition{i})\.") for i in range(1, blocks)
    ]
    groups.append((f"block{blocks}", rf"^features\.(denseblock{blocks}|norm5)\."))
    return [*groups, ("head", r"^class_layers\.")]


#: torchvision's DenseNet keys (``denselayer1.norm1``, legacy ``norm.1``, ``classifier``),
#: so that its 2-D ImageNet weights load (and inflate) into MONAI's layout.
TORCHVISION_DENSENET = (
    RenameRule(
        r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|conv)\.?([12])\.",
        r"\1.layers.\2\3.",
        name="torchvision denselayer -> MONAI layers",
    ),
    RenameRule(r"^classifier\.", "class_layers.out.", name="torchvision classifier"),
)

DENSENET = Family(
    name="monai.densenet",
    classes=(f"{NETS}.densenet.DenseNet",),
    head="class_layers.out",
    stem="features.conv0",
    groups=_densenet_groups,
    rename_rules=TORCHVISION_DENSENET,
)


def _reset_resnet_head(model: nn.Module, num_classes: int) -> None:
    """A classifier for a MedicalNet-style ResNet built with ``feed_forward=False``."""
    features = model.layer4[-1]
    width = next(m for m in reversed(list(features.modules())) if hasattr(m, "num_features"))
    model.fc = nn.Linear(width.num_features, num_classes)


def _resnet_head(model: nn.Module) -> tuple[str, ...]:
    """``fc``, or none for a MedicalNet-style feature extractor (``feed_forward=False``)."""
    return ("fc",) if isinstance(model.fc, nn.Module) else ()


def _resnet_groups(model: nn.Module) -> list[tuple[str, str]]:
    layers = [(f"layer{i}", rf"^layer{i}\.") for i in range(1, 5)]
    head = [("head", r"^fc\.")] if _resnet_head(model) else []
    return [("stem", r"^(conv1|bn1)\."), *layers, *head]


RESNET = Family(
    name="monai.resnet",
    classes=(f"{NETS}.resnet.ResNet",),
    head=_resnet_head,
    stem="conv1",
    groups=_resnet_groups,
    reset_head=_reset_resnet_head,
)

SENET = Family(
    name="monai.senet",
    classes=(f"{NETS}.senet.SENet",),
    head="last_linear",
    stem="layer0.conv1",
    groups={
        "stem": r"^layer0\.",
        **{f"layer{i}": rf"^layer{i}\." for i in range(1, 5)},
        "head": r"^last_linear\.",
    },
)


def _numbered(model: nn.Module, path: str, name: str) -> list[tuple[str, str]]:
    """One group per item of the module list at ``path``: ``name0``, ``name1``, ..."""
    return [(f"{name}{i}", prefix(f"{path}.{i}")) for i in range(len(model.get_submodule(path)))]


def _efficientnet_groups(model: nn.Module) -> list[tuple[str, str]]:
    """The stem, one group per stage of ``_blocks``, the final conv, the head."""
    return [
        ("stem", prefix("_conv_stem", "_bn0")),
        *_numbered(model, "_blocks", "stage"),
        ("neck", prefix("_conv_head", "_bn1")),
        ("head", prefix("_fc")),
    ]


EFFICIENTNET = Family(
    name="monai.efficientnet",
    classes=(f"{NETS}.efficientnet.EfficientNet",),
    head="_fc",
    stem="_conv_stem",
    groups=_efficientnet_groups,
)


def _vit_head(model: nn.Module) -> tuple[str, ...]:
    head = getattr(model, "classification_head", None)
    if isinstance(head, nn.Sequential):  # Linear, then the post activation
        return ("classification_head.0",)
    return ("classification_head",) if head is not None else ()


def _vit_stem(model: nn.Module) -> str | None:
    path = "patch_embedding.patch_embeddings"
    return path if isinstance(model.get_submodule(path), nn.modules.conv._ConvNd) else None


def _vit_groups(model: nn.Module) -> list[tuple[str, str]]:
    """The embeddings, one group per transformer block, the final norm, the head."""
    return [
        ("embeddings", either(prefix("patch_embedding"), exact("cls_token"))),
        *_numbered(model, "blocks", "blocks."),
        ("neck", prefix("norm")),
        ("head", prefix("classification_head")),
    ]


def _vit_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The volume the position embedding was made for, when its patch grid is a cube."""
    embedding = model.patch_embedding
    kernel = getattr(embedding.patch_embeddings, "kernel_size", None)
    if kernel is None:
        return None
    patches, dims = int(embedding.n_patches), len(kernel)
    side = round(patches ** (1 / dims))
    return tuple(side * k for k in kernel) if side**dims == patches else None


def _vit_call(model: nn.Module, images: Any) -> Any:
    """MONAI's ViT returns ``(logits, hidden states)``."""
    return model(images)[0]


VIT = Family(
    name="monai.vit",
    classes=(f"{NETS}.vit.ViT",),
    head=_vit_head,
    stem=_vit_stem,
    groups=_vit_groups,
    call=_vit_call,
    input_size=_vit_input_size,
)


@hookimpl
def zooadapt_families() -> list[Family]:
    """MONAI's DenseNet, ResNet, SENet, EfficientNet and ViT classifiers."""
    return [DENSENET, RESNET, SENET, EFFICIENTNET, VIT]


@hookimpl
def zooadapt_zoos() -> list[Zoo]:
    """The MONAI zoo of classification networks."""
    return [
        Zoo(
            name=ZOO,
            models=_architectures,
            build=_build,
            weights=_weights,
            order=40,
            size_arguments=_size_arguments,
        )
    ]
