"""The names of LoRA adapter tensors: what PEFT adds, and what it wraps."""

from __future__ import annotations

import re

__all__ = ["ADAPTER", "is_adapter", "lora_base_name"]

#: Parameters PEFT adds, by name.
ADAPTER = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict name is a LoRA adapter tensor's."""
    return ADAPTER.search(name) is not None


def lora_base_name(name: str) -> str:
    """A tensor's name without PEFT's ``.base_layer``: its name before :func:`zooadapt.lora`."""
    return name.replace(".base_layer", "")
