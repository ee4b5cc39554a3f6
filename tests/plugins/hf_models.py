"""Tiny random-config Hugging Face classifiers, shared by the ``hf`` tests."""

from __future__ import annotations

import torch
import transformers

NAMES = {0: "cat", 1: "dog", 2: "owl", 3: "fox"}


def tiny_vit() -> torch.nn.Module:
    """A two-layer ViT for 32-pixel images, four named classes, seeded."""
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=4, id2label=NAMES,
        label2id={v: k for k, v in NAMES.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def tiny_resnet() -> torch.nn.Module:
    """A two-stage ResNet, four named classes, seeded."""
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4, id2label=NAMES
    )
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(config).eval()
