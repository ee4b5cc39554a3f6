"""Frozen fine-tuning step time vs inference-only forward time (issue 4), on CPU.

For each model, copies with the same weights are measured side by side, one step of each
per round in rotating order (so that load from other processes hits all of them alike):

- ``inference``: ``model.eval()`` forward under ``torch.no_grad()``;
- ``zooadapt``: ``za.freeze(model)`` + ``za.optimizer(model, lr=1e-3)``, ``model.train()``;
- ``naive``: ``requires_grad=False`` on all but the head, ``AdamW`` over
  ``filter(requires_grad)``, BatchNorm left in train mode (the usual recipe);
- ``full``: everything trainable, for reference, timed after the others (``--no-full``
  skips it).

A train step is forward + cross-entropy + backward + ``optimizer.step()`` + ``zero_grad``.
Times are medians; a ratio is the median over rounds of (train step / inference forward)
in the same round.
Saved-activation bytes are the tensors autograd saves for backward in one step, each
storage counted once, parameters not counted. Example::

    python benchmarks/bench_freeze.py --models resnet50 densenet121 vgg16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from _machine import cpu_name
from torch import nn

import zooadapt as za
from zooadapt.memory import measure_step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121", "vgg16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    return parser.parse_args()


def head_modules(model: nn.Module) -> list[nn.Module]:
    return [model.get_submodule(path) for path in za.anatomy(model).head]


def naive_freeze(model: nn.Module) -> torch.optim.Optimizer:
    """The seed recipe: requires_grad=False except the head, BN untouched."""
    for param in model.parameters():
        param.requires_grad = False
    for head in head_modules(model):
        for param in head.parameters():
            param.requires_grad = True
    return torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> Callable[[], None]:
    def step() -> None:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def inference_step(model: nn.Module, x) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def saved_bytes(model: nn.Module, x, y) -> int:
    """Bytes saved for backward in one step, each storage once, parameters excluded."""
    loss = lambda out: nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)  # noqa: E731
    return measure_step(model, x, None, loss=loss).activations


def frozen_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Frozen parameters and every buffer (BatchNorm statistics)."""
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    return frozen | {n: b.clone() for n, b in model.named_buffers()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> int:
    now = dict(model.named_parameters()) | dict(model.named_buffers())
    return sum(not torch.equal(now[n], v) for n, v in before.items())


def measure(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Times of each step; one of each per round, the order rotating every round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    labels = list(steps)
    for i in range(args.warmup + args.steps):
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            start = time.perf_counter()
            steps[label]()
            if i >= args.warmup:
                times[label].append(time.perf_counter() - start)
    return times


def bench_model(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    base = za.adapt(name, num_classes=args.num_classes, pretrained=False)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.num_classes, (args.batch,))
    models = {"inference": copy.deepcopy(base).eval(), "zooadapt": copy.deepcopy(base)}
    models["naive"] = copy.deepcopy(base)
    if not args.no_full:
        models["full"] = base
    za.freeze(models["zooadapt"])
    steps = {
        "inference": inference_step(models["inference"], x),
        "zooadapt": train_step(models["zooadapt"], za.optimizer(models["zooadapt"], lr=1e-3), x, y),
        "naive": train_step(models["naive"], naive_freeze(models["naive"]), x, y),
    }
    if "full" in models:
        steps["full"] = train_step(models["full"], za.optimizer(models["full"], lr=1e-3), x, y)
    for label in ("zooadapt", "naive", "full"):
        if label in models:
            models[label].train()
    snapshots = {k: frozen_snapshot(models[k]) for k in ("zooadapt", "naive")}
    full_step = steps.pop("full", None)
    times = measure(steps, args)
    if full_step is not None:  # apart: its large allocations would slow whatever runs next
        times |= measure({"full": full_step}, args)
    result: dict = {k: statistics.median(v) for k, v in times.items()}
    for label in ("zooadapt", "naive"):  # paired per round: load from others cancels out
        pairs = zip(times[label], times["inference"], strict=True)
        result[f"{label}_ratio"] = statistics.median(t / base for t, base in pairs)
    result["changed"] = {k: changed(models[k], snap) for k, snap in snapshots.items()}
    result["saved"] = {k: saved_bytes(models[k], x, y) for k in ("zooadapt", "naive")}
    full = models.get("full") or copy.deepcopy(base).train()
    for param in full.parameters():
        param.requires_grad = True
    result["saved"]["full"] = saved_bytes(full, x, y)
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {cpu_name()}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, {args.size} px, "
        f"{args.warmup} warm-up + {args.steps} timed rounds; medians, ratios paired per round"
    )
    header = (
        "| model | inference ms | zooadapt step ms | zooadapt / inference | naive step ms "
        "| naive / inference | full step ms | frozen tensors changed (za / naive) "
        "| saved MB full | saved MB zooadapt | saved MB naive |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for name in args.models:
        r = bench_model(name, args)
        inf = r["inference"]
        full = f"{r['full'] * 1e3:.0f}" if "full" in r else "-"
        mb = {k: v / 2**20 for k, v in r["saved"].items()}
        print(
            f"| {name} | {inf * 1e3:.0f} | {r['zooadapt'] * 1e3:.0f} | "
            f"{r['zooadapt_ratio']:.3f} | {r['naive'] * 1e3:.0f} | {r['naive_ratio']:.3f} | "
            f"{full} | {r['changed']['zooadapt']} / {r['changed']['naive']} | "
            f"{mb['full']:.1f} | {mb['zooadapt']:.3f} | {mb['naive']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
