"""Hugging Face classifiers through the same core, on real forward passes of tiny models.

The models are built from tiny random configs (no download, no hub). Logits are compared
in float64 as in ``test_torchvision_function.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import zooadapt as za
from zooadapt.memory import measure_step

transformers = pytest.importorskip("transformers")
from hf_models import tiny_resnet, tiny_vit  # noqa: E402


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.double().eval()(pixel_values=x).logits


BUILDERS = {"vit": tiny_vit, "resnet": tiny_resnet}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_sum_reuses_the_pretrained_filters_on_normalised_input(
    kind, assert_same_logits, normalise, equal_means
):
    original = BUILDERS[kind]()
    model = za.adapt(copy.deepcopy(original), **equal_means)  # the weights' statistics
    za.adapt(model, in_chans=1)
    config = za.data_config(model)
    gray = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = hf_logits(original, normalise(gray.expand(-1, 3, -1, -1), **equal_means))
    assert_same_logits(hf_logits(model, normalise(gray, config.mean, config.std)), expected)
    assert model.config.num_channels == 1


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_zeros_and_repeat_keep_the_rgb_logits(kind, assert_same_logits):
    original = BUILDERS[kind]()
    image = torch.rand(
        2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    expected = hf_logits(original, image)
    four = za.adapt(copy.deepcopy(original), in_chans=4, stem_init="zeros")
    assert_same_logits(
        hf_logits(four, torch.cat([image, torch.rand_like(image[:, :1])], 1)), expected
    )
    six = za.adapt(copy.deepcopy(original), in_chans=6, stem_init="repeat")
    assert_same_logits(hf_logits(six, image.repeat(1, 2, 1, 1)), expected)
    mapped = za.adapt(copy.deepcopy(original), in_chans=3, stem_init=[2, 1, 0])
    assert_same_logits(hf_logits(mapped, image.flip(1)), expected)  # BGR input


def test_classes_keep_pretrained_rows_through_id2label():
    original = tiny_vit()
    model = za.adapt(copy.deepcopy(original), classes=["owl", 0, "newt"])
    assert za.labels(model) == ("owl", "cat", "newt")
    assert model.config.id2label == {0: "owl", 1: "cat", 2: "newt"}
    assert model.config.label2id == {"owl": 0, "cat": 1, "newt": 2}
    assert torch.equal(model.classifier.weight[:2], original.classifier.weight[[2, 0]])
    out = model(pixel_values=torch.rand(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.isfinite()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_adapting_one_model_leaves_the_config_it_shares_with_another(kind):
    """transformers gives every model built from one config that same object."""
    first = BUILDERS[kind]()
    config = first.config
    second = type(first)(config)
    before = config.to_dict()
    za.adapt(first, num_classes=2, in_chans=1)
    assert config.to_dict() == before and second.config is config
    assert (first.config.num_labels, first.config.num_channels) == (2, 1)
    owners = [m for m in first.modules() if hasattr(m, "config")]
    assert len(owners) > 1 and all(m.config is first.config for m in owners)
    with pytest.raises(za.AdaptError, match="in_chans"):  # a refused change copies nothing
        za.adapt(second, in_chans=0)
    assert second.config is config


def test_frozen_tensors_stay_bit_identical_through_a_step():
    model = za.adapt(tiny_resnet(), num_classes=3, in_chans=1, freeze="backbone")
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = za.optimizer(model, "adamw", lr=1e-2)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.classifier.parameters()
    }
    model.train()
    loss = model(pixel_values=torch.rand(4, 1, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(params[n], t) for n, t in frozen.items())
    assert all(torch.equal(dict(model.named_buffers())[n], b) for n, b in buffers.items())


def test_save_pretrained_round_trips_an_adapted_model(tmp_path: Path):
    model = za.adapt(tiny_vit(), in_chans=1, classes=["owl", "newt"])
    model.save_pretrained(tmp_path / "gray")
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "gray")
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(hf_logits(loaded, x), hf_logits(model, x), rtol=0, atol=0)
    assert loaded.config.id2label == {0: "owl", 1: "newt"} and za.labels(loaded) == ("owl", "newt")


def test_the_memory_estimate_equals_a_measured_cpu_step():
    model = za.adapt(tiny_vit(), num_classes=3, in_chans=1)
    estimate = za.estimate_memory(model, batch_size=2, input_size=32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    measured = measure_step(model, torch.rand(2, 1, 32, 32), optimizer)
    fields = ("params", "grads", "optimizer_state", "activations")
    assert {f: getattr(measured, f) for f in fields} == {f: getattr(estimate, f) for f in fields}


def test_a_feature_cache_head_gives_the_models_logits():
    model = za.adapt(tiny_resnet(), num_classes=3, freeze="backbone")
    loader = [(torch.rand(4, 3, 32, 32), torch.arange(4) % 3) for _ in range(2)]
    cache = za.FeatureCache(model, loader)
    features, _ = cache.tensors()
    with torch.no_grad():
        expected = model.eval()(pixel_values=torch.cat([x for x, _ in loader])).logits
        torch.testing.assert_close(cache.classifier(model)(features), expected)
