"""VGG 11/13/16/19, with and without BatchNorm (torchvision)."""

from zooadapt_plugins._layout import pooled_blocks, prefix

from zooadapt import Family, hookimpl


def _groups(model):
    return [
        *pooled_blocks("features")(model),
        ("pre_logits", prefix("classifier.0", "classifier.3")),
        ("head", prefix("classifier.6")),
    ]


@hookimpl
def zooadapt_families():
    """VGG: one group per convolution block (split at the max-pools), pre-logits, head."""
    yield Family(
        name="vgg",
        classes=("torchvision.models.vgg.VGG",),
        head="classifier.6",
        stem="features.0",
        groups=_groups,
    )
