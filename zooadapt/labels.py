"""``za.labels``: the class names of a model's outputs, and ``classes=`` for ``adapt``.

Names come from what was recorded on the model (the zoo weights' categories, the
``classes`` given to ``adapt``, the file ``za.load`` read) or from its family (timm's
ImageNet label info), and are shown only while they match the head's class count.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from zooadapt._core.anatomy import anatomy, call_family, describe
from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt._core.warn import warn
from zooadapt.errors import AdaptError, AdaptWarning
from zooadapt.types import Family

__all__ = ["check_classes", "labels", "record_labels", "resolve_classes"]

_RECORD = "_zooadapt_labels"
_UNSET = object()
#: Class names a message shows before summarising the rest.
SHOWN = 5


def labels(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> tuple[str, ...] | None:
    """The class name of each of ``model``'s outputs, or ``None`` when unknown.

    Args:
        model: A model instance (wrappers are looked through).
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with.

    Returns:
        One name per output of the (first) head, in order; ``None`` when no names are
        known or they do not match the head's class count (a head replaced by hand).
    """
    model = unwrap(model)
    anat = anatomy(model, family=family, plugin_manager=plugin_manager)
    names = model.__dict__.get(_RECORD, _UNSET)
    if names is _UNSET:
        declared = describe(model)[0]
        names = call_family(declared, "labels", lambda: declared.item.labels_of(model))
    if names is None or len(names) != anat.num_classes:
        return None
    return names  # type: ignore[return-value]


def record_labels(model: nn.Module, names: Sequence[str] | None) -> None:
    """Remember ``names`` (``None``: known to be unknown) on ``model``; copies keep them."""
    unwrap(model).__dict__[_RECORD] = None if names is None else tuple(str(n) for n in names)


def check_classes(classes: object) -> list[str | int]:
    """``classes`` as a list of names and indices, or an AdaptError saying what is wrong."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise AdaptError(f"classes must be a list of class names or indices, got {classes!r}")
    entries = list(classes)
    if not entries:
        raise AdaptError("classes is empty; give at least one class name or index")
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, (str, int)) or entry == "":
            raise AdaptError(f"classes entry {entry!r} is neither a class name nor an index")
    return entries


def resolve_classes(
    classes: Sequence[str | int],
    known: Sequence[str] | None,
    count: int | None,
    model: str,
) -> tuple[list[int | None], tuple[str, ...]]:
    """Which pretrained head row each requested class keeps, and the new labels.

    Args:
        classes: Names or indices, in the order the new head will have them.
        known: The pretrained class names, if any.
        count: The pretrained head's class count, if any.
        model: The model, for messages.

    Returns:
        For each class, its pretrained row (``None``: a new class, freshly initialised),
        and the class names (a pretrained name for an index, ``str(i)`` if none is known).

    Raises:
        AdaptError: For an index out of range, a name the pretrained labels hold twice
            (ImageNet's two "crane"), or a class given twice.
    """
    index = _index(known)
    rows: list[int | None] = []
    names: list[str] = []
    for entry in check_classes(classes):
        if isinstance(entry, int):
            if count is None or not 0 <= entry < count:
                span = f"0..{count - 1}" if count else "none: the model has no pretrained head"
                raise AdaptError(f"classes index {entry} is not a class of {model} ({span})")
            rows.append(entry)
            names.append(known[entry] if known else str(entry))
            continue
        found = index.get(entry, [])
        if len(found) > 1:
            raise AdaptError(
                f"class name {entry!r} names classes {found} of {model}; give the index "
                "you mean instead of the name"
            )
        if not found and known:
            _warn_if_misspelt(entry, known, model)
        rows.append(found[0] if found else None)
        names.append(entry)
    _check_unique(rows, names)
    return rows, tuple(names)


def _warn_if_misspelt(name: str, known: Sequence[str], model: str) -> None:
    """Warn when a new class's name is nearly a pretrained one: a row lost to a typo."""
    folded = [k for k in known if k.casefold() == name.casefold()]
    close = folded or difflib.get_close_matches(name, list(known), n=3, cutoff=0.85)
    if close:
        warn(
            f"class name {name!r} is not one of the {len(known)} pretrained classes of "
            f"{model}, so it gets a new, randomly initialised head row; did you mean "
            f"{' or '.join(repr(c) for c in close)}? (give the name exactly, or its index)",
            AdaptWarning,
        )


def _index(known: Sequence[str] | None) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, name in enumerate(known or ()):
        index.setdefault(name, []).append(i)
    return index


def _check_unique(rows: list[int | None], names: list[str]) -> None:
    seen_rows = [row for row in rows if row is not None]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or len(set(seen_rows)) != len(seen_rows):
        twice = repeated or sorted(
            {names[i] for i, r in enumerate(rows) if r is not None and rows.count(r) > 1}
        )
        raise AdaptError(f"classes lists {twice[:SHOWN]} more than once; give each class once")
