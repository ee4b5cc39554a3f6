"""Training checkpoints resume exactly, also after stages were unfrozen mid-training."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import zooadapt as za

STEPS = textwrap.dedent(
    """
    import torch
    import zooadapt as za

    def batch(step):
        g = torch.Generator().manual_seed(100 + step)
        return torch.rand(4, 1, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)

    def train(model, optimizer, steps):
        model.train()
        for step in steps:
            x, y = batch(step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
)
namespace: dict = {}
exec(STEPS, namespace)
train = namespace["train"]


def start():
    torch.manual_seed(0)
    model = za.adapt("resnet18", num_classes=3, in_chans=1, pretrained=False)
    za.freeze(model)
    optimizer = za.optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    return model, optimizer


def test_resume_in_a_new_process_matches_an_uninterrupted_run(tmp_path):
    model, optimizer = start()
    train(model, optimizer, range(3))
    za.unfreeze(model, "layer4", optimizer=optimizer, lr=1e-4)
    train(model, optimizer, range(3, 5))
    za.save_training(model, tmp_path / "run.pt", optimizer, step=5)
    train(model, optimizer, range(5, 7))
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    script = STEPS + textwrap.dedent(
        f"""
        state = za.load_training({str(tmp_path / "run.pt")!r})
        assert state.extra == {{"step": 5}}
        train(state.model, state.optimizer, range(5, 7))
        torch.save(state.model.state_dict(), {str(tmp_path / "resumed.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert set(resumed) == set(uninterrupted)
    for key, tensor in uninterrupted.items():
        assert torch.equal(resumed[key], tensor), key


def test_resume_restores_trainable_set_frozen_norms_and_named_groups(tmp_path):
    model, optimizer = start()
    za.unfreeze(model, "layer4", optimizer=optimizer, lr=1e-4)
    za.save_training(model, tmp_path / "run.pt", optimizer)
    state = za.load_training(tmp_path / "run.pt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in state.model.named_parameters() if p.requires_grad} == trainable
    assert za.freeze_state(state.model) == za.freeze_state(model)
    names = {id(p): n for n, p in state.model.named_parameters()}
    restored = [[names[id(p)] for p in g["params"]] for g in state.optimizer.param_groups]
    original_names = {id(p): n for n, p in model.named_parameters()}
    assert restored == [
        [original_names[id(p)] for p in g["params"]] for g in optimizer.param_groups
    ]
    assert [g.get("name") for g in state.optimizer.param_groups] == [
        g.get("name") for g in optimizer.param_groups
    ]
    assert [g["lr"] for g in state.optimizer.param_groups] == [
        g["lr"] for g in optimizer.param_groups
    ]
    state.model.train()
    assert state.model.bn1.training is True  # flag set, but the pre-hook holds the stats
    before = state.model.bn1.running_mean.clone()
    state.model(torch.rand(2, 1, 32, 32))
    assert torch.equal(state.model.bn1.running_mean, before)


def test_scheduler_state_is_restored(tmp_path):
    model, optimizer = start()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    za.save_training(model, tmp_path / "run.pt", optimizer, scheduler)
    state = za.load_training(
        tmp_path / "run.pt",
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    )
    assert state.scheduler.last_epoch == 3
    assert [g["lr"] for g in state.optimizer.param_groups] == [
        g["lr"] for g in optimizer.param_groups
    ]


def test_optimizer_with_foreign_tensors_is_refused(tmp_path):
    model, _ = start()
    stranger = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(za.CheckpointError, match="not parameters"):
        za.save_training(model, tmp_path / "run.pt", stranger)
    assert not (tmp_path / "run.pt").exists()


def test_a_plain_weights_file_is_not_a_training_checkpoint(tmp_path):
    model, _ = start()
    za.save(model, tmp_path / "w.safetensors")
    with pytest.raises(za.CheckpointError, match="save_training"):
        za.load_training(tmp_path / "w.safetensors")
