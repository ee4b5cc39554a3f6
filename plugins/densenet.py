"""DenseNet 121/161/169/201 (torchvision), with its legacy checkpoint keys."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, RenameRule, hookimpl

#: Checkpoints saved before torchvision 0.3 name ``norm1`` as ``norm.1`` (and so on);
#: torchvision's own loader applies the same rewrite.
LEGACY_KEYS = RenameRule(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$",
    r"\1\2",
    name="densenet legacy 'norm.1' -> 'norm1'",
)


@hookimpl
def zooadapt_families():
    """DenseNet: stem, one group per dense block (with its transition), head."""
    yield Family(
        name="densenet",
        classes=("torchvision.models.densenet.DenseNet",),
        head="classifier",
        stem="features.conv0",
        groups={
            "stem": prefix("features.conv0", "features.norm0"),
            "block1": prefix("features.denseblock1", "features.transition1"),
            "block2": prefix("features.denseblock2", "features.transition2"),
            "block3": prefix("features.denseblock3", "features.transition3"),
            "block4": prefix("features.denseblock4", "features.norm5"),
            "head": prefix("classifier"),
        },
        rename_rules=(LEGACY_KEYS,),
    )
