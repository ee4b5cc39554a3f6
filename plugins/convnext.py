"""ConvNeXt tiny/small/base/large (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


@hookimpl
def zooadapt_families():
    """ConvNeXt: stem, four stages (each after its downsampling layer), head."""
    yield Family(
        name="convnext",
        classes=("torchvision.models.convnext.ConvNeXt",),
        head="classifier.2",
        stem="features.0.0",
        groups={
            "stem": prefix("features.0"),
            "stage1": prefix("features.1"),
            "stage2": prefix("features.2", "features.3"),
            "stage3": prefix("features.4", "features.5"),
            "stage4": prefix("features.6", "features.7", "classifier.0"),
            "head": prefix("classifier.2"),
        },
    )
