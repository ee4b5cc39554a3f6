"""zooadapt plugin for TinyNet: a family, a zoo and the renames of its original checkpoints.

Registered through the ``zooadapt`` entry-point group (see ``pyproject.toml``); the module
itself is the plugin, so its ``@za.hookimpl`` functions are its hooks.
"""

from __future__ import annotations

from typing import Any

import zooadapt as za
from torch import nn

from zooadapt_tinynet.model import CONFIGS, TinyNet

__all__ = ["FAMILY", "ORIGINAL_LAYOUT", "TinyNet", "build"]

#: The original release named the stem ``features.0``/``features.1``, each stage
#: ``blocks.<i>`` (a Sequential: 0 conv, 1 norm) and the classifier ``fc``. Every rule is
#: anchored, so applying it to a key it produced changes nothing (idempotent).
ORIGINAL_LAYOUT = (
    za.RenameRule(r"^features\.0\.", "stem.conv.", name="tinynet original: stem conv"),
    za.RenameRule(r"^features\.1\.", "stem.bn.", name="tinynet original: stem norm"),
    za.RenameRule(r"^blocks\.(\d+)\.0\.", r"stages.\1.conv.", name="tinynet original: conv"),
    za.RenameRule(r"^blocks\.(\d+)\.1\.", r"stages.\1.bn.", name="tinynet original: norm"),
    za.RenameRule(r"^fc\.", "classifier.", name="tinynet original: classifier"),
)


def _groups(model: nn.Module) -> list[tuple[str, str]]:
    """Freeze groups, input to output, head last: the stem, one group per stage, the head."""
    stages = [(f"stage{i}", rf"^stages\.{i}\.") for i in range(len(model.stages))]
    return [("stem", r"^stem\."), *stages, ("head", r"^classifier\.")]


FAMILY = za.Family(
    name="tinynet",
    classes=("zooadapt_tinynet.model.TinyNet",),
    head="classifier",
    stem="stem.conv",
    groups=_groups,
    rename_rules=ORIGINAL_LAYOUT,
)


def build(arch: str, weights: za.Weights | None = None, **kwargs: Any) -> TinyNet:
    """Build a TinyNet variant; ``kwargs`` override its constructor arguments.

    This zoo publishes no pretrained weights, so zooadapt always passes ``weights=None``;
    use ``pretrained="path/to/checkpoint.pth"`` to load a file instead.
    """
    return TinyNet(**{**CONFIGS[arch], **kwargs})


@za.hookimpl
def zooadapt_families() -> list[za.Family]:
    """TinyNet's family: head ``classifier``, stem ``stem.conv``, one group per stage."""
    return [FAMILY]


@za.hookimpl
def zooadapt_zoos() -> list[za.Zoo]:
    """The ``tinynet`` zoo: ``tinynet/tinynet_s`` and ``tinynet/tinynet_m``."""
    return [za.Zoo(name="tinynet", models=lambda: sorted(CONFIGS), build=build)]


@za.hookimpl
def zooadapt_rename_rules(family: str) -> list[za.RenameRule]:
    """The self-supervised TinyNet release stores the current layout under ``encoder.``."""
    if family != "tinynet":
        return []
    return [za.RenameRule(r"^encoder\.", "", name="tinynet ssl: strip 'encoder.'")]
