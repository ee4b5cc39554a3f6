"""Frozen vs partial vs full fine-tuning (issue 6): step time, ratio to inference, memory.

A thin wrapper around :func:`zooadapt.bench` (the same as ``zooadapt bench``) that prints
the machine and the Markdown table for ``benchmarks/README.md`` and saves JSON and a plot::

    python benchmarks/bench_finetune.py --models resnet152 vgg16 densenet121 vit_b_16 \\
        timm/convnext_tiny --batch-size 8 --input-size 224 --device cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from _machine import cpu_name

import zooadapt as za
from zooadapt.report import markdown_table, save_json, save_plot

DEFAULT_MODELS = ["resnet152", "vgg16", "densenet121", "vit_b_16", "timm/convnext_tiny"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--settings", nargs="+", default=["none", "last", "backbone"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=("bf16", "fp16"))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args()


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    results = za.bench(
        args.models,
        settings=args.settings,
        batch_size=args.batch_size,
        input_size=args.input_size,
        device=args.device,
        amp=args.amp,
        warmup=args.warmup,
        steps=args.steps,
    )
    device = results[0].device
    print(
        f"# torch {torch.__version__}, timm {timm.__version__}, "
        f"{machine(device)}; batch {args.batch_size}, {args.input_size} px, "
        f"{args.warmup} warm-up + {args.steps} timed rounds, medians"
    )
    print(markdown_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(results, args.out / f"finetune_{device.split(':')[0]}.json")
    save_plot(results, args.out / f"finetune_{device.split(':')[0]}.png")


if __name__ == "__main__":
    main()
