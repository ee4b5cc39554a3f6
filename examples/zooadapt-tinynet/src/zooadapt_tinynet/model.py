"""TinyNet: a small convolutional network that zooadapt knows nothing about.

Nothing here refers to zooadapt: this is the architecture as its authors would publish
it. The plugin in ``zooadapt_tinynet/__init__.py`` teaches zooadapt about it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CONFIGS", "ConvBlock", "TinyNet"]

#: Stem width, then the width of each stage: ``tinynet_s`` has two stages, ``tinynet_m`` three.
CONFIGS: dict[str, dict[str, tuple[int, ...]]] = {
    "tinynet_s": {"widths": (16, 32, 64)},
    "tinynet_m": {"widths": (32, 64, 128, 256)},
}


class ConvBlock(nn.Sequential):
    """A 3x3 convolution that halves the resolution, then BatchNorm and ReLU."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_chans, out_chans, 3, stride=2, padding=1, bias=False),
                bn=nn.BatchNorm2d(out_chans),
                act=nn.ReLU(inplace=True),
            )
        )


class TinyNet(nn.Module):
    """``stem`` -> ``stages.0`` .. ``stages.N`` -> global average pool -> ``classifier``.

    Args:
        widths: Channels of the stem, then of each stage (one stage per extra width).
        num_classes: Outputs of the classifier.
        in_chans: Channels of the input image.
    """

    def __init__(
        self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 1000, in_chans: int = 3
    ) -> None:
        super().__init__()
        self.stem = ConvBlock(in_chans, widths[0])
        self.stages = nn.Sequential(
            *(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for images of shape ``(N, in_chans, H, W)``."""
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))
