"""``estimate_memory``: will this fine-tune fit in N GiB? Answered without a GPU.

:func:`estimate_memory` runs one training step (forward, mean-of-output loss, backward,
optimizer step) of the model on the meta device, where tensors have shapes, dtypes and
storages but no data, and counts, each storage once:

- ``params``: every parameter and buffer of the model;
- ``grads``: the gradients of the trainable parameters;
- ``optimizer_state``: every tensor the optimizer holds after its first step;
- ``activations``: the tensors autograd saves for backward (caught with
  ``torch.autograd.graph.saved_tensors_hooks``), parameters and buffers not counted again.

:func:`measure_step` does the same counting on any device with real tensors; the tests
check that the meta estimate agrees with it on the CPU.

Two things differ on the meta device and are emulated: PyTorch picks the unfused "math"
attention there, which saves the full attention matrix, so ``scaled_dot_product_attention``
is routed to a fused kernel's meta implementation (real devices use a fused kernel whenever
they can); and autocast does nothing to meta tensors, so ``amp`` is emulated (see
:func:`estimate_memory`).

How the estimate relates to a real CUDA peak
--------------------------------------------
``total`` counts what has to be alive at the peak of a training step. A real
``torch.cuda.max_memory_allocated()`` is usually somewhat higher, because:

- the caching allocator rounds every block up to a multiple of 512 bytes, carves blocks
  out of 2 MiB (small) or larger segments, and fragmentation leaves some of them unusable;
- cuDNN and cuBLAS take workspaces (convolution algorithms can ask for hundreds of MiB);
- operations allocate temporaries that they free before returning (im2col buffers, the
  intermediates of a fused optimizer or of ``foreach`` updates, which can be as large as
  the trainable parameters), and these are not saved for backward;
- gradients and activations coexist at the backward peak: gradients appear as backward
  frees the activations, and the gradient of the layer being processed is allocated
  before that layer's saved tensors are released;
- the optimizer state is allocated lazily at the first ``step()``, so the first step
  may peak differently from later ones (from the second step on, state lives through
  forward and backward);
- dropout on CUDA saves a one-byte mask where the meta device (like the CPU) saves a
  full-precision one, which makes the estimate err on the high side there.

The CUDA context itself (about 300-500 MiB for the driver, kernels and libraries) is not
in ``max_memory_allocated`` at all, but it is in what ``nvidia-smi`` shows and it does
use the card. The input batch is counted only where it is saved for backward (when the
first layer trains), and the targets and loss not at all; both are small. So expect
``max_memory_allocated`` to land around the estimate and typically within ~15% above
it, more for models with many parameters trained at small batch sizes (where the
optimizer's temporaries weigh most), and leave headroom: plan for the estimate plus
15-20% plus the context.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import anatomy, spatial_size
from zooadapt._core.distributed import unwrap
from zooadapt._core.meta import meta_copy
from zooadapt._core.plugins import PluginManager
from zooadapt._core.step import (
    StepMemory,
    by,
    format_bytes,
    forward_backward,
    grad_bytes,
    mean_loss,
    measure_step,
    own_tensors,
    parse_bytes,
    state_bytes,
    storage_bytes,
)
from zooadapt.adapt import adapt, adapted_from
from zooadapt.errors import AdaptError, ZooAdaptError
from zooadapt.freeze import FreezeSpec
from zooadapt.freeze import freeze as freeze_model
from zooadapt.optim import optimizer_class
from zooadapt.types import Family

__all__ = [
    "MemoryEstimate",
    "StepMemory",
    "estimate_memory",
    "format_bytes",
    "max_batch_size",
    "measure_step",
    "parse_bytes",
]

#: Half-precision dtype of each ``amp`` setting.
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}

# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate(StepMemory):
    """What :func:`estimate_memory` found, with what it was asked.

    Attributes:
        model: Registry name (or class name of a module argument).
        batch_size: Samples per step.
        input_size: Spatial size of the input (``(height, width)``, or with depth).
        in_chans: Input channels.
        freeze: The freeze spec applied (``None``: nothing frozen beyond the model's own).
        dtype: Dtype of the parameters (``"float32"``, ``"bfloat16"``).
        amp: ``"bf16"`` or ``"fp16"`` autocast emulated for the activations, or ``None``.
        opt: Optimizer class name.
        trainable_params: Number of trainable parameter elements.
        total_params: Number of parameter elements.
    """

    model: str
    batch_size: int
    input_size: tuple[int, ...]
    in_chans: int
    freeze: FreezeSpec
    dtype: str
    amp: str | None
    opt: str
    trainable_params: int
    total_params: int

    def __str__(self) -> str:
        parts = ", ".join(f"{label} {format_bytes(value)}" for label, value in self._rows())
        return f"{self._setting()}: total {format_bytes(self.total)} ({parts})"

    def table(self) -> str:
        """A small table: one row per part and the total, in KiB, MiB or GiB."""
        rows = [*self._rows(), ("total", self.total)]
        lines = [self._setting()]
        lines += [f"  {label:<16}{format_bytes(value):>12}" for label, value in rows]
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, int]]:
        return [
            ("params", self.params),
            ("grads", self.grads),
            ("optimizer state", self.optimizer_state),
            ("activations", self.activations),
            ("transient", self.transient),
        ]

    def _setting(self) -> str:
        precision = f"{self.dtype} + {self.amp} autocast" if self.amp else self.dtype
        return (
            f"{self.model} batch {self.batch_size} at {by((self.in_chans, *self.input_size))}, "
            f"freeze={self.freeze!r}, {self.opt}, {precision}, "
            f"{self.trainable_params:,}/{self.total_params:,} params trainable"
        )


# -- the estimate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """A model prepared on the meta device, and how to train it."""

    name: str
    model: nn.Module
    low_precision: nn.Module | None  # the amp stand-in that activations are counted on
    input_shape: tuple[int, ...]  # (channels, *spatial)
    freeze: FreezeSpec
    amp: str | None
    opt: type[torch.optim.Optimizer]
    opt_kwargs: dict[str, Any]


def estimate_memory(
    model_or_name: str | nn.Module,
    *,
    batch_size: int,
    input_size: int | Sequence[int] | None = None,
    freeze: FreezeSpec = None,
    lora: Mapping[str, Any] | None = None,
    opt: str | type[torch.optim.Optimizer] = "adamw",
    opt_kwargs: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    dtype: torch.dtype | None = None,
    amp: str | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **model_kwargs: Any,
) -> MemoryEstimate:
    """Estimate the memory of fine-tuning a model, without a GPU and without allocating it.

    One training step runs on the meta device (see the module documentation for what is
    counted and how it relates to a real CUDA peak).

    Args:
        model_or_name: A registry name (``"resnet50"``, ``"timm/convnext_tiny"``), built
            with random weights on meta, or a module, deep-copied to meta (never changed).
        batch_size: Samples per step.
        input_size: Spatial size of the input: an int for every dimension, or a tuple
            (``(height, width)``, ``(depth, height, width)`` for volumes). ``None`` takes
            the model's own (``za.anatomy(model).input_size``).
        freeze: Freeze spec as for :func:`zooadapt.freeze` (BatchNorm frozen too):
            ``"backbone"``, a group name, an int or a list. ``None`` freezes nothing (a
            module argument keeps its own ``requires_grad`` flags).
        lora: Arguments of :func:`zooadapt.lora` (``{"r": 8}``): adapters are injected
            into the meta copy after ``freeze``, and only they and the head train.
        opt: A ``torch.optim`` class or its name, case-insensitive.
        opt_kwargs: Passed to the optimizer (``{"momentum": 0.9}`` gives SGD a
            momentum buffer); ``lr`` defaults to 1e-3.
        num_classes: Outputs of the head, as for :func:`zooadapt.adapt`.
        in_chans: Input channels, as for :func:`zooadapt.adapt`; ``None`` takes the
            model's (``za.anatomy(model).in_chans``).
        dtype: Train entirely in this dtype (e.g. ``torch.bfloat16``): parameters,
            gradients, optimizer state and activations.
        amp: ``"bf16"`` or ``"fp16"``: mixed precision. Parameters, gradients and optimizer
            state stay float32; activations are counted on a half-precision copy of the
            model, plus the half-precision copies autocast makes of every saved weight
            with two or more dimensions. This approximates autocast, which keeps some
            operations (normalisation, softmax, losses) in float32.
        family: Force the family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.
        **model_kwargs: Passed to the zoo's builder (a name only).

    Returns:
        The estimate; ``estimate.total`` is the sum, ``estimate.fits("24GiB")`` compares.

    Raises:
        AdaptError: For a bad batch size, input size, dtype or amp, an input the model
            cannot take (naming the model, the size and the model's complaint), or an
            optimizer that cannot step.
        OptimizerError: For an unknown optimizer, as :func:`zooadapt.optimizer` raises it.
        FreezeError: For an unknown freeze group, as :func:`zooadapt.freeze` raises it.
    """
    _check_batch_size(batch_size)
    setup = _prepare(
        model_or_name,
        input_size=input_size,
        freeze=freeze,
        lora=lora,
        opt=opt,
        opt_kwargs=opt_kwargs,
        num_classes=num_classes,
        in_chans=in_chans,
        dtype=dtype,
        amp=amp,
        lookup={"family": family, "plugin_manager": plugin_manager},
        model_kwargs=model_kwargs,
    )
    return _estimate(setup, batch_size)


def max_batch_size(
    model_or_name: str | nn.Module,
    budget: int | str,
    *,
    input_size: int | Sequence[int] | None = None,
    freeze: FreezeSpec = None,
    lora: Mapping[str, Any] | None = None,
    opt: str | type[torch.optim.Optimizer] = "adamw",
    opt_kwargs: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    dtype: torch.dtype | None = None,
    amp: str | None = None,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **model_kwargs: Any,
) -> int:
    """The largest batch size whose estimated ``total`` fits in ``budget``; 0 if none does.

    Memory is affine in the batch size, so it is estimated at batch 2 and 4 (batch 1 can
    fail where BatchNorm sees one value per channel), extrapolated, and checked with one
    more estimate at the answer. Should that not fit, the answer is lowered by the excess
    and then raised one by one while the next batch size fits. Batch 1 is only estimated
    when batch 2 does not fit.

    Args:
        model_or_name: As for :func:`estimate_memory`.
        budget: Bytes, or a size string such as ``"24GiB"`` (see :func:`parse_bytes`).
        input_size: As for :func:`estimate_memory`.
        freeze: As for :func:`estimate_memory`.
        lora: As for :func:`estimate_memory`.
        opt: As for :func:`estimate_memory`.
        opt_kwargs: As for :func:`estimate_memory`.
        num_classes: As for :func:`estimate_memory`.
        in_chans: As for :func:`estimate_memory`.
        dtype: As for :func:`estimate_memory`.
        amp: As for :func:`estimate_memory`.
        family: As for :func:`estimate_memory`.
        plugin_manager: As for :func:`estimate_memory`.
        **model_kwargs: As for :func:`estimate_memory`.

    Raises:
        AdaptError: As :func:`estimate_memory`, for a bad budget, or if memory does not
            grow with the batch size (nothing is trained, so any batch size fits).
    """
    limit = parse_bytes(budget)
    setup = _prepare(
        model_or_name,
        input_size=input_size,
        freeze=freeze,
        lora=lora,
        opt=opt,
        opt_kwargs=opt_kwargs,
        num_classes=num_classes,
        in_chans=in_chans,
        dtype=dtype,
        amp=amp,
        lookup={"family": family, "plugin_manager": plugin_manager},
        model_kwargs=model_kwargs,
    )

    def total(batch: int) -> int:
        return _estimate(setup, batch).total

    two = total(2)
    if two > limit:
        return 1 if total(1) <= limit else 0
    per_sample = Fraction(total(4) - two, 2)
    if per_sample <= 0:
        raise AdaptError(
            f"memory of {setup.name} does not grow with the batch size (nothing is saved for "
            "backward), so every batch size fits; check the freeze spec"
        )
    answer = 2 + math.floor((limit - two) / per_sample)
    too_large = None  # the smallest batch size seen not to fit
    while answer > 2 and (excess := total(answer) - limit) > 0:
        too_large, answer = answer, max(2, answer - math.ceil(excess / per_sample))
    while too_large is not None and answer + 1 < too_large and total(answer + 1) <= limit:
        answer += 1
    return answer


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdaptError(f"batch_size must be a positive int, got {batch_size!r}")


def _prepare(
    model_or_name: str | nn.Module,
    *,
    input_size: int | Sequence[int] | None,
    freeze: FreezeSpec,
    opt: str | type[torch.optim.Optimizer],
    lora: Mapping[str, Any] | None = None,
    opt_kwargs: Mapping[str, Any] | None,
    num_classes: int | None,
    in_chans: int | None,
    dtype: torch.dtype | None,
    amp: str | None,
    lookup: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> _Setup:
    """Check the arguments, then build the model on meta, frozen and in training mode."""
    cls = optimizer_class(opt)  # an unknown name fails before any model is built
    _check_precision(dtype, amp)
    name, model = _meta_model(model_or_name, num_classes, in_chans, lookup, model_kwargs)
    anat = anatomy(model)
    size = spatial_size(input_size, anat.spatial_dims) or anat.input_size
    model.train()
    if freeze is not None:
        freeze_model(model, freeze)
    if lora is not None:
        from zooadapt.lora import lora as inject

        inject(model, **lora)
    if dtype is not None:
        model.to(dtype)
    low = copy.deepcopy(model).to(AMP[amp]) if amp else None
    return _Setup(
        name,
        model,
        low,
        anat.input_shape(1, size)[1:],
        tuple(freeze) if isinstance(freeze, list) else freeze,
        amp,
        cls,
        {"lr": 1e-3, **(opt_kwargs or {})},
    )


def _check_precision(dtype: torch.dtype | None, amp: str | None) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise AdaptError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if amp is not None and amp not in AMP:
        raise AdaptError(f"amp must be one of {sorted(AMP)} or None, got {amp!r}")
    if amp is not None and dtype not in (None, torch.float32):
        raise AdaptError(
            f"amp={amp!r} keeps float32 parameters; it cannot be combined with dtype={dtype}"
        )


def _meta_model(
    model_or_name: str | nn.Module,
    num_classes: int | None,
    in_chans: int | None,
    lookup: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> tuple[str, nn.Module]:
    """The model on meta and its name; a module argument is copied, never changed."""
    if not isinstance(model_or_name, nn.Module):
        model = adapt(
            model_or_name,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained=False,
            device="meta",
            **lookup,
            **model_kwargs,
        )
        return str(model_or_name), model
    if model_kwargs:
        raise AdaptError(f"model keyword arguments {sorted(model_kwargs)} need a model name")
    source = unwrap(model_or_name)
    origin = adapted_from(source)
    anatomy(source, **lookup)  # resolve the family on the source: the copy carries it
    model = meta_copy(source)
    if num_classes is not None or in_chans is not None:
        adapt(model, num_classes=num_classes, in_chans=in_chans)
    return (origin["model"] if origin else type(source).__name__), model


def _estimate(setup: _Setup, batch_size: int) -> MemoryEstimate:
    """One training step of the prepared model on meta, counted."""
    model = setup.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    dtype = next(itertools.chain(model.parameters(), [torch.empty(0)])).dtype
    activations, transient = _run_forward_backward(setup, model, batch_size, dtype)
    grads = grad_bytes(model)
    state = _optimizer_state(setup, trainable)
    model.zero_grad(set_to_none=True)
    if setup.low_precision is not None and setup.amp is not None:
        half = AMP[setup.amp]
        activations, transient = _run_forward_backward(
            setup, setup.low_precision, batch_size, half, weight_copies=True, backward=False
        )
    return MemoryEstimate(
        params=storage_bytes(own_tensors(model)),
        grads=grads,
        optimizer_state=state,
        activations=activations,
        transient=transient,
        model=setup.name,
        batch_size=batch_size,
        input_size=setup.input_shape[1:],
        in_chans=setup.input_shape[0],
        freeze=setup.freeze,
        dtype=str(dtype).removeprefix("torch."),
        amp=setup.amp,
        opt=setup.opt.__name__,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def _run_forward_backward(
    setup: _Setup,
    model: nn.Module,
    batch_size: int,
    dtype: torch.dtype,
    *,
    weight_copies: bool = False,
    backward: bool = True,
) -> tuple[int, int]:
    """Saved and largest-layer bytes of one forward (and backward) on meta, clear errors."""
    shape = (batch_size, *setup.input_shape)
    batch = torch.empty(shape, dtype=dtype, device="meta")
    loss = mean_loss if backward else _no_backward
    try:
        return forward_backward(model, batch, loss, weight_copies=weight_copies)
    except ZooAdaptError:
        raise
    except Exception as err:
        raise AdaptError(
            f"{setup.name} cannot train on inputs of shape {tuple(shape)} (input_size "
            f"{by(shape[2:])}, {shape[1]} channels): {type(err).__name__}: {err}; "
            "choose another input_size or batch_size"
        ) from err


def _no_backward(output: Any) -> torch.Tensor:
    """A loss that does not require grad, so that only the forward runs."""
    return mean_loss(output).detach()


def _optimizer_state(setup: _Setup, trainable: list[nn.Parameter]) -> int:
    """Bytes of the optimizer state after one step over the trainable parameters.

    Optimizers whose step reads values (``.item()``), which meta tensors do not have, are
    stepped instead on a CPU stand-in of one parameter at a time (one per shape and dtype).
    """
    if not trainable:
        return 0
    try:
        opt = setup.opt(trainable, **setup.opt_kwargs)
        opt.step()
        return state_bytes(opt)
    except Exception as err:  # noqa: BLE001 - retry with values, then report
        if "meta" not in str(err):
            raise _optimizer_error(setup, err) from err
    try:
        return sum(_state_on_cpu(setup, p.shape, p.dtype) for p in trainable)
    except Exception as err:  # noqa: BLE001 - the optimizer cannot step at all
        raise _optimizer_error(setup, err) from err


_CPU_STATE: dict[tuple[Any, ...], int] = {}


def _state_on_cpu(setup: _Setup, shape: torch.Size, dtype: torch.dtype) -> int:
    kwargs = tuple(sorted((k, repr(v)) for k, v in setup.opt_kwargs.items()))
    key = (setup.opt, kwargs, tuple(shape), dtype)
    if key not in _CPU_STATE:
        stand_in = nn.Parameter(torch.zeros(shape, dtype=dtype))
        stand_in.grad = torch.zeros_like(stand_in)
        opt = setup.opt([stand_in], **setup.opt_kwargs)
        opt.step()
        _CPU_STATE[key] = state_bytes(opt)
    return _CPU_STATE[key]


def _optimizer_error(setup: _Setup, err: BaseException) -> AdaptError:
    return AdaptError(
        f"optimizer {setup.opt.__name__} cannot step on {setup.name} "
        f"(kwargs {setup.opt_kwargs}): {type(err).__name__}: {err}"
    )
