"""Frozen dataclasses that plugins return from hooks and that zooadapt returns to users."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Anatomy", "Family", "RenameRule", "StemLayout", "Weights", "Zoo"]

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
        rename_rules: Key renames that this family's historical checkpoints need.
        stem_overrides: Attributes set on the model when its input channels change, for
            RGB-only behaviour such as Inception's ``transform_input``.
        reset_head: Builds the heads as ``reset_head(model, num_classes)`` when a head is
            not a layer the generic surgery can replace (``nn.Identity`` in a headless
            encoder); it is undone if a later step fails.
        stem_layout: How the stem's weight folds input channels (:class:`StemLayout`),
            as data or as a function of the model.
        input_size: The spatial input size the model is made for (``(224, 224)``, or
            ``(96, 96, 96)`` for volumes), as data or a function of the model; ``None``
            means 224 per spatial dimension (96 for volumes).
        spatial_dims: 2 for images, 3 for volumes, as data or a function of the model;
            ``None`` takes it from the stem (``Conv3d``: 3).
        fallback: Generic family that claims any model, used only when nothing else does.
    """

    name: str
    head: Paths
    stem: str | Sequence[str] | None | Callable[[nn.Module], str | Sequence[str] | None]
    groups: Groups
    classes: tuple[str, ...] = ()
    match: Callable[[nn.Module], bool] | None = None
    aux_heads: tuple[str, ...] = ()
    rename_rules: tuple[RenameRule, ...] = ()
    stem_overrides: Mapping[str, Any] = field(default_factory=dict, compare=False)
    reset_head: Callable[[nn.Module, int], None] | None = None
    stem_layout: StemLayout | Callable[[nn.Module], StemLayout] = StemLayout()
    input_size: Sequence[int] | Callable[[nn.Module], Sequence[int]] | None = None
    spatial_dims: int | Callable[[nn.Module], int] | None = None
    fallback: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            object.__setattr__(self, "classes", (self.classes,))
        if isinstance(self.aux_heads, str):
            object.__setattr__(self, "aux_heads", (self.aux_heads,))
        if not callable(self.groups):
            object.__setattr__(self, "groups", _group_pairs(self.groups))
        object.__setattr__(self, "rename_rules", tuple(self.rename_rules))

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
    """

    name: str
    models: Callable[[], Iterable[str]]
    build: Callable[..., nn.Module]
    weights: Callable[[str], Sequence[Weights]] = lambda arch: ()
    order: int = 100


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
