r"""Fine-tune any zoo model on an image folder or scikit-learn's digits, end to end.

Frozen pretrained MobileNetV2 on the digits (8x8 gray images upscaled to 64 px, 1 channel):

    python examples/finetune.py --model mobilenet_v2 --pretrained IMAGENET1K_V1 \
        --dataset digits --freeze backbone --epochs 10

Gradual unfreezing with discriminative learning rates, then save the result:

    python examples/finetune.py --model resnet18 --data photos/ --freeze backbone \
        --unfreeze-at 3:layer4 6:layer3 --lr-range 1e-4 1e-3 --out tuned.safetensors

LoRA adapters of rank 8 on the pointwise convolutions, with the head:

    python examples/finetune.py --model mobilenet_v2 --pretrained IMAGENET1K_V1 \
        --dataset digits --lora 8 --lora-targets conv --epochs 10

Head only, trained on features the frozen backbone computes once:

    python examples/finetune.py --model resnet50 --data photos/ --feature-cache

The same commands run unchanged on several processes (DistributedDataParallel):

    torchrun --nproc-per-node 2 examples/finetune.py --dataset digits --epochs 3

``--data`` is an ImageFolder directory: ``train/`` and ``val/`` class folders if it has
them, else one folder of class folders split 80/20. The folder names become the model's
class names (``za.labels``, kept by ``za.save``); a name the pretrained weights know keeps
its pretrained head row. Images are fed through ``za.transforms(model)``: the statistics of
the adapted model (gray ones for the digits), at ``--size`` when given. Needs
``pip install scikit-learn`` for ``--dataset digits``; shows progress bars when tqdm is
installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import zooadapt as za
from zooadapt.freeze import FreezeSpec

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    tqdm = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a registry name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="an ImageFolder directory")
    source.add_argument("--dataset", choices=["digits"], default="digits")
    parser.add_argument("--pretrained", default="default", help="default, none, a tag, a file")
    parser.add_argument("--freeze", default="backbone", help="backbone, a group, an int, none")
    parser.add_argument("--bn", default="frozen", choices=["frozen", "eval", "train"])
    parser.add_argument("--unfreeze-at", nargs="*", default=[], metavar="EPOCH:GROUP")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head")
    parser.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--unfreeze-lr", type=float, help="lr of unfrozen groups (lr / 10)")
    parser.add_argument("--feature-cache", action="store_true", help="train the head on cache")
    parser.add_argument("--lora", type=int, metavar="R", help="LoRA adapters of rank R (za.lora)")
    parser.add_argument("--lora-targets", default="attention", help="roles or module regexes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, help="image side (default: the model's; 64 for digits)")
    parser.add_argument("--limit", type=int, help="use at most N train and N test images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="save the fine-tuned model (za.save)")
    args = parser.parse_args(argv)
    if args.feature_cache and (args.freeze != "backbone" or args.unfreeze_at):
        parser.error("--feature-cache needs --freeze backbone and no --unfreeze-at")
    return args


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one: (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return dist.get_rank(), world, torch.device(device)


#: Side the 8x8 digits are upscaled to unless ``--size`` says otherwise.
DIGITS_SIZE = 64


def digits_classes() -> tuple[list[str], int]:
    """The digits' class names and channels."""
    return [str(digit) for digit in range(10)], 1


def folder_classes(root: Path) -> tuple[list[str], int]:
    """An ImageFolder's class names (its sub-folders, sorted) and channels (RGB)."""
    from torchvision.datasets.folder import find_classes

    return find_classes(root / "train" if (root / "train").is_dir() else root)[0], 3


def preprocessing(model: nn.Module, size: int | None, train: bool = False):
    """``za.transforms(model)``, at ``size`` pixels when given."""
    config = za.data_config(model)
    if size is not None:
        config = dataclasses.replace(
            config, input_size=(config.in_chans, size, size), resize_size=None
        )
    return za.transforms(config=config, train=train)


def load_digits(model: nn.Module, size: int | None, seed: int) -> tuple[Dataset, Dataset]:
    """scikit-learn's digits (8x8, values 0..16) through the model's eval transforms."""
    from sklearn.datasets import load_digits as digits
    from sklearn.model_selection import train_test_split

    bunch = digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = preprocessing(model, size or DIGITS_SIZE)(images)  # batched: resize, crop, normalise
    y = torch.tensor(bunch.target)
    train, test = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=y)
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def load_folder(
    model: nn.Module, root: Path, size: int | None, seed: int
) -> tuple[Dataset, Dataset]:
    """An ImageFolder: ``train/`` and ``val/`` (or ``test/``), else split 80/20."""
    from torchvision import datasets

    augment, plain = preprocessing(model, size, train=True), preprocessing(model, size)
    held_out = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        return datasets.ImageFolder(root / "train", augment), datasets.ImageFolder(held_out, plain)
    train, test = datasets.ImageFolder(root, augment), datasets.ImageFolder(root, plain)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(0.8 * len(order))
    return torch.utils.data.Subset(train, order[:cut]), torch.utils.data.Subset(test, order[cut:])


def limited(data: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples (all when ``limit`` is None)."""
    return torch.utils.data.Subset(data, range(min(limit, len(data)))) if limit else data


def spec(text: str) -> FreezeSpec:
    """A freeze spec: ``none``/``all`` -> None, an int, ``a,b`` -> a list, or a group."""
    if text in ("none", "all"):
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return text.split(",") if "," in text else text


def build_model(args: argparse.Namespace, classes: list[str], in_chans: int) -> nn.Module:
    """Adapt the zoo model to the data's classes and channels, freeze what ``--freeze`` says."""
    lowered = args.pretrained.lower()
    pretrained = {"none": False, "default": True}.get(lowered, args.pretrained)
    model = za.adapt(args.model, classes=classes, in_chans=in_chans, pretrained=pretrained)
    if args.lora:  # adapters and head train; the base is frozen with the --bn policy
        targets = args.lora_targets.split(",")
        return za.lora(model, r=args.lora, targets=targets, bn=args.bn)
    return za.freeze(model, spec(args.freeze), bn=args.bn)  # "none" freezes nothing


def progress(batches: Iterable, desc: str, show: bool, total: int | None = None) -> Iterable:
    """A tqdm bar over ``batches`` when tqdm is installed and ``show`` is true."""
    if tqdm is None or not show:
        return batches
    return tqdm(batches, desc=desc, total=total, leave=False)


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    opt: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over ``batches``: (mean loss, accuracy) of this process."""
    model.train()
    seen, correct, total_loss = 0, 0, 0.0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        total_loss += loss.item() * len(targets)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int, device: torch.device) -> float:
    """Accuracy of ``model`` on ``data``."""
    model.eval()
    correct = 0
    for inputs, targets in DataLoader(data, batch_size=batch_size):
        correct += int((model(inputs.to(device)).argmax(1).cpu() == targets).sum())
    return correct / len(data)


def parallel(module: nn.Module, world: int, device: torch.device) -> nn.Module:
    """Wrap in DDP when distributed; DDP syncs only what is trainable when it is built."""
    if world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def fit(
    model: nn.Module,
    loader: DataLoader,
    args: argparse.Namespace,
    world: int,
    device: torch.device,
    show: bool,
) -> None:
    """Train through the model, unfreezing groups at the ``--unfreeze-at`` epochs."""
    opt = za.optimizer(model, lr=tuple(args.lr_range) if args.lr_range else args.lr)
    milestones = {int(e): spec(g) for e, g in (item.split(":", 1) for item in args.unfreeze_at)}
    unfreeze_lr = args.unfreeze_lr or float(opt.defaults["lr"]) / 10
    schedule = za.FineTuneSchedule(model, opt, milestones, lr=unfreeze_lr, initial=None)
    net = parallel(model, world, device)
    for epoch in range(args.epochs):
        if schedule.step(epoch):
            net = za.rewrap(net)  # DDP must sync the newly trainable tensors too
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        batches = progress(loader, f"epoch {epoch}", show)
        loss, acc = train_epoch(net, batches, opt, device)
        if show:
            print(
                f"epoch {epoch}: loss {loss:.4f}  train accuracy {acc:.4f}  "
                f"trainable {sum(p.numel() for p in model.parameters() if p.requires_grad):,}"
            )


def fit_on_cache(
    model: nn.Module,
    loader: DataLoader,
    args: argparse.Namespace,
    world: int,
    device: torch.device,
    show: bool,
) -> None:
    """Run the frozen backbone once, then train only the head on the cached features."""
    cache = za.FeatureCache(model, loader, progress=show)
    classifier = parallel(cache.classifier(model), world, device)
    opt = za.optimizer(model, lr=args.lr)  # the head's tensors: the classifier's own
    order = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        batches = cache.batches(shuffle=True, generator=order, device=device)
        batches = progress(batches, f"epoch {epoch}", show, total=len(cache.batch_sizes))
        loss, acc = train_epoch(classifier, batches, opt, device)
        if show:
            print(f"epoch {epoch}: loss {loss:.4f}  train accuracy {acc:.4f}  (cached features)")


def main(argv: list[str] | None = None) -> float:
    """Fine-tune, print the test accuracy (rank 0) and return it."""
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    torch.manual_seed(args.seed)
    classes, chans = folder_classes(args.data) if args.data is not None else digits_classes()
    model = build_model(args, classes, chans)
    if args.data is not None:
        train, test = load_folder(model, args.data, args.size, args.seed)
    else:
        train, test = load_digits(model, args.size, args.seed)
    train, test = limited(train, args.limit), limited(test, args.limit)
    model = model.to(device)
    sampler = DistributedSampler(train, seed=args.seed) if world > 1 else None
    shuffle = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        train, args.batch_size, shuffle=sampler is None, sampler=sampler, generator=shuffle
    )
    show = rank == 0
    if show:
        print(za.summary(model))
    train_head = fit_on_cache if args.feature_cache else fit
    train_head(model, loader, args, world, device, show)
    accuracy = evaluate(model, test, args.batch_size * 2, device) if rank == 0 else 0.0
    if rank == 0:
        print(f"test accuracy: {accuracy:.4f} ({len(test)} images, {args.model})")
        if args.out is not None:
            print(f"saved {za.save(model, args.out)}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return accuracy


if __name__ == "__main__":
    main()
