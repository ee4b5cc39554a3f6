"""One rank of the distributed tests; ``tests/test_distributed.py`` launches it with torchrun.

``--mode ddp`` wraps a partially frozen ResNet-18 in DistributedDataParallel, ``--mode
fsdp`` shards it with FSDP2 (``fully_shard``, one unit per stage, then the root); both on
the CPU with gloo. A training run unfreezes ``layer3`` with ``za.FineTuneSchedule`` after
two steps, saves with ``za.save`` / ``za.save_training`` from every rank, then takes one
more step; ``--resume`` takes that step again from the training checkpoint. Each rank
leaves its complete state dict and a JSON report in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import zooadapt as za
from zooadapt._core.distributed import rewrap

STAGES = ("layer1", "layer2", "layer3", "layer4", "fc")
MILESTONES = {1: "layer3"}  # epoch -> unfreeze spec
STEPS_PER_EPOCH = 2
EPOCHS = 2


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-specific data, so that only gradient averaging keeps the ranks identical."""
    generator = torch.Generator().manual_seed(1000 * dist.get_rank() + step)
    x = torch.rand(4, 3, 32, 32, generator=generator)
    return x, torch.randint(0, 5, (4,), generator=generator)


def build() -> nn.Module:
    """The same partially frozen model on every rank."""
    torch.manual_seed(0)
    model = za.adapt("resnet18", num_classes=5, pretrained=False)
    return za.freeze(model, "layer3")


def wrap(model: nn.Module, mode: str) -> nn.Module:
    """DDP around ``model``, or ``model`` sharded in place by FSDP2."""
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for name in STAGES:
        fully_shard(model.get_submodule(name))
    return fully_shard(model)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """One optimizer step on this rank's batch."""
    model.train()
    x, y = batch(step)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank's complete copy of the weights (DTensors gathered collectively)."""
    state = za.unwrap(model).state_dict()
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in state.items()
    }


def outputs(model: nn.Module) -> torch.Tensor:
    """Eval-mode outputs on a fixed input (every rank runs it: FSDP gathers weights)."""
    inner = za.unwrap(model)
    inner.eval()
    with torch.no_grad():
        result = inner(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)))
    inner.train()
    return result


def train(mode: str, out: Path) -> dict:
    """Train with gradual unfreezing, save from every rank, then take one more step."""
    model = build()
    if dist.get_rank() == 0:
        torch.save(model.state_dict(), out / "initial.pt")
    wrapped = wrap(model, mode)
    optimizer = za.optimizer(wrapped, "adamw", lr=1e-3, weight_decay=0.01)
    schedule = za.FineTuneSchedule(wrapped, optimizer, MILESTONES, lr=1e-4, initial=None)
    caught = []
    for epoch in range(EPOCHS):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            added = schedule.step(epoch)
        caught += [str(r.message) for r in records if "za.rewrap" in str(r.message)]
        if added:
            wrapped = rewrap(wrapped)
        for step in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
            train_step(wrapped, optimizer, step)
    rank = dist.get_rank()
    saved = za.save(wrapped, out / f"model_from_rank{rank}.safetensors")
    za.save(wrapped, out / "model.safetensors")
    za.save_training(wrapped, out / "training.pt", optimizer, schedule=schedule.state_dict())
    torch.save({"state": full_state(wrapped), "outputs": outputs(wrapped)}, out / f"r{rank}.pt")
    train_step(wrapped, optimizer, EPOCHS * STEPS_PER_EPOCH)
    torch.save(full_state(wrapped), out / f"r{rank}_continued.pt")
    return {
        "warnings": caught,
        "groups": [g["name"] for g in optimizer.param_groups],
        "save_returned": str(saved),
    }


def resume(mode: str, out: Path) -> dict:
    """Resume from the training checkpoint under the same world size; take the last step."""
    dist.barrier()  # the checkpoint is complete on every rank's view of the disk
    if mode == "ddp":
        training = za.load_training(out / "training.pt")
        wrapped = nn.parallel.DistributedDataParallel(training.model)
    else:
        wrapped = wrap(za.adapt("resnet18", num_classes=5, pretrained=False), mode)
        training = za.load_training(out / "training.pt", model=wrapped)
    optimizer = training.optimizer
    groups = [g["name"] for g in optimizer.param_groups]
    train_step(wrapped, optimizer, EPOCHS * STEPS_PER_EPOCH)
    torch.save(full_state(wrapped), out / f"r{dist.get_rank()}_resumed.pt")
    return {"groups": groups, "extra": training.extra}


def main() -> None:
    """Parse the arguments, run one phase on this rank, write its JSON report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ddp", "fsdp"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    try:
        phase = resume if args.resume else train
        report = phase(args.mode, args.out)
        name = f"r{dist.get_rank()}_{'resume' if args.resume else 'train'}.json"
        (args.out / name).write_text(json.dumps(report))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
