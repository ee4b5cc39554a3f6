"""Frozen dataclasses that plugins return from hooks and that zooadapt returns to users."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from zooadapt.errors import DataError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "Adaptation",
    "Anatomy",
    "DataConfig",
    "Family",
    "RenameRule",
    "StemLayout",
    "Weights",
    "Zoo",
]

#: Interpolation names a :class:`DataConfig` accepts (``torchvision.transforms.InterpolationMode``).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: How the eval pipeline fits an image to the input size (timm's ``crop_mode``).
CROP_MODES = ("center", "squash", "border")

#: A value a family declares either as data or as a function of the model instance.
Paths = Union[str, Sequence[str], "Callable[[nn.Module], Sequence[str]]"]
Groups = Union[
    Mapping[str, str],
    Sequence[tuple[str, str]],
    "Callable[[nn.Module], Sequence[tuple[str, str]]]",
]


@dataclass(frozen=True)
class RenameRule:
    r"""A regex substitution applied to every checkpoint key.

    Args:
        pattern: Regular expression searched in each key.
        replacement: ``re.sub`` replacement (``\\1`` back-references allowed).
        name: Short label shown in load reports.
    """

    pattern: str
    replacement: str
    name: str = ""

    def __post_init__(self) -> None:
        compiled = re.compile(self.pattern)
        _check_template(self.replacement, compiled, self.pattern)
        if not self.name:
            object.__setattr__(self, "name", f"{self.pattern} -> {self.replacement}")

    def apply(self, key: str) -> str:
        """Return ``key`` with this rule applied."""
        return re.sub(self.pattern, self.replacement, key)


def _check_template(replacement: str, compiled: re.Pattern[str], pattern: str) -> None:
    """Refuse back-references the pattern has no group for, when the rule is made."""
    parser = getattr(re, "_parser", None)
    parse_template = getattr(parser, "parse_template", None)
    if parse_template is None:  # another Python: the error comes at the first match
        return
    try:
        parse_template(replacement, compiled)
    except re.error as err:
        raise re.error(
            f"replacement {replacement!r} does not fit pattern {pattern!r}: {err}"
        ) from err


@dataclass(frozen=True)
class StemLayout:
    """How a stem's weight lays out its input channels along its input dimension.

    An ordinary convolution has one input position per channel (``fold=1``). A stem
    behind a space-to-depth step (TResNet) or a linear patch embedding folds several
    input positions into its input dimension: ``fold`` positions per channel, with the
    channel index varying fastest (``channels_last=True``, timm's ``P-P-C`` patches) or
    slowest (``channels_last=False``, ``C-P-P``).

    Args:
        fold: Input positions per channel in the weight's input dimension.
        channels_last: Whether the channel index varies fastest within that dimension.
    """

    fold: int = 1
    channels_last: bool = False


@dataclass(frozen=True)
class DataConfig:
    """How to feed a model: input size, per-channel statistics and the eval resize/crop.

    Values are in the units of images scaled to ``[0, 1]``. The eval pipeline resizes to
    :attr:`resize` (the shorter side, for a square input), center-crops to the spatial
    input size, then normalises each channel: ``(x - mean[c]) / std[c]``.

    Args:
        input_size: ``(channels, height, width)``, or ``(channels, depth, height, width)``.
        mean: Per-channel mean, one per input channel.
        std: Per-channel standard deviation, one per input channel (positive).
        interpolation: Resize interpolation: one of ``INTERPOLATIONS``.
        crop_pct: Crop size over resize size (timm's ``crop_pct``; 224 / 256 = 0.875).
        resize_size: Resize size before the crop; ``None`` computes it from
            ``crop_pct`` as timm does (``floor(size / crop_pct)``).
        crop_mode: ``"center"`` (resize keeping the aspect ratio, then crop),
            ``"squash"`` (resize to the square, then crop) or ``"border"`` (fit the longest
            side, pad with zeros to the crop).
        source: Where the values come from (``"torchvision IMAGENET1K_V1 weights"``).

    Raises:
        DataError: If the statistics do not fit the channels or a value is out of range.
    """

    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    resize_size: tuple[int, ...] | None = None
    crop_mode: str = "center"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("input_size", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise DataError(f"DataConfig.{name} must be a sequence, got {value!r}")
        size = tuple(int(v) for v in self.input_size)
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        resize = None if self.resize_size is None else tuple(int(v) for v in self.resize_size)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "resize_size", resize)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        problem = _data_config_problem(self)
        if problem:
            raise DataError(f"invalid DataConfig ({self.source or 'no source'}): {problem}")

    @property
    def in_chans(self) -> int:
        """Input channels (the first entry of :attr:`input_size`)."""
        return self.input_size[0]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        """The crop: :attr:`input_size` without its channels."""
        return self.input_size[1:]

    @property
    def resize(self) -> tuple[int, ...]:
        """Resize size before the crop: :attr:`resize_size`, else from :attr:`crop_pct`."""
        if self.resize_size is not None:
            return self.resize_size
        return tuple(math.floor(v / self.crop_pct) for v in self.spatial_size)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back into an equal config."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "resize_size": None if self.resize_size is None else list(self.resize_size),
            "crop_mode": self.crop_mode,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """Read :meth:`as_dict`'s output (unknown keys are an error)."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise DataError(f"unknown DataConfig fields {unknown}")
        try:
            return cls(**values)
        except DataError:
            raise
        except (TypeError, ValueError) as err:
            raise DataError(f"invalid DataConfig {dict(values)!r}: {err}") from err


def _data_config_problem(config: DataConfig) -> str:
    """Why ``config`` is invalid, or ``""``."""
    size, chans = config.input_size, config.input_size[:1]
    if len(size) not in (1, 2, 3, 4) or any(v < 1 for v in size):
        return f"input_size {size} is not (channels, *spatial) with positive sizes"
    if len(config.mean) != chans[0] or len(config.std) != chans[0]:
        return (
            f"{len(config.mean)} means and {len(config.std)} stds for {chans[0]} channels; "
            "give one per channel"
        )
    if not all(math.isfinite(v) for v in config.mean):
        return f"mean {config.mean} is not finite"
    if not all(math.isfinite(v) and v > 0 for v in config.std):
        return f"std {config.std} must be positive"
    if config.interpolation not in INTERPOLATIONS:
        return f"interpolation {config.interpolation!r} is not one of {INTERPOLATIONS}"
    if config.crop_mode not in CROP_MODES:
        return f"crop_mode {config.crop_mode!r} is not one of {CROP_MODES}"
    if not (math.isfinite(config.crop_pct) and config.crop_pct > 0):
        return f"crop_pct {config.crop_pct} must be positive"
    resize = config.resize_size
    if resize is not None and (len(resize) not in (1, len(size) - 1) or min(resize) < 1):
        return f"resize_size {resize} is not one size or one per spatial dimension"
    return ""


@dataclass(frozen=True)
class Adaptation:
    """What a model is once ``adapt`` is done with it, for :attr:`Family.sync`.

    Attributes:
        num_classes: Outputs of the head (``None``: headless).
        in_chans: Input channels of the stem (``None``: no stem).
        labels: Class names of the outputs, when known.
    """

    num_classes: int | None
    in_chans: int | None
    labels: tuple[str, ...] | None


@dataclass(frozen=True)
class Family:
    """What an architecture family knows about itself.

    Fields that depend on the instance (a depth, a number of blocks) may be given as a
    function of the model instead of as data.

    Args:
        name: Unique family name, e.g. ``"resnet"``.
        head: Module path(s) of the classifier layer(s) that ``num_classes`` replaces:
            ``nn.Linear`` or a 1x1 ``nn.Conv2d``.
        stem: Module path(s) of the layers that read the input image and that ``in_chans``
            rebuilds (a convolution, or a linear patch embedding with ``stem_layout``);
            several for models with parallel input branches; ``None`` if there is none.
        groups: Ordered freeze groups, input to output, head last: group name -> regex
            searched in parameter names. Every parameter must match exactly one group.
        classes: Qualified class names (``"torchvision.models.resnet.ResNet"``) this family
            owns; an exact class beats a subclass, which beats ``match``.
        match: Predicate for models that cannot be recognised by class.
        aux_heads: Optional head paths, replaced when present and not ``None``
            (GoogLeNet's ``aux1.fc2``).
        rename_rules: Key renames that this family's historical checkpoints need, as data
            or a function of the model (a prefix that depends on the instance).
        stem_overrides: Attributes set on the model when its input channels change, for
            RGB-only behaviour such as Inception's ``transform_input``.
        reset_head: Builds the heads as ``reset_head(model, num_classes)`` when a head is
            not a layer the generic surgery can replace (``nn.Identity`` in a headless
            encoder), or when ``head`` names none on the instance (raise an
            ``AdaptError`` if the model cannot have one); it is undone if a later step
            fails.
        stem_layout: How the stem's weight folds input channels (:class:`StemLayout`),
            as data or as a function of the model.
        input_size: The spatial input size the model is made for (``(224, 224)``, or
            ``(96, 96, 96)`` for volumes), as data or a function of the model; ``None``
            means 224 per spatial dimension (96 for volumes).
        spatial_dims: 2 for images, 3 for volumes, as data or a function of the model;
            ``None`` takes it from the stem (``Conv3d``: 3).
        data_config: The :class:`DataConfig` the family's pretrained weights expect, as
            data or a function of the model (timm reads ``pretrained_cfg``); ``None``
            means ImageNet statistics, bilinear, ``crop_pct`` 0.875 at the input size.
        labels: Class names of the pretrained head, as data or a function of the model
            returning them or ``None``; used only while they match the head's class count.
        sync: ``sync(model, adaptation)`` returns the attributes of the model's own
            configuration that follow an adaptation (:class:`Adaptation`), as dotted
            paths from the model to new values, in the order to set them
            (``{"config.num_labels": 10}``); set after the surgery, restored if a later
            step fails.
        call: ``call(model, images)`` runs the model on a batch of images and returns
            its logits (``model(pixel_values=x).logits``); ``None``: ``model(images)``.
        roles: What its layers do, for LoRA (:func:`zooadapt.lora`): role name
            (``qkv``, ``q``, ``k``, ``v``, ``attn_out``, ``mlp``, ``conv``) -> regex
            full-matching the names of the modules that play it, as data or a function
            of the model.
        fallback: Generic family that claims any model, used only when nothing else does.
    """

    name: str
    head: Paths
    stem: str | Sequence[str] | None | Callable[[nn.Module], str | Sequence[str] | None]
    groups: Groups
    classes: tuple[str, ...] = ()
    match: Callable[[nn.Module], bool] | None = None
    aux_heads: tuple[str, ...] = ()
    rename_rules: Sequence[RenameRule] | Callable[[nn.Module], Sequence[RenameRule]] = ()
    stem_overrides: Mapping[str, Any] = field(default_factory=dict, compare=False)
    reset_head: Callable[[nn.Module, int], None] | None = None
    stem_layout: StemLayout | Callable[[nn.Module], StemLayout] = StemLayout()
    input_size: Sequence[int] | Callable[[nn.Module], Sequence[int]] | None = None
    spatial_dims: int | Callable[[nn.Module], int] | None = None
    data_config: DataConfig | Callable[[nn.Module], DataConfig | None] | None = None
    labels: Sequence[str] | Callable[[nn.Module], Sequence[str] | None] | None = None
    sync: Callable[[nn.Module, Adaptation], Mapping[str, Any]] | None = None
    call: Callable[[nn.Module, Any], Any] | None = None
    roles: Mapping[str, str] | Callable[[nn.Module], Mapping[str, str]] | None = None
    fallback: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            object.__setattr__(self, "classes", (self.classes,))
        if isinstance(self.aux_heads, str):
            object.__setattr__(self, "aux_heads", (self.aux_heads,))
        if not callable(self.groups):
            object.__setattr__(self, "groups", _group_pairs(self.groups))
        if not callable(self.rename_rules):
            object.__setattr__(self, "rename_rules", tuple(self.rename_rules))
        if self.roles is not None and not callable(self.roles):
            object.__setattr__(self, "roles", _role_regexes(self.roles))

    def head_paths(self, model: nn.Module) -> tuple[str, ...]:
        """Return the required head paths for ``model``."""
        head = self.head(model) if callable(self.head) else self.head
        return (head,) if isinstance(head, str) else tuple(head)

    def stem_paths(self, model: nn.Module) -> tuple[str, ...]:
        """Return the stem paths for ``model`` (empty if it has no adaptable stem)."""
        stem = self.stem(model) if callable(self.stem) else self.stem
        if stem is None:
            return ()
        return (stem,) if isinstance(stem, str) else tuple(stem)

    def stem_layout_of(self, model: nn.Module) -> StemLayout:
        """Return the :class:`StemLayout` of ``model``'s stem."""
        return self.stem_layout(model) if callable(self.stem_layout) else self.stem_layout

    def input_size_of(self, model: nn.Module) -> tuple[int, ...] | None:
        """The declared spatial input size for ``model``, or ``None``."""
        size = self.input_size(model) if callable(self.input_size) else self.input_size
        return None if size is None else tuple(int(v) for v in size)

    def spatial_dims_of(self, model: nn.Module, stem: str | None) -> int:
        """Spatial dimensions of ``model``'s input: declared, else from its stem layer."""
        if self.spatial_dims is not None:
            dims = self.spatial_dims(model) if callable(self.spatial_dims) else self.spatial_dims
            return int(dims)
        from torch.nn.modules.conv import _ConvNd

        layer = model.get_submodule(stem) if stem else None
        if isinstance(layer, _ConvNd):
            return len(layer.kernel_size)
        size = self.input_size_of(model)
        return len(size) if size is not None else 2

    def data_config_of(self, model: nn.Module) -> DataConfig | None:
        """The declared :class:`DataConfig` for ``model``, or ``None``."""
        config = self.data_config(model) if callable(self.data_config) else self.data_config
        if config is not None and not isinstance(config, DataConfig):
            raise TypeError(f"data_config gave {type(config).__name__}, not a DataConfig")
        return config

    def rename_rules_of(self, model: nn.Module | None = None) -> tuple[RenameRule, ...]:
        """The family's own rename rules for ``model``.

        Raises:
            TypeError: If the rules are a function of the model and none is given.
        """
        if not callable(self.rename_rules):
            return self.rename_rules
        if model is None:
            raise TypeError(f"family {self.name!r}'s rename rules depend on the model; pass it")
        return tuple(self.rename_rules(model))

    def roles_of(self, model: nn.Module) -> dict[str, str]:
        """The declared LoRA roles for ``model`` (role -> module-name regex)."""
        roles = self.roles(model) if callable(self.roles) else self.roles
        return _role_regexes(roles or {})

    def labels_of(self, model: nn.Module) -> tuple[str, ...] | None:
        """The declared class names for ``model``, or ``None``."""
        names = self.labels(model) if callable(self.labels) else self.labels
        return None if names is None else tuple(str(name) for name in names)

    def group_patterns(self, model: nn.Module) -> tuple[tuple[str, str], ...]:
        """Return ``(group name, regex)`` pairs for ``model``, input to output."""
        groups = self.groups(model) if callable(self.groups) else self.groups
        return _group_pairs(groups)


def _group_pairs(
    groups: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    pairs = tuple(groups.items()) if isinstance(groups, Mapping) else tuple(groups)
    for _, pattern in pairs:
        re.compile(pattern)
    return pairs


def _role_regexes(roles: Mapping[str, str]) -> dict[str, str]:
    """``roles`` as a dict, each regex compiled once (``re.error`` if one is invalid)."""
    for pattern in roles.values():
        re.compile(pattern)
    return dict(roles)


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights a zoo can provide.

    Args:
        model: Qualified model name, e.g. ``"torchvision/mobilenet_v2"``.
        tag: Weights name within the model, e.g. ``"IMAGENET1K_V1"``.
        url: Where the file is published.
        file: Where the file is expected in the local cache.
        sha256: Published sha256 (or its prefix); empty if unknown.
        default: Whether ``pretrained=True`` selects these weights.
        num_classes: Classes of the pretrained head, if known.
        source: Where the weights are published, for messages (a hub repository).
        download: Fetches the file into the cache and returns its path; by default
            ``url`` is downloaded to ``file``.
        data_config: How these weights were trained to be fed (:class:`DataConfig`).
        labels: The class names of their head, in order.
    """

    model: str
    tag: str
    url: str
    file: Path
    sha256: str = ""
    default: bool = False
    num_classes: int | None = None
    source: str = ""
    download: Callable[[], Path] | None = field(default=None, compare=False, repr=False)
    data_config: DataConfig | None = field(default=None, compare=False, repr=False)
    labels: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def cached(self) -> bool:
        """Whether the file is present in the local cache."""
        return self.file.is_file()


@dataclass(frozen=True)
class Zoo:
    """A source of named models, declared by a zoo plugin.

    Args:
        name: Zoo name, the prefix of qualified names (``"torchvision"``).
        models: Returns the architecture names the zoo can build.
        build: ``build(arch, weights, **kwargs)`` returns the model, with ``weights``
            (already present in the local cache) loaded when not ``None``.
        weights: ``weights(arch)`` lists the pretrained weights known for an architecture.
        order: Zoos are searched in ascending order for unqualified names.
        find: ``find(name)`` resolves a name the zoo does not list to an architecture it
            can build, or returns ``None``: for a hub with more models than are cached,
            the name after the zoo's prefix (``hf/google/vit-base-patch16-224``), and for
            a model saved in a directory, the directory given as the model name.
        size_arguments: ``size_arguments(arch)`` names the builder's keywords for
            ``in_chans`` and ``num_classes`` (``{"in_chans": "in_channels",
            "num_classes": "out_channels"}``): a model built without pretrained weights
            is then built at the requested size instead of adapted to it.
    """

    name: str
    models: Callable[[], Iterable[str]]
    build: Callable[..., nn.Module]
    weights: Callable[[str], Sequence[Weights]] = lambda arch: ()
    order: int = 100
    find: Callable[[str], str | None] | None = None
    size_arguments: Callable[[str], Mapping[str, str]] | None = None


@dataclass(frozen=True)
class Anatomy:
    """The one description of a model instance, computed once from its family.

    ``za.anatomy(model)`` returns it; every zooadapt function reads it rather than
    working these facts out again. ``adapt`` keeps it up to date.

    Attributes:
        family: Name of the owning family.
        plugin: Name of the plugin that declared the family.
        head: Module paths of the heads present on the model (aux heads included).
        stem: Module path of the (first) stem layer, or ``None``.
        groups: Group name -> parameter names, input to output, head last.
        stems: Every stem path (models with parallel input branches have several).
        stem_layout: How the stems' weights fold input channels.
        num_classes: Outputs of the (first) head; ``None`` for a headless model.
        in_chans: Input channels the stem reads (through its layout); ``None`` without
            a stem.
        spatial_dims: 2 for images, 3 for volumes (0 for flat vectors).
        input_size: Default spatial input size, e.g. ``(224, 224)``.
    """

    family: str
    plugin: str
    head: tuple[str, ...]
    stem: str | None
    groups: dict[str, list[str]]
    stems: tuple[str, ...] = ()
    stem_layout: StemLayout = StemLayout()
    num_classes: int | None = None
    in_chans: int | None = None
    spatial_dims: int = 2
    input_size: tuple[int, ...] = (224, 224)

    def input_shape(
        self, batch_size: int = 1, input_size: int | Sequence[int] | None = None
    ) -> tuple[int, ...]:
        """``(batch, channels, *spatial)`` of an input batch (3 channels without a stem).

        Args:
            batch_size: Leading dimension.
            input_size: Spatial size (an int is used for every dimension); default
                :attr:`input_size`.
        """
        if input_size is None:
            size = self.input_size
        elif isinstance(input_size, int):
            size = (input_size,) * self.spatial_dims
        else:
            size = tuple(input_size)
        return (batch_size, self.in_chans or 3, *size)
