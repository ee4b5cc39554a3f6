"""A 3-D DenseNet121 for two-channel volumes, three classes: memory and step time (issue 16).

For each freeze setting (full fine-tuning, the last dense block and the head, the head
alone) it prints the meta-device estimate (``za.estimate_memory``) at several batch sizes,
the largest batch that fits a budget (``za.max_batch_size``), and a measured CPU step
(``za.bench``: accounted bytes, to compare with the estimate's total, and step time) at
one batch size::

    python benchmarks/bench_volumes.py --input-size 96 --batches 2 4 8 --measure-batch 2
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import cpu_name

import zooadapt as za

SETTINGS = {"none": "full", "last": "last block + head", "backbone": "head only"}
MIB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--measure-batch", type=int, default=2)
    parser.add_argument("--budget", default="24GiB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = za.adapt("monai/densenet121", num_classes=3, in_chans=2, pretrained=False)
    size = (args.input_size,) * 3
    start = time.perf_counter()
    rows = []
    for setting, label in SETTINGS.items():
        freeze = {"none": None, "last": "block3", "backbone": "backbone"}[setting]
        estimates = [
            za.estimate_memory(model, batch_size=b, input_size=size, freeze=freeze)
            for b in args.batches
        ]
        fits = za.max_batch_size(model, args.budget, input_size=size, freeze=freeze)
        measured = za.bench(
            model, settings=[setting], batch_size=args.measure_batch, input_size=size,
            device="cpu", warmup=1, steps=args.steps, progress=False, num_classes=3,
        )[0]  # fmt: skip
        at_measured = za.estimate_memory(
            model, batch_size=args.measure_batch, input_size=size, freeze=freeze
        )
        rows.append((label, estimates, fits, measured, at_measured))
    elapsed = time.perf_counter() - start
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"monai/densenet121, 2 channels, 3 classes, {args.input_size}^3, AdamW ({elapsed:.0f} s)")
    batches = " | ".join(f"estimate batch {b} MiB" for b in args.batches)
    print(
        f"| trains | trainable / total | {batches} | fits {args.budget} | "
        f"measured batch {args.measure_batch} MiB (estimate) | CPU step s |"
    )
    print("|---" * (5 + len(args.batches)) + "|")
    for label, estimates, fits, measured, at_measured in rows:
        totals = " | ".join(f"{e.total / MIB:,.1f}" for e in estimates)
        print(
            f"| {label} | {measured.trainable:,} / {measured.total:,} | {totals} | {fits} | "
            f"{measured.accounted_bytes / MIB:,.1f} ({at_measured.total / MIB:,.1f}) | "
            f"{measured.step_ms / 1000:.2f} |"
        )


if __name__ == "__main__":
    main()
