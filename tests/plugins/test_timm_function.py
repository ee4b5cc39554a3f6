"""Function preservation on real forward passes, one small model per major timm family.

Each model is built by ``za.adapt("timm/<arch>", pretrained=<checkpoint>)`` from a saved
randomly initialised timm model, through zooadapt's loader, and compared with that model
in float64 (see ``test_torchvision_function.py`` for the tolerance).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import zooadapt as za

#: family -> (representative architecture, input side)
REPRESENTATIVES = {
    "resnet": ("resnet18", 64),
    "convnext": ("convnext_atto", 64),
    "convnextv2": ("convnextv2_atto", 64),
    "efficientnet": ("efficientnet_b0", 64),
    "mobilenetv3": ("mobilenetv3_small_050", 64),
    "mobilenetv4": ("mobilenetv4_conv_small", 64),
    "regnet": ("regnetx_002", 64),
    "vit": ("vit_tiny_patch16_224", 224),
    "deit (distilled, two heads)": ("deit_tiny_distilled_patch16_224", 224),
    "swin": ("swin_tiny_patch4_window7_224", 224),
    "eva": ("eva02_tiny_patch14_224", 224),
    "coatnet": ("coatnet_nano_rw_224", 224),
    "maxvit": ("maxxvit_rmlp_nano_rw_256", 256),
    "fastvit (two stem branches)": ("fastvit_t8", 64),
    "hybrid resnet-vit": ("vit_small_resnet26d_224", 224),
    "mobilevit (hybrid)": ("mobilevit_xxs", 64),
    "tresnet (space-to-depth stem)": ("tresnet_m", 64),
    "crossvit (two patch embeddings)": ("crossvit_tiny_240", 240),
}
FAMILIES = sorted(REPRESENTATIVES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Lazily save one random checkpoint per architecture (safetensors and .pth alternate)."""
    made: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(arch: str) -> tuple[torch.nn.Module, Path]:
        if arch not in made:
            torch.manual_seed(0)
            original = timm.create_model(arch).eval()
            folder = tmp_path_factory.mktemp(arch)
            state = {k: v.contiguous() for k, v in original.state_dict().items()}
            if len(made) % 2:
                path = folder / "model.safetensors"
                save_file(state, path)
            else:
                path = folder / "model.pth"
                torch.save(state, path)
            made[arch] = (original.double(), path)
        return made[arch]

    return get


def _image(channels: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, channels, size, size, dtype=torch.float64, generator=generator)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_channel_sum_gives_the_logits_of_the_gray_image_replicated(
    family, checkpoints, logits, assert_same_logits, normalise, equal_means
):
    """On normalised input: the gray channel's statistics are folded into the stem(s)."""
    arch, size = REPRESENTATIVES[family]
    original, path = checkpoints(arch)
    model = za.adapt(f"timm/{arch}", pretrained=path, **equal_means)  # what the weights expect
    za.adapt(model, in_chans=1)
    assert za.anatomy(model).family.startswith("timm")
    config = za.data_config(model)
    assert config.mean == (0.45,) and config.std == pytest.approx((0.25,))
    gray = _image(1, size, seed=1)
    expected = logits(original, normalise(gray.expand(-1, 3, -1, -1), **equal_means))
    assert_same_logits(logits(model, normalise(gray, config.mean, config.std)), expected)


def test_one_channel_sum_with_timms_statistics_is_exact_inside_every_conv_stem(
    checkpoints, normalise
):
    """timm's own (ImageNet) means differ: the offsets become a bias, exact without padding."""
    checked = []
    for family in FAMILIES:
        arch, size = REPRESENTATIVES[family]
        original, path = checkpoints(arch)
        model = za.adapt(f"timm/{arch}", in_chans=1, pretrained=path)  # folded by the loader
        before, after = za.data_config(original), za.data_config(model)
        if len(set(before.mean)) == 1:
            continue  # equal means: nothing to fold into a bias (the test above)
        for stem in za.anatomy(model).stems:
            layers = [copy.deepcopy(m.get_submodule(stem)).float() for m in (original, model)]
            if not isinstance(layers[0], torch.nn.Conv2d) or layers[0].groups != 1:
                continue
            for layer in layers:
                layer.padding = (0, 0)
            gray = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(3))
            with torch.no_grad():
                want = layers[0](normalise(gray.expand(-1, 3, -1, -1), before.mean, before.std))
                got = layers[1](normalise(gray, after.mean, after.std))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"{family} {stem}")
            assert layers[1].bias is not None, family
            checked.append(family)
    assert len(set(checked)) >= 8, checked


@pytest.mark.parametrize("family", FAMILIES)
def test_four_channels_zeros_gives_the_logits_of_the_first_three(
    family, checkpoints, logits, assert_same_logits
):
    arch, size = REPRESENTATIVES[family]
    original, path = checkpoints(arch)
    model = za.adapt(f"timm/{arch}", in_chans=4, stem_init="zeros", pretrained=path)
    image = _image(4, size, seed=2)
    assert_same_logits(logits(model, image), logits(original, image[:, :3]))


@pytest.mark.parametrize("family", FAMILIES)
def test_new_head_leaves_every_other_tensor_bit_identical(family, checkpoints, logits):
    arch, size = REPRESENTATIVES[family]
    _, path = checkpoints(arch)
    saved = za.read_state_dict(path)
    model = za.adapt(f"timm/{arch}", num_classes=7, pretrained=path)
    anatomy = za.anatomy(model)
    head_keys = {k for k in model.state_dict() if any(k.startswith(h + ".") for h in anatomy.head)}
    assert head_keys
    kept = {k: v for k, v in model.state_dict().items() if k not in head_keys}
    assert set(kept) == set(saved) - head_keys
    for key, tensor in kept.items():
        assert torch.equal(tensor, saved[key]), key
    assert logits(model, _image(3, size, seed=3)).shape == (2, 7)
