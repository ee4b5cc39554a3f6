"""Pretrained torchvision weights from the local cache, with the real MobileNetV2 file."""

from __future__ import annotations

import torch

import zooadapt as za


def test_tag_loads_the_real_imagenet_weights(cached_mobilenet, offline):
    model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    reference = torch.load(cached_mobilenet, weights_only=True)
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key


def test_adapting_the_real_weights_reuses_them(cached_mobilenet, offline):
    model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", num_classes=10, in_chans=1)
    reference = torch.load(cached_mobilenet, weights_only=True)
    state = model.state_dict()
    stem = "features.0.0.weight"
    assert torch.equal(state[stem], reference[stem].sum(dim=1, keepdim=True))
    assert state["classifier.1.weight"].shape == (10, 1280)
    untouched = [k for k in reference if k != stem and not k.startswith("classifier.")]
    assert len(untouched) > 300
    assert all(torch.equal(state[k], reference[k]) for k in untouched)


def test_timm_style_tag_in_the_name(cached_mobilenet, offline):
    model = za.adapt("torchvision/mobilenet_v2.IMAGENET1K_V1", num_classes=3)
    reference = torch.load(cached_mobilenet, weights_only=True)
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])


def test_default_weights_missing_offline_name_file_url_and_cached_alternative(
    cached_mobilenet, offline
):
    try:
        za.adapt("mobilenet_v2", pretrained=True)
    except za.WeightsNotAvailableError as err:
        message = str(err)
    else:
        raise AssertionError("pretrained=True must fail: IMAGENET1K_V2 is not cached")
    assert "'IMAGENET1K_V2'" in message
    assert "mobilenet_v2-7ebf99e0.pth" in message
    assert "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth" in message
    assert "7ebf99e0" in message
    assert str(cached_mobilenet.parent) in message
    assert "pretrained='IMAGENET1K_V1'" in message


def test_unknown_tag_lists_known_tags(hub_dir, offline):
    try:
        za.adapt("mobilenet_v2", pretrained="IMAGENET9K")
    except za.WeightsNotAvailableError as err:
        assert "IMAGENET1K_V1" in str(err) and "IMAGENET1K_V2" in str(err)
    else:
        raise AssertionError("an unknown tag must fail")


def test_corrupt_cached_file_fails_its_sha256_check(cached_mobilenet, offline):
    data = bytearray(cached_mobilenet.read_bytes())
    data[-100] ^= 0xFF
    cached_mobilenet.write_bytes(bytes(data))
    try:
        za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    except za.CheckpointError as err:
        assert "b0353104" in str(err) and cached_mobilenet.name in str(err)
    else:
        raise AssertionError("a corrupt file must be rejected")


def test_local_file_path_loads_the_same_weights(real_mobilenet_file):
    model = za.adapt("mobilenet_v2", pretrained=real_mobilenet_file, num_classes=5)
    reference = torch.load(real_mobilenet_file, weights_only=True)
    assert torch.equal(model.features[3].conv[0][0].weight, reference["features.3.conv.0.0.weight"])
    assert model.classifier[1].out_features == 5
