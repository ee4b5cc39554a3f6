"""Fine-tuning benchmarks: what each freeze setting costs per step, in time and memory.

For every model and freeze setting, :func:`bench` times training steps (forward, loss,
backward, optimizer step) against the inference-only forward of the same model, which is
the floor that a frozen backbone cannot beat; steps and forwards alternate, so load from
other processes hits both alike, and the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
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

from zooadapt.adapt import adapt
from zooadapt.errors import AdaptError
from zooadapt.freeze import FreezeSpec
from zooadapt.memory import measure_step
from zooadapt.optim import optimizer as make_optimizer

__all__ = ["BenchResult", "bench", "freeze_spec", "resolve_device"]

#: Freeze setting names: ``none`` trains everything, ``last`` the last stage and the head.
SETTINGS: dict[str, FreezeSpec] = {"none": None, "last": -2, "backbone": "backbone"}
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BenchResult:
    """One model at one freeze setting.

    Attributes:
        model: Registry name.
        freeze: Freeze setting (``none``, ``last``, ``backbone`` or a group name).
        device: Where it ran.
        batch_size: Samples per step.
        input_size: Input side in pixels.
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
    freeze: str
    device: str
    batch_size: int
    input_size: int
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
        AdaptError: If CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AdaptError(
            f"--device {device}: CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return resolved


def freeze_spec(setting: str) -> FreezeSpec:
    """The freeze spec of a setting name; any other string is a group name."""
    return SETTINGS.get(setting, setting)


def bench(
    models: Sequence[str],
    *,
    freeze: Sequence[str] = ("none", "last", "backbone"),
    batch_size: int = 32,
    input_size: int = 224,
    device: str | torch.device = "auto",
    amp: str | None = None,
    channels_last: bool = False,
    optimizer: str = "adamw",
    num_classes: int = 10,
    warmup: int = 3,
    steps: int = 10,
    progress: bool = True,
) -> list[BenchResult]:
    """Benchmark fine-tuning of each model at each freeze setting.

    Args:
        models: Registry names (``"resnet50"``, ``"timm/convnext_tiny"``).
        freeze: Settings: ``none`` (full fine-tuning), ``last`` (last stage and head
            trainable), ``backbone`` (head only), or a group name (frozen up to it).
        batch_size: Samples per step.
        input_size: Input side in pixels.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        amp: ``"bf16"`` or ``"fp16"`` autocast (``fp16`` with a gradient scaler on CUDA).
        channels_last: Model and input in channels-last memory format.
        optimizer: Any ``torch.optim`` name, as for :func:`zooadapt.optimizer`.
        num_classes: Classes of the adapted head.
        warmup: Untimed rounds.
        steps: Timed rounds (each one training step and one inference forward).
        progress: Show a progress bar on stderr.

    Returns:
        One :class:`BenchResult` per model and setting; a case that ran out of memory
        has ``error`` set instead of raising.

    Raises:
        AdaptError: For a bad batch size, input size, amp or device, before anything runs.
    """
    _check_arguments(batch_size, input_size, amp, warmup, steps)  # before anything runs
    target = resolve_device(device)
    for name in models:
        _check_input(name, num_classes, input_size)
    cases = [(m, f) for m in models for f in freeze]
    results = []
    with _progress(len(cases), progress) as advance:
        for model_name, setting in cases:
            config = _Config(target, batch_size, input_size, amp, channels_last, optimizer)
            results.append(_bench_case(model_name, setting, config, num_classes, warmup, steps))
            advance(f"{model_name} {setting}")
    return results


def _check_arguments(
    batch_size: int, input_size: int, amp: str | None, warmup: int, steps: int
) -> None:
    for name, value in (("batch_size", batch_size), ("input_size", input_size), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaptError(f"{name} must be a positive int, got {value!r}")
    if amp is not None and amp not in AMP:
        raise AdaptError(f"amp must be one of {sorted(AMP)} or None, got {amp!r}")
    if warmup < 0:
        raise AdaptError(f"warmup must be >= 0, got {warmup!r}")


def _check_input(name: str, num_classes: int, input_size: int) -> None:
    """Run the model once on the meta device, so a bad input size fails before timing.

    Raises:
        AdaptError: Naming the model, the size and the model's own complaint.
    """
    model = adapt(name, num_classes=num_classes, pretrained=False, device="meta")
    try:
        model.eval()(torch.empty(1, 3, input_size, input_size, device="meta"))
    except Exception as err:  # noqa: BLE001 - any failure means the size does not fit
        raise AdaptError(
            f"{name} cannot take {input_size}x{input_size} inputs ({type(err).__name__}: "
            f"{err}); choose another --input-size"
        ) from err


@dataclass(frozen=True)
class _Config:
    device: torch.device
    batch_size: int
    input_size: int
    amp: str | None
    channels_last: bool
    optimizer: str


def _bench_case(
    name: str, setting: str, config: _Config, num_classes: int, warmup: int, steps: int
) -> BenchResult:
    base = BenchResult(name, setting, str(config.device), config.batch_size, config.input_size)
    try:
        return _run_case(base, config, num_classes, warmup, steps)
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
    base: BenchResult, config: _Config, num_classes: int, warmup: int, steps: int
) -> BenchResult:
    torch.manual_seed(0)
    spec = freeze_spec(base.freeze)
    model = adapt(base.model, num_classes=num_classes, pretrained=False, freeze=spec)
    model.to(config.device)
    x, y = _batch(model, config, num_classes)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(config.device)
    opt = make_optimizer(model, config.optimizer, lr=1e-3)
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
    shape = (config.batch_size, 3, config.input_size, config.input_size)
    x = torch.rand(shape, generator=generator).to(config.device)
    if config.channels_last:
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
    loss = _loss_of(y)

    def step() -> None:
        model.train()
        with _autocast(config):
            value = loss(model(x))
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def _inference_step(model: nn.Module, x: torch.Tensor, config: _Config) -> Callable[[], None]:
    def step() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(config):
            model(x)

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
