"""AlexNet (torchvision)."""

from zooadapt_plugins._layout import pooled_blocks, prefix

from zooadapt import Family, hookimpl


def _groups(model):
    return [
        *pooled_blocks("features")(model),
        ("pre_logits", prefix("classifier.1", "classifier.4")),
        ("head", prefix("classifier.6")),
    ]


@hookimpl
def zooadapt_families():
    """AlexNet: three convolution blocks, two pre-logits layers, head."""
    yield Family(
        name="alexnet",
        classes=("torchvision.models.alexnet.AlexNet",),
        head="classifier.6",
        stem="features.0",
        groups=_groups,
    )
