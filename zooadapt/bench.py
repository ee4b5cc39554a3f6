"""Fine-tuning benchmarks: what each freeze setting costs per step, in time and memory.

For every model and freeze setting, :func:`bench` times training steps (forward, loss,
backward, optimizer step) against the inference-only forward of the same model, which is
the floor that a frozen backbone cannot beat; steps and forwards alternate, so load from
other processes hits both alike, and the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import anatomy, spatial_size
from zooadapt._core.calling import caller
from zooadapt._core.distributed import unwrap
from zooadapt._core.meta import meta_copy
from zooadapt._core.plugins import PluginManager
from zooadapt._core.step import measure_step
from zooadapt.adapt import adapt, adapted_from
from zooadapt.errors import AdaptError
from zooadapt.freeze import FreezeSpec, freeze, unfreeze
from zooadapt.optim import optimizer as make_optimizer
from zooadapt.optim import optimizer_class
from zooadapt.types import Family

__all__ = ["BenchResult", "bench", "freeze_spec", "resolve_device", "setting_options"]

#: Freeze setting names: ``none`` trains everything, ``last`` the last stage and the head.
SETTINGS: dict[str, FreezeSpec] = {"none": None, "last": -2, "backbone": "backbone"}
#: The ``lora`` setting: LoRA adapters of rank 8 on the attention roles (:func:`zooadapt.lora`).
LORA_SETTING = {"r": 8, "targets": "attention"}
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BenchResult:
    """One model at one freeze setting.

    Attributes:
        model: Registry name (or class name of a module argument).
        setting: Freeze setting (``none``, ``last``, ``backbone`` or a group name).
        device: Where it ran.
        batch_size: Samples per step.
        input_size: Spatial input size, e.g. ``(224, 224)``.
        step_ms: Median training step time.
        inference_ms: Median inference-only forward time of the same model.
        ratio: Median over rounds of step time / inference time.
        samples_per_s: ``batch_size / step time``.
        trainable: Trainable parameters.
        total: All parameters.
        optimizer_state_bytes: Bytes of optimizer state after the first step.
        accounted_bytes: Parameters + gradients + optimizer state + tensors saved for
            backward, each storage once (measured in one extra step).
        training_bytes: What training adds to holding the weights: gradients + optimizer
            state + saved tensors + the largest layer's working memory.
        saved_bytes: Tensors saved for backward, each storage once.
        transient_bytes: The largest input + output of any single layer in the forward.
        peak_bytes: CUDA ``max_memory_allocated`` over the case (reset per case); ``None``
            on the CPU.
        peak_rss_bytes: Peak resident memory of the process so far (never reset).
        error: Why the case could not run (out of memory), else ``""``.
    """

    model: str
    setting: str
    device: str
    batch_size: int
    input_size: tuple[int, ...]
    step_ms: float = float("nan")
    inference_ms: float = float("nan")
    ratio: float = float("nan")
    samples_per_s: float = float("nan")
    trainable: int = 0
    total: int = 0
    optimizer_state_bytes: int = 0
    accounted_bytes: int = 0
    training_bytes: int = 0
    saved_bytes: int = 0
    transient_bytes: int = 0
    peak_bytes: int | None = None
    peak_rss_bytes: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU.

    Raises:
        AdaptError: If ``device`` is no device, or CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise AdaptError(f"--device {device}: not a device; use cpu, cuda, cuda:N or auto") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AdaptError(
            f"--device {device}: CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return resolved


def freeze_spec(setting: str) -> FreezeSpec:
    """The freeze spec of a setting name; any other string is a group name."""
    return SETTINGS.get(setting, setting)


def setting_options(setting: str) -> dict[str, Any]:
    """``freeze=`` or, for ``lora``, ``lora=`` of :func:`zooadapt.estimate_memory`."""
    return {"lora": dict(LORA_SETTING)} if setting == "lora" else {"freeze": freeze_spec(setting)}


def bench(
    models: str | nn.Module | Sequence[str | nn.Module],
    *,
    settings: str | Sequence[str] = ("none", "last", "backbone"),
    batch_size: int = 32,
    input_size: int | Sequence[int] | None = None,
    device: str | torch.device = "auto",
    amp: str | None = None,
    channels_last: bool = False,
    opt: str | type[torch.optim.Optimizer] = "adamw",
    num_classes: int = 10,
    warmup: int = 3,
    steps: int = 10,
    progress: bool = True,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> list[BenchResult]:
    """Benchmark fine-tuning of each model at each freeze setting.

    Args:
        models: A registry name (``"resnet50"``, ``"timm/convnext_tiny"``) or a module, or
            a list of them. A module is deep-copied for every setting, never changed.
        settings: One setting or a list: ``none`` (full fine-tuning), ``last`` (last stage
            and head trainable), ``backbone`` (head only), ``lora`` (LoRA r=8 on the
            attention roles, and the head), or a group name (frozen up to and including it).
        batch_size: Samples per step.
        input_size: Spatial input size, an int or a tuple; ``None`` takes the model's
            (``za.anatomy(model).input_size``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        amp: ``"bf16"`` or ``"fp16"`` autocast (``fp16`` with a gradient scaler on CUDA).
        channels_last: Model and input in channels-last memory format (2-D models).
        opt: A ``torch.optim`` class or name, as for :func:`zooadapt.optimizer`.
        num_classes: Classes of the adapted head.
        warmup: Untimed rounds.
        steps: Timed rounds (each one training step and one inference forward).
        progress: Show a progress bar on stderr.
        family: Force the family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.

    Returns:
        One :class:`BenchResult` per model and setting; a case that ran out of memory
        has ``error`` set instead of raising.

    Raises:
        AdaptError: For a bad batch size, input size, amp or device, before anything runs.
    """
    models = [models] if isinstance(models, (str, nn.Module)) else list(models)
    settings = [settings] if isinstance(settings, str) else list(settings)
    _check_arguments(batch_size, amp, warmup, steps, settings)  # before anything runs
    target = resolve_device(device)
    optimizer_class(opt)
    lookup = {"family": family, "plugin_manager": plugin_manager}
    subjects = [_subject(m, num_classes, input_size, lookup) for m in models]
    cases = [(s, setting) for s in subjects for setting in settings]
    results = []
    with _progress(len(cases), progress) as advance:
        for subject, setting in cases:
            config = _Config(target, batch_size, subject.input_shape, amp, channels_last, opt)
            results.append(_bench_case(subject, setting, config, num_classes, warmup, steps))
            advance(f"{subject.label} {setting}")
    return results


def _check_arguments(
    batch_size: int, amp: str | None, warmup: int, steps: int, settings: Sequence[str]
) -> None:
    for name, value in (("batch_size", batch_size), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaptError(f"{name} must be a positive int, got {value!r}")
    if amp is not None and amp not in AMP:
        raise AdaptError(f"amp must be one of {sorted(AMP)} or None, got {amp!r}")
    if warmup < 0:
        raise AdaptError(f"warmup must be >= 0, got {warmup!r}")
    if not settings or not all(isinstance(s, str) and s for s in settings):
        raise AdaptError(f"settings must be setting names, got {settings!r}")


@dataclass(frozen=True)
class _Subject:
    """One model to benchmark: how to build a fresh copy, and its input."""

    label: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # (channels, *spatial)


def _subject(
    model: str | nn.Module,
    num_classes: int,
    input_size: int | Sequence[int] | None,
    lookup: dict[str, Any],
) -> _Subject:
    """Check the model and input on the meta device, so a bad size fails before timing.

    Raises:
        AdaptError: Naming the model, the size and the model's own complaint.
    """
    if isinstance(model, nn.Module):
        source = unwrap(model)
        anatomy(source, **lookup)  # the family travels with the copies
        origin = adapted_from(source)
        label = origin["model"] if origin else type(source).__name__

        def build() -> nn.Module:
            return adapt(copy.deepcopy(source), num_classes=num_classes)

        meta = adapt(meta_copy(source), num_classes=num_classes)
    else:
        label = model

        def build() -> nn.Module:
            return adapt(model, num_classes=num_classes, pretrained=False, **lookup)

        meta = adapt(model, num_classes=num_classes, pretrained=False, device="meta", **lookup)
    anat = anatomy(meta)
    shape = anat.input_shape(1, spatial_size(input_size, anat.spatial_dims) or anat.input_size)
    try:
        meta.eval()(torch.empty(shape, device="meta"))
    except Exception as err:  # noqa: BLE001 - any failure means the size does not fit
        size = "x".join(map(str, shape[2:]))
        raise AdaptError(
            f"{label} cannot take {size} inputs ({type(err).__name__}: {err}); "
            "choose another input size (--input-size in the CLI)"
        ) from err
    return _Subject(label, build, shape[1:])


@dataclass(frozen=True)
class _Config:
    device: torch.device
    batch_size: int
    input_shape: tuple[int, ...]
    amp: str | None
    channels_last: bool
    opt: str | type[torch.optim.Optimizer]


def _bench_case(
    subject: _Subject, setting: str, config: _Config, num_classes: int, warmup: int, steps: int
) -> BenchResult:
    size = config.input_shape[1:]
    base = BenchResult(subject.label, setting, str(config.device), config.batch_size, size)
    try:
        return _run_case(subject, base, config, num_classes, warmup, steps)
    except torch.cuda.OutOfMemoryError as err:
        return _out_of_memory(base, err)
    except RuntimeError as err:
        if "out of memory" not in str(err).lower():
            raise
        return _out_of_memory(base, err)
    finally:
        gc.collect()
        if config.device.type == "cuda":
            torch.cuda.empty_cache()


def _out_of_memory(base: BenchResult, err: BaseException) -> BenchResult:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return _replace(base, error=f"out of memory at batch size {base.batch_size}: {first_line}")


def _replace(result: BenchResult, **changes: Any) -> BenchResult:
    return BenchResult(**{**result.as_dict(), **changes})


def _run_case(
    subject: _Subject,
    base: BenchResult,
    config: _Config,
    num_classes: int,
    warmup: int,
    steps: int,
) -> BenchResult:
    torch.manual_seed(0)
    model = unfreeze(subject.build())
    if base.setting == "lora":
        from zooadapt.lora import lora

        lora(model, **LORA_SETTING)
    else:
        freeze(model, freeze_spec(base.setting))
    model.to(config.device)
    x, y = _batch(model, config, num_classes)
    if config.channels_last and x.ndim == 4:
        model.to(memory_format=torch.channels_last)
    if config.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(config.device)
    opt = make_optimizer(model, config.opt, lr=1e-3)
    train, infer = _train_step(model, opt, x, y, config), _inference_step(model, x, config)
    times = _alternate({"train": train, "inference": infer}, warmup, steps, config.device)
    peak = torch.cuda.max_memory_allocated(config.device) if config.device.type == "cuda" else None
    model.train()
    accounted = measure_step(model, x, opt, loss=_loss_of(y))
    step = statistics.median(times["train"])
    ratios = [t / i for t, i in zip(times["train"], times["inference"], strict=True)]
    return _replace(
        base,
        step_ms=step * 1e3,
        inference_ms=statistics.median(times["inference"]) * 1e3,
        ratio=statistics.median(ratios),
        samples_per_s=config.batch_size / step,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
        optimizer_state_bytes=accounted.optimizer_state,
        accounted_bytes=accounted.total,
        training_bytes=accounted.total - accounted.params,
        saved_bytes=accounted.activations,
        transient_bytes=accounted.transient,
        peak_bytes=peak,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def _batch(
    model: nn.Module, config: _Config, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, *config.input_shape)
    x = torch.rand(shape, generator=generator).to(config.device)
    if config.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (config.batch_size,), generator=generator)
    return x, y.to(config.device)


def _loss_of(y: torch.Tensor) -> Callable[[Any], torch.Tensor]:
    def loss(output: Any) -> torch.Tensor:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        return sum(nn.functional.cross_entropy(o.float(), y) for o in outputs if o is not None)

    return loss


def _autocast(config: _Config) -> contextlib.AbstractContextManager[Any]:
    if config.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(config.device.type, dtype=AMP[config.amp])


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: _Config,
) -> Callable[[], None]:
    scaler = torch.amp.GradScaler(enabled=config.amp == "fp16" and config.device.type == "cuda")
    loss, run = _loss_of(y), caller(model)

    def step() -> None:
        model.train()
        with _autocast(config):
            value = loss(run(x))
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def _inference_step(model: nn.Module, x: torch.Tensor, config: _Config) -> Callable[[], None]:
    run = caller(model)

    def step() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(config):
            run(x)

    return step


def _alternate(
    steps: dict[str, Callable[[], None]], warmup: int, rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Times of each step; one of each per round, the order swapping every round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    labels = list(steps)
    for i in range(warmup + rounds):
        for label in labels if i % 2 else labels[::-1]:
            start = _now(device)
            steps[label]()
            if i >= warmup:
                times[label].append(_now(device) - start)
    return times


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A tqdm bar when tqdm is installed, else one line per case on stderr."""
    if not enabled:
        yield lambda label: None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        done = iter(range(1, total + 1))
        yield lambda label: print(f"[{next(done)}/{total}] {label}", file=sys.stderr)
        return
    with tqdm(total=total, desc="zooadapt bench", unit="case") as bar:

        def advance(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()

        yield advance
