"""Every torchvision classification model, on the meta device (no memory, no weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import zooadapt as za
from zooadapt.saving import describe_adapted

ARCHS = torchvision.models.list_models(module=torchvision.models)


def test_all_80_classification_models_are_listed():
    assert len(ARCHS) == 80
    assert za.list_models("torchvision/*") == [f"torchvision/{a}" for a in sorted(ARCHS)]


def _outputs(out):
    return [out] if isinstance(out, torch.Tensor) else [o for o in out if o is not None]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapt_anatomy_and_forward_on_meta(arch):
    for in_chans in (1, 4):
        model = za.adapt(arch, num_classes=7, in_chans=in_chans, pretrained=False, device="meta")
        anatomy = za.anatomy(model)
        assert anatomy.family != "generic", "every torchvision model has a dedicated family"
        assert (anatomy.num_classes, anatomy.in_chans, anatomy.spatial_dims) == (7, in_chans, 2)
        size = anatomy.input_size[0]
        assert anatomy.input_size == ((299, 299) if arch == "inception_v3" else (224, 224))

        stem = model.get_submodule(anatomy.stem)
        assert stem.weight.shape[1] == in_chans
        for path in anatomy.head:
            assert model.get_submodule(path).weight.shape[0] == 7

        grouped = [name for names in anatomy.groups.values() for name in names]
        assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
        assert all(anatomy.groups.values()), "no empty group"
        assert list(anatomy.groups)[-1] == "head"
        head_params = {
            f"{path}.{name}"
            for path in anatomy.head
            for name, _ in model.get_submodule(path).named_parameters()
        }
        assert head_params == set(anatomy.groups["head"])

        model.train()
        outputs = _outputs(model(torch.empty(2, in_chans, size, size, device="meta")))
        assert [o.shape for o in outputs] == [(2, 7)] * len(anatomy.head), "aux outputs too"


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_description_rebuilds_the_same_model_and_memory_is_estimated(arch):
    """What ``za.save`` records rebuilds the same shapes; the estimator reads the anatomy."""
    model = za.adapt(arch, num_classes=7, in_chans=4, pretrained=False, device="meta")
    info = describe_adapted(model)
    assert (info["model"], info["num_classes"], info["in_chans"]) == (f"torchvision/{arch}", 7, 4)
    rebuilt = za.adapt(
        info["model"],
        num_classes=info["num_classes"],
        in_chans=info["in_chans"],
        pretrained=False,
        device="meta",
        **info["model_kwargs"],
    )
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert {name: p.shape for name, p in rebuilt.named_parameters()} == shapes
    estimate = za.estimate_memory(model, batch_size=2, freeze="backbone")
    assert (estimate.in_chans, estimate.input_size) == (4, za.anatomy(model).input_size)
    assert estimate.activations > 0 and estimate.trainable_params < estimate.total_params
