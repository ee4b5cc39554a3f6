"""EfficientNet B0-B7 and V2 S/M/L (torchvision)."""

from zooadapt_plugins._layout import child_stages, prefix

from zooadapt import Family, hookimpl


def _groups(model):
    return [
        ("stem", prefix("features.0")),
        *child_stages("features", merge_last=1)(model),
        ("head", prefix("classifier.1")),
    ]


@hookimpl
def zooadapt_families():
    """EfficientNet: stem, its own stages (the last with the 1x1 conv), head."""
    yield Family(
        name="efficientnet",
        classes=("torchvision.models.efficientnet.EfficientNet",),
        head="classifier.1",
        stem="features.0.0",
        groups=_groups,
    )
