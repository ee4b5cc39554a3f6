"""Vision Transformer B/L/H (torchvision)."""

from torch import nn
from zooadapt_plugins._layout import either, exact, prefix

from zooadapt import Family, hookimpl


def _groups(model):
    layers = [name for name, _ in model.encoder.layers.named_children()]
    blocks = [(f"block{i}", prefix(f"encoder.layers.{name}")) for i, name in enumerate(layers)]
    last_name, last_pattern = blocks[-1]
    blocks[-1] = (last_name, either(last_pattern, prefix("encoder.ln")))
    groups = [
        ("stem", either(prefix("conv_proj"), exact("class_token", "encoder.pos_embedding"))),
        *blocks,
    ]
    if hasattr(model.heads, "pre_logits"):
        groups.append(("pre_logits", prefix("heads.pre_logits")))
    groups.append(("head", prefix("heads.head")))
    return groups


def _stem(model):
    """The patch convolution, or the first convolution of a conv stem (``conv_stem_configs``)."""
    if isinstance(model.conv_proj, nn.Conv2d):
        return "conv_proj"
    return next(
        f"conv_proj.{name}"
        for name, module in model.conv_proj.named_modules()
        if isinstance(module, nn.Conv2d)
    )


#: ``nn.MultiheadAttention`` computes q, k, v and its output projection functionally, so
#: ``qkv`` is the attention module itself (PEFT adapts its ``in_proj`` and ``out_proj``);
#: an adapter on ``out_proj`` alone would never receive a gradient, so there is no
#: ``attn_out`` role.
ROLES = {
    "qkv": r"encoder\.layers\.encoder_layer_\d+\.self_attention",
    "mlp": r"encoder\.layers\.encoder_layer_\d+\.mlp\.[03]",
}


@hookimpl
def zooadapt_families():
    """ViT: patch embedding with tokens, one group per encoder block, head."""
    yield Family(
        name="vit",
        classes=("torchvision.models.vision_transformer.VisionTransformer",),
        head="heads.head",
        stem=_stem,
        groups=_groups,
        input_size=lambda model: (model.image_size, model.image_size),
        roles=ROLES,
    )
