"""Function preservation on real forward passes, one representative model per family.

Each model is built from a checkpoint of a randomly initialised torchvision model and
compared with that model in float64. The adapted stem is computed in float32, so logits
agree to about 1e-7; a wrongly reused weight would change them by orders of magnitude more.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision

import zooadapt as za

#: family -> (representative architecture, smallest input side it accepts)
REPRESENTATIVES = {
    "alexnet": ("alexnet", 64),
    "convnext": ("convnext_tiny", 32),
    "densenet": ("densenet121", 32),
    "efficientnet": ("efficientnet_b0", 32),
    "googlenet": ("googlenet", 32),
    "inception_v3": ("inception_v3", 75),
    "maxvit": ("maxvit_t", 224),
    "mnasnet": ("mnasnet0_5", 32),
    "mobilenet_v2": ("mobilenet_v2", 32),
    "mobilenet_v3": ("mobilenet_v3_small", 32),
    "regnet": ("regnet_x_400mf", 32),
    "resnet": ("resnet18", 32),
    "shufflenet_v2": ("shufflenet_v2_x0_5", 32),
    "squeezenet": ("squeezenet1_1", 48),
    "swin": ("swin_t", 32),
    "vgg": ("vgg11_bn", 32),
    "vit": ("vit_b_32", 224),
}


def test_every_torchvision_family_has_a_representative():
    families = {
        za.anatomy(za.adapt(a, pretrained=False, device="meta")).family
        for a in torchvision.models.list_models(module=torchvision.models)
    }
    assert families == set(REPRESENTATIVES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Lazily save one random checkpoint per architecture."""
    made: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(arch: str) -> tuple[torch.nn.Module, Path]:
        if arch not in made:
            torch.manual_seed(0)
            original = torchvision.models.get_model(arch).eval()
            path = tmp_path_factory.mktemp(arch) / f"{arch}.pth"
            torch.save(original.state_dict(), path)
            made[arch] = (original.double(), path)
        return made[arch]

    return get


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_one_channel_sum_gives_the_logits_of_the_gray_image_replicated(
    family, checkpoints, logits, assert_same_logits, normalise, equal_means
):
    """On normalised input: the gray channel's statistics are folded into the stem."""
    arch, size = REPRESENTATIVES[family]
    original, path = checkpoints(arch)
    model = za.adapt(arch, pretrained=path, **equal_means)  # what the weights expect
    za.adapt(model, in_chans=1)
    gray_config = za.data_config(model)
    assert gray_config.mean == (0.45,) and gray_config.std == pytest.approx((0.25,))
    gray = torch.rand(
        2, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    expected = logits(original, normalise(gray.expand(-1, 3, -1, -1), **equal_means))
    actual = logits(model, normalise(gray, gray_config.mean, gray_config.std))
    assert_same_logits(actual, expected)


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_one_channel_sum_with_imagenet_statistics_is_exact_inside_the_stem(
    family, checkpoints, normalise
):
    """ImageNet's means differ: the folded offsets are a bias, exact where no padding is read."""
    arch, size = REPRESENTATIVES[family]
    original, path = checkpoints(arch)
    model = za.adapt(arch, in_chans=1, pretrained=path)  # folded by the loader
    before, after = za.data_config(original), za.data_config(model)
    gray = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(3))
    stem = za.anatomy(model).stem
    unpadded = [_unpadded(m.get_submodule(stem)).float() for m in (original, model)]
    with torch.no_grad():
        expected = unpadded[0](normalise(gray.expand(-1, 3, -1, -1), before.mean, before.std))
        actual = unpadded[1](normalise(gray, after.mean, after.std))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert model.get_submodule(stem).bias is not None


def _unpadded(layer: torch.nn.Module) -> torch.nn.Module:
    """A copy of a stem that reads no padding: its output is the interior of the original's."""
    copied = copy.deepcopy(layer)
    if isinstance(copied, torch.nn.Conv2d):
        copied.padding = (0, 0)
    return copied


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_four_channels_zeros_gives_the_logits_of_the_first_three(
    family, checkpoints, logits, assert_same_logits
):
    arch, size = REPRESENTATIVES[family]
    original, path = checkpoints(arch)
    model = za.adapt(arch, in_chans=4, stem_init="zeros", pretrained=path)
    image = torch.rand(
        2, 4, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    expected = logits(original, image[:, :3])
    assert_same_logits(logits(model, image), expected)


@pytest.mark.parametrize("family", sorted(REPRESENTATIVES))
def test_new_head_leaves_every_other_parameter_bit_identical(family, checkpoints):
    arch, _ = REPRESENTATIVES[family]
    _, path = checkpoints(arch)
    saved = torch.load(path, weights_only=True)
    model = za.adapt(arch, num_classes=7, pretrained=path)
    anatomy = za.anatomy(model)
    head_keys = {k for k in model.state_dict() if any(k.startswith(h + ".") for h in anatomy.head)}
    for path_ in anatomy.head:
        assert model.get_submodule(path_).weight.shape[0] == 7
    kept = {k: v for k, v in model.state_dict().items() if k not in head_keys}
    assert kept and set(kept) == set(saved) - head_keys
    for key, tensor in kept.items():
        assert torch.equal(tensor, saved[key]), key
