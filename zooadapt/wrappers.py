"""Accept wrapped models (DataParallel, DistributedDataParallel, torch.compile) anywhere."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DDP / ``torch.compile`` wrappers (``model`` if none).

    FSDP2 (``fully_shard``) keeps the model's own class and needs no unwrapping.
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model
