"""LoRA layers for weights that a module reads functionally, never written in place.

Some modules read their projection weights as tensors instead of calling a layer:
torchvision's Swin passes ``attn.qkv.weight`` and ``attn.proj.weight`` to a function,
so a LoRA ``Linear`` whose ``forward`` adds the update is never called there.
:class:`Linear` is PEFT's layer whose ``weight`` includes the update, so a reader of the
weight gets the adapted one (and its gradient reaches the adapter).

``nn.MultiheadAttention`` reads ``in_proj_weight`` and ``out_proj.weight`` functionally,
so an adapter cannot hook a ``forward``. PEFT's layer adds the update into those frozen
tensors before each forward and subtracts it after: float rounding makes them drift
(5e-8 after 20 steps on a small ViT), and the rebuilt weights are allocations that a
meta-device memory count does not follow. PEFT 0.21's ``merge`` also adds the output
projection's update twice (peft#3774), so its forward computes ``W + 2 s B A`` there.
This layer keeps PEFT's structure (its keys, unloading) but runs the base module with
``weight + update`` passed through :func:`torch.func.functional_call`, out of place, and
merges each update once. Its parameters stay the same objects: PEFT's layer registers
new ones on every ``state_dict()`` and ``modules()`` call, behind an optimizer's back.
Imported only when PEFT is installed.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLinear
from peft.tuners.lora.layer import MultiheadAttention as PeftMultiheadAttention
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch.func import functional_call

__all__ = ["Linear", "MultiheadAttention"]


class Linear(PeftLinear):
    """PEFT's ``nn.Linear`` LoRA layer whose ``weight`` is the adapted weight.

    ``forward`` is PEFT's (``base(x) + s B A x``, with dropout). Reading ``weight``
    gives ``W + s B A`` while adapters are active and unmerged, else the base weight.
    """

    @property
    def weight(self) -> torch.Tensor:
        """The base weight plus each active adapter's update."""
        weight = self.get_base_layer().weight
        if self.disable_adapters or self.merged:
            return weight
        return _adapted(self, weight)


class MultiheadAttention(PeftMultiheadAttention):
    """PEFT's ``nn.MultiheadAttention`` LoRA layer, computing out of place.

    Like PEFT's, the update is applied to the weights, not to the input, so ``dropout``
    does not apply to it.
    """

    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The base attention with each active adapter's update added to its weights."""
        if self.disable_adapters or self.merged:
            return super().forward(query, *args, **kwargs)
        self._check_forward_args(query, *args, **kwargs)
        base = self.get_base_layer()
        out_proj = base.out_proj  # PEFT's Linear around the output projection
        weights = {
            "in_proj_weight": _adapted(self, base.in_proj_weight),
            "out_proj.base_layer.weight": _adapted(out_proj, out_proj.get_base_layer().weight),
        }
        return functional_call(base, weights, (query, *args), kwargs)

    def _restore_weights(self) -> None:
        """Nothing to restore: the base parameters are never replaced."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add each adapter's update to the base weights once, in place.

        Raises:
            ValueError: With ``safe_merge``, if a merged weight is not finite.
        """
        base = self.get_base_layer()
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter in self.lora_A:
                merged = base.in_proj_weight + _update(self, adapter).to(base.in_proj_weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs in the weights merged from adapter {adapter!r}")
                with torch.no_grad():
                    base.in_proj_weight.copy_(merged)
                base.out_proj.merge(safe_merge=safe_merge, adapter_names=[adapter])
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract the merged updates again."""
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                with torch.no_grad():
                    base.in_proj_weight.sub_(_update(self, adapter).to(base.in_proj_weight.dtype))
        base.out_proj.unmerge()


def _adapted(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` plus the update of each of ``layer``'s active adapters, out of place."""
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            weight = weight + _update(layer, adapter).to(weight.dtype)
    return weight


def _update(layer: Any, adapter: str) -> torch.Tensor:
    """``scaling * B @ A`` of one adapter of a PEFT LoRA layer."""
    down, up = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return (up @ down) * layer.scaling[adapter]
