"""``za.save`` -> ``za.load`` gives the same logits, for every torchvision builder and for a
sample of timm models that covers every special stem and headless default configs.

Each model is adapted (10 classes, 1 input channel) with random weights, saved, and
rebuilt by ``za.load`` from the file's metadata alone; the rebuilt model must be described
the same way (``za.anatomy``) and compute the same logits on its anatomy's input shape.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import zooadapt as za

TORCHVISION = sorted(torchvision.models.list_models(module=torchvision.models))
#: A sample of timm: every folded or linear stem (TResNet's space-to-depth, NaFlexViT's
#: P-P-C patches), parallel stems (FastViT, CrossViT), distillation heads (DeiT, LeViT),
#: headless default configs (EVA-02 encoders, ``num_classes=0`` in ``pretrained_cfg``),
#: hybrids and the common families. Gemma 4's C-P-P stem (167M parameters) is covered on
#: the meta device only, by ``test_timm_breadth.py``.
TIMM = [
    "tresnet_m",
    "naflexvit_base_patch16_gap",
    "fastvit_t8",
    "crossvit_tiny_240",
    "deit_tiny_distilled_patch16_224",
    "levit_128s",
    "eva02_tiny_patch14_224",
    "vit_small_patch14_dinov2",
    "resnet18",
    "resnet50d",
    "convnext_atto",
    "convnextv2_atto",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "mobilenetv4_conv_small",
    "regnetx_002",
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "coatnet_nano_rw_224",
    "maxxvit_rmlp_nano_rw_256",
    "mobilevit_xxs",
    "vit_small_resnet26d_224",
    "edgenext_xx_small",
    "ghostnetv2_100",
    "repvit_m1",
    "efficientvit_b0",
    "tiny_vit_5m_224",
    "poolformer_s12",
    "pit_ti_224",
    "rdnet_tiny",
]


def _logits(model, shape):
    torch.manual_seed(1)
    with torch.no_grad():
        out = model.eval()(torch.rand(shape))
    return out if isinstance(out, torch.Tensor) else out[0]


def _round_trip(name, tmp_path, **adapt_kwargs):
    torch.manual_seed(0)
    model = za.adapt(name, pretrained=False, **adapt_kwargs)
    anatomy = za.anatomy(model)
    path = za.save(model, tmp_path / "model.safetensors")
    loaded = za.load(path)
    path.unlink()  # the loaded tensors stay mapped; the disk space comes back at once
    again = za.anatomy(loaded)
    assert (again.num_classes, again.in_chans, again.input_size, again.head, again.stems) == (
        anatomy.num_classes,
        anatomy.in_chans,
        anatomy.input_size,
        anatomy.head,
        anatomy.stems,
    )
    shape = anatomy.input_shape(1)
    _assert_close(_logits(loaded, shape), _logits(model, shape))
    _check_estimate_and_cache(loaded, anatomy)
    return anatomy


def _assert_close(actual, expected):
    """Equal up to float32 rounding, relative to the largest logit (random weights give
    logits in the thousands, where kernels on differently aligned memory differ in the
    last bits)."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def _check_estimate_and_cache(model, anatomy):
    """The estimator and the feature cache read channels and size from the anatomy."""
    estimate = za.estimate_memory(model, batch_size=2, freeze="backbone")
    assert (estimate.in_chans, estimate.input_size) == (anatomy.in_chans, anatomy.input_size)
    if len(anatomy.head) != 1 or anatomy.num_classes is None:
        return  # a feature cache needs one head
    za.freeze(model)
    torch.manual_seed(2)
    x = torch.rand(anatomy.input_shape(1))
    cache = za.FeatureCache(model, [(x, torch.zeros(1, dtype=torch.long))])
    features, _ = cache.tensors()
    with torch.no_grad():
        _assert_close(cache.classifier(model)(features), model.eval()(x))


@pytest.mark.parametrize("arch", TORCHVISION)
def test_every_torchvision_builder_round_trips(arch, tmp_path):
    anatomy = _round_trip(arch, tmp_path, num_classes=10, in_chans=1)
    assert (anatomy.num_classes, anatomy.in_chans) == (10, 1)


def test_the_timm_sample_has_thirty_models_and_every_special_stem():
    assert len(TIMM) == 30
    families = {
        za.anatomy(za.adapt(f"timm/{a}", pretrained=False, device="meta")).family for a in TIMM
    }
    assert {"timm.tresnet", "timm.naflexvit", "timm.levitdistilled"} <= families


@pytest.mark.parametrize("arch", TIMM)
def test_timm_sample_round_trips(arch, tmp_path):
    headless = arch.startswith("eva02") or arch.startswith("vit_small_patch14_dinov2")
    kwargs = {} if headless else {"num_classes": 10}
    anatomy = _round_trip(f"timm/{arch}", tmp_path, in_chans=1, **kwargs)
    assert anatomy.in_chans == 1
    assert anatomy.num_classes == (None if headless else 10)
