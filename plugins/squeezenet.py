"""SqueezeNet 1.0 and 1.1 (torchvision); the head is a 1x1 convolution."""

from zooadapt_plugins._layout import pooled_blocks, prefix

from zooadapt import Family, hookimpl


def _groups(model):
    return [*pooled_blocks("features")(model), ("head", prefix("classifier.1"))]


@hookimpl
def zooadapt_families():
    """SqueezeNet: blocks of Fire modules split at the max-pools, conv head."""
    yield Family(
        name="squeezenet",
        classes=("torchvision.models.squeezenet.SqueezeNet",),
        head="classifier.1",
        stem="features.0",
        groups=_groups,
    )
