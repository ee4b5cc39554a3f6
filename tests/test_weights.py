"""Pretrained torchvision weights from the local cache, with the real MobileNetV2 file."""

from __future__ import annotations

import pytest
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
    # "sum" folds the per-channel ImageNet statistics: filters in pixel units, summed,
    # times the gray channel's std; the mean offsets become the stem's bias.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixel = reference[stem] / std
    torch.testing.assert_close(state[stem], pixel.sum(1, keepdim=True) * std.mean())
    offset = (pixel.sum(1) * mean.mean() - (pixel * mean).sum(1)).sum((1, 2))
    torch.testing.assert_close(state["features.0.0.bias"], offset)
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
    with pytest.raises(za.WeightsNotAvailableError) as info:
        za.adapt("mobilenet_v2", pretrained=True)
    message = str(info.value)
    assert "'IMAGENET1K_V2'" in message
    assert "mobilenet_v2-7ebf99e0.pth" in message
    assert "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth" in message
    assert "7ebf99e0" in message
    assert str(cached_mobilenet.parent) in message
    assert "pretrained='IMAGENET1K_V1'" in message


def test_unknown_tag_lists_known_tags(hub_dir, offline):
    with pytest.raises(za.WeightsNotAvailableError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        za.adapt("mobilenet_v2", pretrained="IMAGENET9K")


def test_corrupt_cached_file_fails_its_sha256_check(cached_mobilenet, offline):
    data = bytearray(cached_mobilenet.read_bytes())
    data[-100] ^= 0xFF
    cached_mobilenet.write_bytes(bytes(data))
    with pytest.raises(za.CheckpointError, match=f"{cached_mobilenet.name}.*b0353104"):
        za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")


def test_local_file_path_loads_the_same_weights(real_mobilenet_file):
    model = za.adapt("mobilenet_v2", pretrained=real_mobilenet_file, num_classes=5)
    reference = torch.load(real_mobilenet_file, weights_only=True)
    assert torch.equal(model.features[3].conv[0][0].weight, reference["features.3.conv.0.0.weight"])
    assert model.classifier[1].out_features == 5


def test_zoo_weights_skip_random_init(cached_mobilenet, offline, real_inits):
    model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", num_classes=4)
    assert real_inits == []  # no kaiming_normal_ on real tensors
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def test_builder_settings_for_pretrained_weights_apply(hub_dir, offline, monkeypatch):
    """GoogLeNet's builder turns on transform_input and drops the aux heads it loaded."""
    import torchvision

    from zooadapt._core import pretrained as weights_module

    torch.manual_seed(0)
    source = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    file = hub_dir / "checkpoints" / "googlenet-1378be20.pth"
    torch.save(source.state_dict(), file)
    monkeypatch.setattr(weights_module, "verify_sha256", lambda path, expected: None)
    model = za.adapt("googlenet", pretrained="IMAGENET1K_V1", num_classes=3)
    assert model.transform_input is True and model.aux1 is None and model.aux2 is None
    assert za.anatomy(model).head == ("fc",)
    assert torch.equal(
        model.inception5b.branch1.conv.weight, source.inception5b.branch1.conv.weight
    )
    gray = za.adapt("googlenet", pretrained="IMAGENET1K_V1", in_chans=1)
    assert gray.transform_input is False


def test_unreachable_weights_fail_at_once_without_trying_to_download(tmp_path, monkeypatch):
    """No network: one connection attempt (here to a closed loopback port), no retries."""
    import time

    from torch import nn

    monkeypatch.delenv("ZOOADAPT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def download():
        raise AssertionError("no download may be attempted")

    weights = za.Weights(
        model="localzoo/net",
        tag="w",
        url="http://127.0.0.1:9/net-w.pth",
        file=tmp_path / "net-w.pth",
        default=True,
        download=download,
    )

    class LocalZoo:
        @za.hookimpl
        def zooadapt_zoos(self):
            yield za.Zoo(
                name="localzoo",
                models=lambda: ["net"],
                build=lambda arch, weights: nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()),
                weights=lambda arch: [weights],
            )

    pm = za.make_plugin_manager(LocalZoo())
    start = time.monotonic()
    with pytest.raises(za.WeightsNotAvailableError, match="no network: cannot reach 127.0.0.1:9"):
        za.adapt("localzoo/net", plugin_manager=pm)
    assert time.monotonic() - start < 5
