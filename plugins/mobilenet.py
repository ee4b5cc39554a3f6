"""MobileNet v2 and v3 (torchvision)."""

from zooadapt_plugins._layout import pointwise_convs, prefix, strided_stages

from zooadapt import Family, hookimpl


def _v2_groups(model):
    return [
        ("stem", prefix("features.0")),
        *strided_stages("features")(model),
        ("head", prefix("classifier.1")),
    ]


def _v3_groups(model):
    return [
        ("stem", prefix("features.0")),
        *strided_stages("features")(model),
        ("pre_logits", prefix("classifier.0")),
        ("head", prefix("classifier.3")),
    ]


def _pointwise(model):
    """LoRA ``conv``: the expansion and projection 1x1 convolutions (not the depthwise)."""
    return {"conv": pointwise_convs(model)}


@hookimpl
def zooadapt_families():
    """MobileNets: stem, stages split where the resolution halves, head."""
    yield Family(
        name="mobilenet_v2",
        classes=("torchvision.models.mobilenetv2.MobileNetV2",),
        head="classifier.1",
        stem="features.0.0",
        groups=_v2_groups,
        roles=_pointwise,
    )
    yield Family(
        name="mobilenet_v3",
        classes=("torchvision.models.mobilenetv3.MobileNetV3",),
        head="classifier.3",
        stem="features.0.0",
        groups=_v3_groups,
        roles=_pointwise,
    )
