"""Counting the memory of one training step, each storage once, on any device.

Shared by :mod:`zooadapt.memory` (on the meta device) and :mod:`zooadapt.bench` (on the
device it times).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zooadapt._core.calling import caller
from zooadapt._core.patches import ScopedPatch
from zooadapt.errors import AdaptError

__all__ = [
    "StepMemory",
    "by",
    "forward_backward",
    "format_bytes",
    "grad_bytes",
    "mean_loss",
    "measure_step",
    "own_tensors",
    "parse_bytes",
    "state_bytes",
    "storage_bytes",
]

#: Half-precision dtype of each ``amp`` setting.

KIB, MIB, GIB = 2**10, 2**20, 2**30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

Loss = Callable[[Any], torch.Tensor]
Inputs = torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class StepMemory:
    """Bytes held by one training step, each storage counted once.

    Attributes:
        params: Every parameter and buffer of the model.
        grads: Gradients of the trainable parameters.
        optimizer_state: Every tensor the optimizer holds after the step.
        activations: Tensors saved for backward, parameters and buffers not counted again.
        transient: The largest input + output of any single layer in the forward: working
            memory that exists while that layer runs even when nothing is saved (with a
            frozen backbone it is most of what the batch costs).
    """

    params: int
    grads: int
    optimizer_state: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        """``params + grads + optimizer_state + activations + transient``."""
        return self.params + self.grads + self.optimizer_state + self.activations + self.transient

    def fits(self, budget_bytes: int | str) -> bool:
        """Whether ``total`` is at most ``budget_bytes`` (an int or a string like ``"24GiB"``)."""
        return self.total <= parse_bytes(budget_bytes)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON, ``total`` included."""
        return {**asdict(self), "total": self.total}


def by(sizes: Sequence[int]) -> str:
    return "x".join(str(v) for v in sizes)


def format_bytes(value: int) -> str:
    """``"1.50 GiB"`` from 1 GiB up, ``"12.3 MiB"`` from 1 MiB up, else ``"80.0 KiB"``."""
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    if abs(value) >= MIB:
        return f"{value / MIB:.1f} MiB"
    return f"{value / KIB:.1f} KiB"


def parse_bytes(text: str | int) -> int:
    """Bytes in a size such as ``"24GiB"``, ``"1.5 GB"``, ``"512MiB"`` or ``"1000"``.

    Units are case-insensitive: B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB
    (powers of 1024); no unit means bytes. Fractions of a byte are rounded down.

    Raises:
        AdaptError: If ``text`` is no such size.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise AdaptError(
            f"cannot read {text!r} as a size in bytes; write a non-negative number with an "
            "optional unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB "
            "(powers of 1024), e.g. '24GiB' or '1.5 GB'"
        )
    return int(Fraction(match.group(1)) * _UNITS[match.group(2).lower()])


# -- measuring one step on any device ----------------------------------------------------------


def measure_step(
    model: nn.Module,
    inputs: Inputs,
    optimizer: torch.optim.Optimizer | None,
    *,
    loss: Loss | None = None,
) -> StepMemory:
    """Run one training step of ``model`` and count the bytes it holds, on any device.

    Forward (``model(inputs)``, or ``model(*inputs)`` for a sequence; the family's
    ``call`` when it declares one), ``loss``, backward,
    ``optimizer.step()``, then the gradients are set to ``None``. The weights and the
    optimizer state change as in any step; the module's train/eval mode is left as it is.
    On the meta device attention runs as a fused kernel (see the module documentation).

    Args:
        model: The model, in the mode it should be measured in (normally training).
        inputs: A batch on the model's device, or a sequence of positional inputs.
        optimizer: The optimizer over the model's trainable parameters, or ``None``.
        loss: Maps the model's output to a scalar; the default sums the mean of every
            tensor output (tuples and lists of outputs such as aux heads included).

    Returns:
        The bytes of parameters and buffers, gradients, optimizer state and tensors saved
        for backward, each storage counted once.
    """
    activations, transient = forward_backward(model, inputs, loss)
    grads = grad_bytes(model)
    if optimizer is not None and grads:
        optimizer.step()
    state = state_bytes(optimizer) if optimizer is not None else 0
    model.zero_grad(set_to_none=True)
    params = storage_bytes(own_tensors(model))
    return StepMemory(params, grads, state, activations, transient)


class _LargestLayer:
    """Forward hook on every leaf module: the largest input + output bytes seen."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if next(module.children(), None) is None:
            size = storage_bytes([*_tensors_in(inputs), *_tensors_in(output)])
            self.bytes = max(self.bytes, size)


def forward_backward(
    model: nn.Module, inputs: Inputs, loss: Loss | None = None, *, weight_copies: bool = False
) -> tuple[int, int]:
    """Forward and backward once; bytes saved for backward and of the largest layer's I/O.

    Args:
        model: The model.
        inputs: A batch, or a sequence of positional inputs.
        loss: As in :func:`measure_step`.
        weight_copies: Also count saved parameters with two or more dimensions (the
            convolution and linear weights, of which autocast saves low-precision copies).
    """
    batch = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    run = caller(model)
    counter, largest = _SavedTensors(model, weight_copies), _LargestLayer()
    hook = nn.modules.module.register_module_forward_hook(largest)
    try:
        with _fused_attention_on_meta(batch), torch.enable_grad():
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, _unpack):
                value = (loss or mean_loss)(run(*batch))
            saved = counter.bytes()
            del counter
            if value.requires_grad:
                value.backward()
    finally:
        hook.remove()
    return saved, largest.bytes


def mean_loss(output: Any) -> torch.Tensor:
    """Sum of the means of every floating-point tensor in ``output`` (tuples, lists, dicts)."""
    tensors = [t for t in _tensors_in(output) if t.is_floating_point()]
    if not tensors:
        raise AdaptError(f"the model returned no floating-point tensor: {type(output).__name__}")
    return sum((t.float().mean() for t in tensors[1:]), tensors[0].float().mean())


def grad_bytes(model: nn.Module) -> int:
    """Bytes of the gradients the model's parameters hold."""
    return storage_bytes(p.grad for p in model.parameters() if p.grad is not None)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state``, each storage once."""
    return storage_bytes(_tensors_in(list(optimizer.state.values())))


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once (views share)."""
    return sum(dict(_storage_of(t) for t in tensors).values())


def _storage_of(tensor: torch.Tensor) -> tuple[int, int]:
    """Identity and bytes of the storage behind ``tensor`` (of the tensor, if it has none).

    ``data_ptr()`` is 0 on the meta device; the storage object's address tells storages
    apart there too, and views share it.
    """
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return id(tensor), tensor.element_size() * tensor.numel()
    return storage._cdata, storage.nbytes()


def own_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(model.parameters(), model.buffers())


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)


def _unpack(saved: torch.Tensor) -> torch.Tensor:
    return saved


class _SavedTensors:
    """Pack hook that records every storage autograd saves, except the model's own.

    The tensors are held until counted, so that no storage address is reused in between.
    """

    def __init__(self, model: nn.Module, weight_copies: bool) -> None:
        copies = [p for p in model.parameters() if p.ndim >= 2] if weight_copies else []
        keep = {_storage_of(t)[0] for t in copies}
        self.skip = {_storage_of(t)[0] for t in own_tensors(model)} - keep
        self.found: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key, size = _storage_of(tensor)
        if key not in self.skip:
            self.found.setdefault(key, (tensor, size))
        return tensor

    def bytes(self) -> int:
        return sum(size for _, size in self.found.values())


# -- attention on the meta device ----------------------------------------------------------------


def _attention(original: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    fused = _flash_attention(*args, **kwargs)
    return original(*args, **kwargs) if fused is None else fused


#: ``F.scaled_dot_product_attention`` on meta tensors as a fused kernel would run it. On
#: meta PyTorch picks the math implementation, which saves the (length x length) attention
#: matrix; flash attention (the CPU kernel's meta function, which also stands in for
#: CUDA's flash and memory-efficient kernels) saves only the inputs, the output and the
#: log-sum-exp. The attribute of ``torch.nn.functional`` (looked up at each call by
#: ``nn.MultiheadAttention`` and timm) is replaced for the estimating thread only.
_FUSED_ATTENTION = ScopedPatch(F, "scaled_dot_product_attention", _attention)


def _flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor | None:
    """The fused kernel's output, or ``None`` where it does not apply."""
    tensors = (query, key, value)
    same_heads = query.shape[:2] == key.shape[:2] == value.shape[:2]
    if not all(t.is_meta and t.ndim == 4 for t in tensors) or not same_heads:
        return None
    if query.shape[-1] != value.shape[-1]:
        return None
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    output, _ = flash(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    return output


def _fused_attention_on_meta(batch: Sequence[Any]) -> contextlib.AbstractContextManager[Any]:
    on_meta = any(isinstance(t, torch.Tensor) and t.is_meta for t in batch)
    return _FUSED_ATTENTION.active() if on_meta else contextlib.nullcontext()
