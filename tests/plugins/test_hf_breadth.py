"""Every class of transformers' image-classification mapping, built from its default config
on the meta device: adapted to 3 classes and 1 channel, frozen, run through its family's
call; or refused with the clear error this table documents."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

import zooadapt as za
from zooadapt._core.calling import caller

transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING  # noqa: E402
from transformers.models.auto.modeling_auto import (  # noqa: E402
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as MAPPING,
)

#: class -> why zooadapt cannot adapt it (the README lists these).
NOT_ADAPTED = {
    "DinatForImageClassification": "needs the natten library",
    "ImageGPTForImageClassification": "reads colour-cluster token ids, not pixels",
    "PerceiverForImageClassificationLearned": "its logits come from a decoder query, no layer",
    "PerceiverForImageClassificationFourier": "its default config does not build",
    "PerceiverForImageClassificationConvProcessing": "its default config does not build",
    "ShieldGemma2ForImageClassification": "a vision-language model scoring two tokens",
    "Siglip2ForImageClassification": "a linear patch embedding over pre-cut patches",
}
if importlib.util.find_spec("natten") is not None:
    NOT_ADAPTED.pop("DinatForImageClassification")
CLASSES = sorted(
    (model_type, name)
    for model_type, names in MAPPING.items()
    for name in ((names,) if isinstance(names, str) else names)
)


def build(model_type: str, name: str) -> torch.nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return getattr(transformers, name)(CONFIG_MAPPING[model_type]())


@pytest.mark.parametrize(("model_type", "name"), CLASSES, ids=[n for _, n in CLASSES])
def test_every_image_classifier_adapts_freezes_and_runs(model_type: str, name: str) -> None:
    if name in NOT_ADAPTED:
        with pytest.raises((za.ZooAdaptError, ImportError, ValueError)):
            za.adapt(build(model_type, name), num_classes=3, in_chans=1)
        return
    model = za.adapt(build(model_type, name), num_classes=3, in_chans=1, freeze="backbone")
    anatomy = za.anatomy(model)
    assert anatomy.family == "hf" and anatomy.num_classes == 3 and anatomy.in_chans == 1
    assert model.config.num_labels == 3
    config = getattr(model.config, "vision_config", model.config)
    assert getattr(config, "num_channels", 1) == 1  # where the config records channels
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(anatomy.groups["head"])
    assert len(anatomy.groups) >= 3  # embeddings, stages or layers, head
    logits = caller(model)(torch.zeros(2, 1, *anatomy.input_size, device="meta"))
    assert logits.shape == (2, 3)


def test_the_breadth_figure() -> None:
    adapted = [n for _, n in CLASSES if n not in NOT_ADAPTED]
    assert len(CLASSES) >= 40 and len(adapted) >= len(CLASSES) - len(NOT_ADAPTED)
