"""MaxViT (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


def _groups(model):
    return [
        ("stem", prefix("stem")),
        *((f"stage{i + 1}", prefix(f"blocks.{i}")) for i in range(len(model.blocks))),
        ("pre_logits", prefix("classifier.2", "classifier.3")),
        ("head", prefix("classifier.5")),
    ]


@hookimpl
def zooadapt_families():
    """MaxViT: stem, one group per stage, pre-logits, head."""
    yield Family(
        name="maxvit",
        classes=("torchvision.models.maxvit.MaxVit",),
        head="classifier.5",
        stem="stem.0.0",
        groups=_groups,
        roles={
            "qkv": r"blocks\.\d+\.layers\.\d+\.layers\.\w+_attention\.attn_layer\.1\.to_qkv",
            "attn_out": r"blocks\.\d+\.layers\.\d+\.layers\.\w+_attention\.attn_layer\.1\.merge",
            "mlp": r"blocks\.\d+\.layers\.\d+\.layers\.\w+_attention\.mlp_layer\.[13]",
            "conv": r"blocks\.\d+\.layers\.\d+\.layers\.MBconv\.layers\.conv_[ac]\.0",
        },
    )
