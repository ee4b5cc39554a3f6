"""Head training on a FeatureCache vs through the frozen backbone: time per epoch.

One model (``pretrained=False``, ``freeze="backbone"``), random images in fixed batches,
two copies with the same weights:

- ``backbone``: every epoch runs ``model.eval()`` forward + cross-entropy + backward +
  ``AdamW.step()`` over the head's parameters;
- ``cache``: ``za.FeatureCache(model, batches)`` once (the extraction, timed on its own),
  then the same steps on ``cache.classifier(model)`` over the cached features, moved to
  the device batch by batch; ``--disk`` adds a disk cache in a temporary directory.

Epoch 1 of the backbone run includes warm-up, so the comparison is the mean time per
epoch over epochs 2 and later. Both runs see the same batches in the same order, so
their heads end equal (the last column; exact on CPU). Example::

    python benchmarks/bench_cache.py --model resnet50 --size 128 --images 256 --batch 32
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_name
from torch import nn

import zooadapt as za
from zooadapt.features import FeatureCache

TARGET = 20.0  # cache epochs 2+ at least this many times faster


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--disk", action="store_true", help="also time a disk cache")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is warm-up)")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return time.perf_counter() - start, result


def make_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    sizes = [args.batch] * (args.images // args.batch)
    sizes += [args.images % args.batch] if args.images % args.batch else []
    return [
        (
            torch.rand(n, 3, args.size, args.size, generator=generator),
            torch.randint(0, args.num_classes, (n,), generator=generator),
        )
        for n in sizes
    ]


def train_epochs(
    model: nn.Module,
    head: nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    args: argparse.Namespace,
    device: torch.device,
) -> list[float]:
    """Seconds per epoch of head training, ``model`` mapping a batch to logits."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def epoch() -> None:
        for inputs, targets in batches():
            inputs, targets = inputs.to(device), targets.to(device)
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return [timed(epoch, device)[0] for _ in range(args.epochs)]


def head_of(model: nn.Module) -> nn.Module:
    (path,) = za.anatomy(model).head
    return model.get_submodule(path)


def bench_backbone(base: nn.Module, data, args, device) -> dict:
    model = copy.deepcopy(base).eval()
    epochs = train_epochs(model, head_of(model), lambda: data, args, device)
    return {"extract": None, "epochs": epochs, "head": head_of(model)}


def bench_cache(base: nn.Module, data, args, device, path: Path | None) -> dict:
    model = copy.deepcopy(base)
    extract, cache = timed(lambda: FeatureCache(model, data, path=path), device)
    if path is not None:
        cache = FeatureCache.load(path)  # read back from disk, as a later run would
    classifier = cache.classifier(model)
    epochs = train_epochs(classifier, cache.head(model), cache.batches, args, device)
    return {"extract": extract, "epochs": epochs, "head": cache.head(model)}


def max_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((pa - pb).abs().max()) for pa, pb in pairs)


def machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{platform.platform()}, Python {platform.python_version()}, {cpu_name()}, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{gpu}"
    )


def print_table(results: dict[str, dict], backbone_epoch: float) -> None:
    print("| method | extraction s | epoch 1 s | epochs 2+ s/epoch | speed-up epochs 2+ |")
    print("|---|---|---|---|---|")
    for method, r in results.items():
        later = statistics.mean(r["epochs"][1:])
        extract = f"{r['extract']:.3f}" if r["extract"] is not None else "-"
        print(
            f"| {method} | {extract} | {r['epochs'][0]:.3f} | {later:.4f} | "
            f"{backbone_epoch / later:.1f}x |"
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = za.adapt(args.model, num_classes=args.num_classes, pretrained=False, freeze="backbone")
    base.to(device)
    data = make_batches(args)
    results = {"backbone": bench_backbone(base, data, args, device)}
    results["cache (memory)"] = bench_cache(base, data, args, device, None)
    if args.disk:
        with tempfile.TemporaryDirectory() as directory:
            results["cache (disk)"] = bench_cache(base, data, args, device, Path(directory))
    print(f"command: python benchmarks/bench_cache.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"settings: {vars(args)}")
    print(f"machine: {machine(device)}")
    print()
    backbone_epoch = statistics.mean(results["backbone"]["epochs"][1:])
    print_table(results, backbone_epoch)
    print()
    for method, r in list(results.items())[1:]:
        speedup = backbone_epoch / statistics.mean(r["epochs"][1:])
        verdict = "met" if speedup >= TARGET else "NOT met"
        difference = max_difference(results["backbone"]["head"], r["head"])
        print(
            f"{method}: {speedup:.1f}x faster per epoch 2+ (target {TARGET:.0f}x: {verdict}); "
            f"max |head weight difference| vs backbone run: {difference:.2e}"
        )


if __name__ == "__main__":
    main()
