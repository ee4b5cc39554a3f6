"""Swin Transformer v1 and v2 (torchvision)."""

from zooadapt_plugins._layout import prefix

from zooadapt import Family, hookimpl


@hookimpl
def zooadapt_families():
    """Swin: patch embedding, four stages (each after its patch merging), head."""
    yield Family(
        name="swin",
        classes=("torchvision.models.swin_transformer.SwinTransformer",),
        head="head",
        stem="features.0.0",
        groups={
            "stem": prefix("features.0"),
            "stage1": prefix("features.1"),
            "stage2": prefix("features.2", "features.3"),
            "stage3": prefix("features.4", "features.5"),
            "stage4": prefix("features.6", "features.7", "norm"),
            "head": prefix("head"),
        },
        # Shifted-window attention reads attn.qkv.weight and attn.proj.weight
        # functionally: zooadapt's LoRA Linear gives them as adapted weights.
        roles={
            "qkv": r"features\.\d+\.\d+\.attn\.qkv",
            "attn_out": r"features\.\d+\.\d+\.attn\.proj",
            "mlp": r"features\.\d+\.\d+\.mlp\.[03]",
        },
    )
