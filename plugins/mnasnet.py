"""MNASNet 0.5/0.75/1.0/1.3 (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl

_LAYERS = [f"layers.{i}" for i in range(17)]


@hookimpl
def zooadapt_families():
    """MNASNet: stem (layers 0-7), six stacks (the last with the final 1x1 conv), head."""
    yield Family(
        name="mnasnet",
        classes=("torchvision.models.mnasnet.MNASNet",),
        head="classifier.1",
        stem="layers.0",
        groups={
            "stem": prefix(*_LAYERS[:8]),
            **{f"stage{i}": prefix(_LAYERS[7 + i]) for i in range(1, 6)},
            "stage6": prefix(*_LAYERS[13:16]),
            "head": prefix("classifier.1"),
        },
    )
