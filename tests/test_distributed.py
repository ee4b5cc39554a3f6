"""Partially frozen models under DDP and FSDP2, two CPU processes with gloo (torchrun).

``tests/distributed_worker.py`` trains a ResNet-18 whose stem and ``layer1``-``layer3``
are frozen, unfreezes ``layer3`` after two steps (``za.FineTuneSchedule``; DDP is then
wrapped again with ``rewrap``), saves with ``za.save`` / ``za.save_training`` from every
rank, and resumes from the training checkpoint in a second launch. FSDP2's
``fully_shard`` runs on the CPU with gloo, so both modes run everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import zooadapt as za
from zooadapt._core.distributed import is_sharded, is_writer, rewrap

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.")  # frozen throughout
TRAINED = ("layer3.", "layer4.", "fc.")  # layer3 is unfrozen after the model was wrapped
GROUPS = ["layer4", "layer4.no_decay", "head", "head.no_decay", "layer3", "layer3.no_decay"]


def launch(mode: str, out: Path, *extra: str) -> None:
    """Run the worker on two CPU processes with torchrun; fail with its output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(WORKER), "--mode", mode, "--out", str(out), *extra]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def parameter_names() -> set[str]:
    """Names of the worker model's parameters (the rest of its state dict is buffers)."""
    model = za.adapt("resnet18", num_classes=5, pretrained=False)
    return {name for name, _ in model.named_parameters()}


def check_frozen(out: Path) -> None:
    """Frozen tensors (weights and held BatchNorm statistics) never moved on any rank."""
    initial = torch.load(out / "initial.pt")
    for rank in (0, 1):
        state = torch.load(out / f"r{rank}.pt")["state"]
        frozen = [k for k in initial if k.startswith(FROZEN)]
        moved = [k for k in frozen if not torch.equal(state[k], initial[k])]
        assert not moved, f"rank {rank} changed frozen tensors {moved[:5]}"


def check_trained(out: Path, suffix: str = "") -> None:
    """Trainable tensors, also those unfrozen after wrapping, trained and stayed equal."""
    initial = torch.load(out / "initial.pt")
    states = [torch.load(out / f"r{rank}{suffix}.pt") for rank in (0, 1)]
    states = [s.get("state", s) for s in states]
    trained = [k for k in parameter_names() if k.startswith(TRAINED)]
    apart = [k for k in trained if not torch.equal(states[0][k], states[1][k])]
    assert not apart, f"ranks disagree on {apart[:5]}"
    assert all(not torch.equal(states[0][k], initial[k]) for k in trained)


def check_checkpoint(out: Path) -> None:
    """One full, unwrapped file by rank 0; za.load rebuilds rank 0's model from it alone."""
    assert (out / "model_from_rank0.safetensors").exists()
    assert not (out / "model_from_rank1.safetensors").exists()
    rank0 = torch.load(out / "r0.pt")
    model = za.load(out / "model.safetensors").eval()
    assert model.state_dict().keys() == rank0["state"].keys()
    assert all(torch.equal(v, rank0["state"][k]) for k, v in model.state_dict().items())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(model(x), rank0["outputs"])


def check_resume(out: Path) -> None:
    """Resumed on both ranks, the next step equals that of the run that went on."""
    for rank in (0, 1):
        report = json.loads((out / f"r{rank}_resume.json").read_text())
        assert report == {"groups": GROUPS, "extra": {"schedule": {"applied": [1]}}}
    check_trained(out, "_resumed")
    continued, resumed = (torch.load(out / f"r0_{name}.pt") for name in ("continued", "resumed"))
    for name in parameter_names():
        torch.testing.assert_close(resumed[name], continued[name], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_partially_frozen_model_trains_saves_and_resumes_on_two_ranks(tmp_path, mode):
    launch(mode, tmp_path)
    reports = [json.loads((tmp_path / f"r{r}_train.json").read_text()) for r in (0, 1)]
    assert all(report["groups"] == GROUPS for report in reports)
    stale = [bool(report["warnings"]) for report in reports]
    assert stale == ([True, True] if mode == "ddp" else [False, False])
    check_frozen(tmp_path)
    check_trained(tmp_path)
    check_checkpoint(tmp_path)
    assert za.load_training(tmp_path / "training.pt").optimizer.state  # loads in one process
    launch(mode, tmp_path, "--resume")
    check_resume(tmp_path)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, destroyed afterwards."""
    init = f"file://{tmp_path / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def train_twice(model: nn.Module) -> None:
    """Two backward passes: a DDP that expects gradients of frozen tensors fails on the 2nd."""
    for _ in range(2):
        model(torch.rand(2, 3, 32, 32)).sum().backward()


def test_changing_the_trainable_set_of_a_ddp_model_warns_and_rewrap_fixes_it(process_group):
    model = za.freeze(za.adapt("resnet18", num_classes=3, pretrained=False))
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = za.optimizer(ddp, lr=1e-3)
    with pytest.warns(UserWarning, match=r"za\.rewrap"):
        za.unfreeze(ddp, "layer4", optimizer=optimizer)
    ddp = rewrap(ddp)
    assert isinstance(ddp, nn.parallel.DistributedDataParallel) and ddp.module is model
    train_twice(ddp)
    assert model.layer4[0].conv1.weight.grad is not None
    with pytest.warns(UserWarning, match=r"za\.rewrap"):
        za.freeze(ddp, "layer4")
    train_twice(rewrap(ddp))


def test_rewrap_keeps_the_wrapper_settings_and_communication_hooks(process_group):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # broadcast_buffers, in newer torch
        ddp = nn.parallel.DistributedDataParallel(
            model,
            bucket_cap_mb=7,
            find_unused_parameters=True,
            gradient_as_bucket_view=True,
            broadcast_buffers=False,
        )
    ddp.register_comm_hook(None, allreduce_hook)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        fresh = rewrap(ddp, gradient_as_bucket_view=False)
    assert fresh.bucket_bytes_cap == ddp.bucket_bytes_cap == 7 * 1024 * 1024
    assert fresh.find_unused_parameters and not fresh.broadcast_buffers
    assert ddp.gradient_as_bucket_view and not fresh.gradient_as_bucket_view
    assert fresh.process_group is ddp.process_group
    assert [hook for hook, _ in fresh._comm_hooks] == [allreduce_hook]


def test_rewrap_passes_other_models_through_and_refuses_ddp_inside_a_wrapper(process_group):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    assert rewrap(model) is model
    inside = nn.DataParallel(nn.parallel.DistributedDataParallel(model))
    with pytest.raises(za.FreezeError, match="rewrap the DDP model itself"):
        rewrap(inside)


def test_plain_models_warn_about_nothing_and_every_process_writes(process_group):
    model = za.adapt("resnet18", num_classes=3, pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        za.unfreeze(za.freeze(model), "layer4")
    assert is_writer(model) and not is_sharded(model)
    assert is_writer(nn.parallel.DistributedDataParallel(model))  # rank 0 of one
