"""ResNet, ResNeXt and Wide ResNet (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


@hookimpl
def zooadapt_families():
    """The torchvision ResNet family: stem, layer1..layer4, fc."""
    yield Family(
        name="resnet",
        classes=("torchvision.models.resnet.ResNet",),
        head="fc",
        stem="conv1",
        groups={
            "stem": prefix("conv1", "bn1"),
            **{f"layer{i}": prefix(f"layer{i}") for i in range(1, 5)},
            "head": prefix("fc"),
        },
    )
