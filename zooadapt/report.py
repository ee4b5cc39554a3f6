"""Present benchmark results: a Markdown or rich table, JSON, and a PNG plot."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from zooadapt._core.files import atomic_write
from zooadapt.bench import BenchResult
from zooadapt.errors import AdaptError

__all__ = ["markdown_table", "print_table", "save_json", "save_plot"]

COLUMNS = (
    "model",
    "setting",
    "step ms",
    "samples/s",
    "step / inference",
    "trainable / total",
    "optimizer MiB",
    "saved MiB",
    "transient MiB",
    "accounted MiB",
    "training MiB",
    "CUDA peak MiB",
)
MIB = 2**20


def _row(r: BenchResult) -> list[str]:
    if r.error:
        return [r.model, r.setting, r.error, *[""] * (len(COLUMNS) - 3)]
    peak = f"{r.peak_bytes / MIB:.0f}" if r.peak_bytes is not None else "-"
    return [
        r.model,
        r.setting,
        f"{r.step_ms:.1f}",
        f"{r.samples_per_s:.1f}",
        f"{r.ratio:.3f}",
        f"{r.trainable:,} / {r.total:,}",
        f"{r.optimizer_state_bytes / MIB:.1f}",
        f"{r.saved_bytes / MIB:.2f}",
        f"{r.transient_bytes / MIB:.1f}",
        f"{r.accounted_bytes / MIB:.1f}",
        f"{r.training_bytes / MIB:.1f}",
        peak,
    ]


def markdown_table(results: Sequence[BenchResult]) -> str:
    """A Markdown table: one row per model and freeze setting."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def print_table(results: Sequence[BenchResult]) -> None:
    """Print the table with rich in a terminal (when installed), else as Markdown."""
    if not sys.stdout.isatty():
        print(markdown_table(results))
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown_table(results))
        return
    table = Table(*COLUMNS, title="zooadapt bench")
    for result in results:
        table.add_row(*_row(result))
    Console().print(table)


def save_json(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """Write the results as a JSON list (atomically)."""
    text = json.dumps([r.as_dict() for r in results], indent=2)
    with atomic_write(path) as temporary:
        temporary.write_text(text)


def save_plot(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """Bar charts of step time and memory per freeze setting, one group of bars per model.

    Raises:
        AdaptError: If matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise AdaptError("--plot needs matplotlib: pip install 'zooadapt[bench]'") from err
    done = [r for r in results if not r.error]
    models = list(dict.fromkeys(r.model for r in done))
    settings = list(dict.fromkeys(r.setting for r in done))
    fig, axes = plt.subplots(1, 2, figsize=(5 + 2 * len(models), 4))
    width = 0.8 / max(len(settings), 1)
    for i, setting in enumerate(settings):
        by_model = {r.model: r for r in done if r.setting == setting}
        xs = [m + i * width for m in range(len(models))]
        axes[0].bar(xs, [_value(by_model, m, "step_ms") for m in models], width, label=setting)
        axes[1].bar(xs, [_memory(by_model.get(m)) / MIB for m in models], width, label=setting)
    for ax, label in zip(axes, ("train step (ms)", "memory (MiB)"), strict=True):
        ax.set_xticks([m + width * (len(settings) - 1) / 2 for m in range(len(models))], models)
        ax.set_ylabel(label)
        ax.legend(title="setting")
    fig.tight_layout()
    with atomic_write(path) as temporary:
        fig.savefig(temporary, format="png", dpi=120)
    plt.close(fig)


def _value(by_model: dict[str, BenchResult], model: str, field: str) -> float:
    result = by_model.get(model)
    return float(getattr(result, field)) if result is not None else 0.0


def _memory(result: BenchResult | None) -> float:
    if result is None:
        return 0.0
    return float(result.peak_bytes if result.peak_bytes is not None else result.accounted_bytes)
