"""GoogLeNet and Inception v3 (torchvision), with their auxiliary heads.

Both may normalise RGB input themselves (``transform_input``, on for pretrained
weights); that transform is RGB-only, so it is switched off when ``in_chans`` changes.
"""

from zooadapt_plugins._layout import either, prefix

from zooadapt import Family, hookimpl

NON_RGB = {"transform_input": False}


def _googlenet_groups(model):
    aux = [name for name in ("aux1", "aux2") if getattr(model, name, None) is not None]
    groups = [
        ("stem", prefix("conv1", "conv2", "conv3")),
        ("inception3", r"^inception3[ab]\."),
        ("inception4", r"^inception4[a-e]\."),
        ("inception5", r"^inception5[ab]\."),
    ]
    if aux:
        groups.append(("aux", prefix(*(f"{a}.{m}" for a in aux for m in ("conv", "fc1")))))
    groups.append(("head", prefix("fc", *(f"{a}.fc2" for a in aux))))
    return groups


def _inception3_groups(model):
    has_aux = getattr(model, "AuxLogits", None) is not None
    groups = [
        ("stem", r"^Conv2d_"),
        ("mixed5", r"^Mixed_5"),
        ("mixed6", r"^Mixed_6"),
        ("mixed7", r"^Mixed_7"),
    ]
    if has_aux:
        groups.append(("aux", r"^AuxLogits\.(?!fc\.)"))
    groups.append(
        ("head", either(prefix("fc"), prefix("AuxLogits.fc")) if has_aux else prefix("fc"))
    )
    return groups


@hookimpl
def zooadapt_families():
    """GoogLeNet and Inception v3: stages by inception level, aux branches, heads."""
    yield Family(
        name="googlenet",
        classes=("torchvision.models.googlenet.GoogLeNet",),
        head="fc",
        aux_heads=("aux1.fc2", "aux2.fc2"),
        stem="conv1.conv",
        groups=_googlenet_groups,
        stem_overrides=NON_RGB,
    )
    yield Family(
        name="inception_v3",
        classes=("torchvision.models.inception.Inception3",),
        head="fc",
        aux_heads=("AuxLogits.fc",),
        stem="Conv2d_1a_3x3.conv",
        groups=_inception3_groups,
        stem_overrides=NON_RGB,
        input_size=(299, 299),
    )
