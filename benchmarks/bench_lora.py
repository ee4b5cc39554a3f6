"""Full vs LoRA vs frozen-backbone fine-tuning of three ViT-B/16s (issue 17).

torchvision's ``vit_b_16``, timm's ``vit_base_patch16_224`` and transformers'
``ViTForImageClassification`` (its default config, ViT-B/16), random weights, 10 classes.
For each setting ``za.bench`` measures the CPU step and the accounted memory, and
``za.estimate_memory`` the estimate; the adapters-only column is the bytes that
``za.save(model, path, adapters_only=True)`` writes (adapters, head and stem)::

    python benchmarks/bench_lora.py --batch-size 4 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import transformers
from _machine import cpu_name

import zooadapt as za
from zooadapt.bench import setting_options
from zooadapt.saving import adapters_only_state

MIB = 2**20


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    config = transformers.ViTConfig(num_labels=10)
    return {
        "torchvision vit_b_16": za.adapt("vit_b_16", pretrained=False, num_classes=10),
        "timm vit_base_patch16_224": za.adapt(
            "timm/vit_base_patch16_224", pretrained=False, num_classes=10
        ),
        "transformers ViT-B/16": transformers.ViTForImageClassification(config),
    }


def adapters_only_bytes(model: torch.nn.Module) -> int:
    """What an adapters-only file holds: the adapters, the head and the stem."""
    lora = za.lora(copy.deepcopy(model), **setting_options("lora")["lora"])
    return sum(t.numel() * t.element_size() for t in adapters_only_state(lora).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for label, model in models().items():
        results = za.bench(
            model, settings=["none", "lora", "backbone"], batch_size=args.batch_size,
            input_size=224, device="cpu", warmup=1, steps=args.steps, progress=False,
        )  # fmt: skip
        small = adapters_only_bytes(model)
        full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        for result in results:
            estimate = za.estimate_memory(
                model, batch_size=args.batch_size, input_size=224, **setting_options(result.setting)
            )
            rows.append((label, result, estimate, small if result.setting == "lora" else full))
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"batch {args.batch_size}, 224 px, AdamW, {time.perf_counter() - start:.0f} s")
    columns = "trainable / total | step s | accounted MiB | estimate MiB | checkpoint MiB"
    print(f"| model | setting | {columns} |")
    print("|---|---|---|---|---|---|---|")
    for label, r, e, size in rows:
        print(
            f"| {label} | {r.setting} | {r.trainable:,} / {r.total:,} | {r.step_ms / 1e3:.2f} | "
            f"{r.accounted_bytes / MIB:,.1f} | {e.total / MIB:,.1f} | {size / MIB:,.1f} |"
        )


if __name__ == "__main__":
    main()
