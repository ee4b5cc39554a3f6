"""Every timm architecture, on the meta device: shape, freeze groups, freezing.

``adapt("timm/<arch>", num_classes=10, in_chans=1)`` must give ``(2, 10)`` on the model's
default input size. The architectures in ``CANNOT`` are turned into a clear error instead,
for the reason given (also listed in the README's timm section).
"""

from __future__ import annotations

import pytest
import timm
import torch

import zooadapt as za
from zooadapt.saving import describe_adapted

ARCHS = timm.list_models()

NO_HEAD = "has no classifier head"
NO_STEM = "has no input layer that zooadapt can adapt"
#: Architecture -> (argument that cannot be honoured, error it raises). The ``_enc``
#: models are feature encoders for which timm defines no classifier (timm's own
#: ``create_model(num_classes=10)`` returns their features unchanged); CSATv2 reads the
#: image through a fixed RGB -> YCbCr DCT transform, not a convolution.
CANNOT = {
    "csatv2": ("in_chans", NO_STEM),
    "csatv2_21m": ("in_chans", NO_STEM),
    "deepseek_vit_412m_enc": ("num_classes", NO_HEAD),
    "gemma4_vit_167m_enc": ("num_classes", NO_HEAD),
    "gemma4_vit_570m_enc": ("num_classes", NO_HEAD),
    "mobilenetv5_300m_enc": ("num_classes", NO_HEAD),
    "qwen3_vit_88m_enc": ("num_classes", NO_HEAD),
    "qwen3_vit_306m_enc": ("num_classes", NO_HEAD),
    "qwen3_vit_416m_enc": ("num_classes", NO_HEAD),
}
REQUEST = {"num_classes": 10, "in_chans": 1}


def test_every_timm_architecture_is_listed():
    assert len(ARCHS) > 1300
    assert za.list_models("timm/*") == [f"timm/{a}" for a in sorted(ARCHS)]
    assert set(CANNOT) <= set(ARCHS)


def _head_params(model, anatomy):
    return {
        f"{path}.{name}"
        for path in anatomy.head
        for name, _ in model.get_submodule(path).named_parameters()
    }


def _adapt(arch, **request):
    return za.adapt(f"timm/{arch}", pretrained=False, device="meta", **request)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapt_forward_groups_and_freeze_on_meta(arch):
    request = dict(REQUEST)
    if arch in CANNOT:
        argument, message = CANNOT[arch]
        with pytest.raises(za.AdaptError, match=message):
            _adapt(arch, **request)
        del request[argument]
    model = _adapt(arch, **request)
    anatomy = za.anatomy(model)
    channels = request.get("in_chans", 3)
    assert anatomy.in_chans == (channels if anatomy.stems else None)
    assert anatomy.input_size == tuple(model.pretrained_cfg["input_size"][1:])
    out = model.eval()(torch.empty(anatomy.input_shape(2), device="meta"))
    if "num_classes" in request:
        assert out.shape == (2, 10) and anatomy.num_classes == 10

    assert anatomy.family.startswith("timm")
    grouped = [name for names in anatomy.groups.values() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    assert list(anatomy.groups)[-1] == "head"
    head = _head_params(model, anatomy)
    assert set(anatomy.groups["head"]) == head
    assert bool(head) == ("num_classes" in request)

    za.freeze(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head

    # What za.save records (classes, channels through the stem layout) rebuilds the model.
    info = describe_adapted(model)
    rebuilt = _adapt(
        arch, num_classes=info["num_classes"], in_chans=info["in_chans"], **info["model_kwargs"]
    )
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert {name: p.shape for name, p in rebuilt.named_parameters()} == shapes
