"""What the per-tensor CRC-32 costs: ``za.save`` and ``za.load`` with and without it.

``za.save`` always records the checksums; ``za.load(path, verify=False)`` skips checking
them. Each figure is the median of ``--repeats`` runs in this process, file in the page
cache, and the checksum time alone is measured over the saved tensors.

Usage:
    python benchmarks/bench_integrity.py --model vgg16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_name

import zooadapt as za
from zooadapt.saving import checksum


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = za.adapt(args.model, num_classes=10, pretrained=False)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        save = timed(lambda: za.save(model, path), args.repeats)
        crc = timed(lambda: [checksum(t) for t in tensors.values()], args.repeats)
        checked = timed(lambda: za.load(path), args.repeats)
        unchecked = timed(lambda: za.load(path, verify=False), args.repeats)
    machine = f"{cpu_name()}, torch {torch.__version__}"
    print(f"# {args.model}, {size / 2**20:.0f} MiB of tensors, {machine}")
    print("| step | median s |")
    print("|---|---|")
    print(f"| za.save (checksums included) | {save:.2f} |")
    print(f"| CRC-32 of every tensor | {crc:.2f} ({size / 2**30 / crc:.2f} GiB/s) |")
    print(f"| za.load (verify=True, default) | {checked:.2f} |")
    print(f"| za.load(verify=False) | {unchecked:.2f} |")


if __name__ == "__main__":
    main()
