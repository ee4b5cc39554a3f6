"""RegNet X and Y (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


@hookimpl
def zooadapt_families():
    """RegNet: stem, block1..block4, head."""
    yield Family(
        name="regnet",
        classes=("torchvision.models.regnet.RegNet",),
        head="fc",
        stem="stem.0",
        groups={
            "stem": prefix("stem"),
            **{f"block{i}": prefix(f"trunk_output.block{i}") for i in range(1, 5)},
            "head": prefix("fc"),
        },
    )
