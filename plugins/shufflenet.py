"""ShuffleNet v2 (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


@hookimpl
def zooadapt_families():
    """ShuffleNet v2: stem, stage2..stage4 (with conv5), head."""
    yield Family(
        name="shufflenet_v2",
        classes=("torchvision.models.shufflenetv2.ShuffleNetV2",),
        head="fc",
        stem="conv1.0",
        groups={
            "stem": prefix("conv1"),
            "stage2": prefix("stage2"),
            "stage3": prefix("stage3"),
            "stage4": prefix("stage4", "conv5"),
            "head": prefix("fc"),
        },
    )
