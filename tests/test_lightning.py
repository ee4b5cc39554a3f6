"""ZooAdaptFinetuning: gradual unfreezing in Lightning that resumes exactly."""

from __future__ import annotations

import functools
import importlib
import re
import socket
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import zooadapt as za

L = pytest.importorskip("lightning.pytorch")
from zooadapt.lightning import ZooAdaptFinetuning  # noqa: E402

SCHEDULE = {1: "layer4", 3: "layer3"}


class Classifier(L.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = za.adapt("resnet18", num_classes=3, pretrained=False)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(self.model(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return za.optimizer(self.model, lr=1e-2)  # sees only what setup left trainable


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(7)
    inputs = torch.rand(16, 3, 32, 32, generator=g)
    data = TensorDataset(inputs, torch.randint(0, 3, (16,), generator=g))
    return DataLoader(data, batch_size=8, shuffle=False)


def fit(
    module: Classifier, epochs: int, root: Path, unfreeze: dict = SCHEDULE, **kwargs
) -> L.Trainer:
    callback = ZooAdaptFinetuning(unfreeze=unfreeze, lr=1e-3)
    checkpoint = kwargs.pop("checkpoint", None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint is not None,
        callbacks=[callback] + ([checkpoint] if checkpoint else []),
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few workers, small batches, ...
        trainer.fit(module, loader(), **kwargs)
    return trainer


def groups(trainer: L.Trainer, model: torch.nn.Module) -> list[tuple[str, float, list[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["name"], g["lr"], [names[id(p)] for p in g["params"]])
        for g in trainer.optimizers[0].param_groups
    ]


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    whole = Classifier(seed=0)
    straight = fit(whole, 4, tmp_path / "straight")

    first = Classifier(seed=0)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(first, 2, tmp_path / "first", checkpoint=saver)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    opt_groups = saved["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in opt_groups] == ["head", "head.no_decay", "layer4", "layer4.no_decay"]

    second = Classifier(seed=1)  # a new process: the weights come from the checkpoint
    resumed = fit(second, 4, tmp_path / "second", ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert trainable(second.model) == trainable(whole.model)
    assert trainable(whole.model) == {
        n for n, _ in whole.model.named_parameters() if n.startswith(("layer3", "layer4", "fc"))
    }
    assert groups(resumed, second.model) == groups(straight, whole.model)
    assert [g[0] for g in groups(straight, whole.model)] == [
        "head",
        "head.no_decay",
        "layer4",
        "layer4.no_decay",
        "layer3",
        "layer3.no_decay",
    ]
    assert za.freeze_state(second.model) == za.freeze_state(whole.model)
    assert_same_state(straight, whole, resumed, second)


def assert_same_state(
    straight: L.Trainer, whole: Classifier, resumed: L.Trainer, second: Classifier
) -> None:
    """The resumed run ends with the uninterrupted run's tensors and optimizer state."""
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    state = straight.optimizers[0].state_dict()["state"]
    again = resumed.optimizers[0].state_dict()["state"]
    assert state.keys() == again.keys()
    for index, values in state.items():
        assert all(torch.equal(values[k], again[index][k]) for k in values), index


def test_lightning_backbone_finetuning_refreezes_on_resume(tmp_path: Path) -> None:
    """Why this callback exists: Lightning's own callback loses the unfreeze on resume."""

    class Backbone(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 2)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int):
            return F.cross_entropy(self.head(self.backbone(batch[0])), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    data = DataLoader(TensorDataset(torch.rand(8, 4), torch.randint(0, 2, (8,))), batch_size=4)

    def run(epochs: int, **kwargs) -> Backbone:
        module = Backbone()
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[L.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=1)],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, data, **kwargs)
        trainer.save_checkpoint(tmp_path / "bf.ckpt")
        return module

    assert run(2).backbone.weight.requires_grad
    assert not run(3, ckpt_path=tmp_path / "bf.ckpt").backbone.weight.requires_grad


def test_callback_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(za.OptimizerError, match="lr or lr_factor"):
        ZooAdaptFinetuning(lr=1e-3, lr_factor=0.1)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "zooadapt.lightning")
    with pytest.raises(ImportError, match=r"pip install 'zooadapt\[lightning\]'"):
        importlib.import_module("zooadapt.lightning")


class Replicas(L.Callback):
    """Writes on rank 0 whether every process ends with the same weights."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: Classifier) -> None:
        mine = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])
        every = trainer.strategy.all_gather(mine)
        if trainer.global_rank == 0:
            self.path.write_text(str(bool((every == every[0]).all())))


def test_ddp_syncs_unfrozen_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP reduces only what was trainable when built: the callback rebuilds it."""
    with socket.socket() as probe:  # Lightning would leave its port in os.environ
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(probe.getsockname()[1]))
    module, result = Classifier(seed=0), tmp_path / "identical"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[ZooAdaptFinetuning(unfreeze={1: "layer4"}, lr=1e-3), Replicas(result)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader())
    assert result.read_text() == "True"


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    if "## With Lightning" not in readme:
        pytest.skip("the README has no 'With Lightning' section")
    section = readme.split("## With Lightning", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the Trainer writes checkpoints/ here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == str(
        ["head", "head.no_decay", "layer4", "layer4.no_decay", "layer3", "layer3.no_decay"]
    )


def test_lora_adapters_train_under_the_callback_and_the_base_stays(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    module = LoraClassifier(0)
    base = {n: t.clone() for n, t in module.model.state_dict().items() if "lora_" not in n}
    adapters = {n: p.clone() for n, p in module.model.named_parameters() if "lora_B" in n}
    callback = ZooAdaptFinetuning(freeze="backbone")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[callback],
        default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader())
    state = module.model.state_dict()
    head = set(za.anatomy(module.model).groups["head"])
    assert all(torch.equal(state[n], t) for n, t in base.items() if n not in head)
    assert all(not torch.equal(state[n], t) for n, t in adapters.items())  # they trained


class LoraClassifier(Classifier):
    """A small timm ViT with LoRA r=2 on its attention."""

    def __init__(self, seed: int) -> None:
        L.LightningModule.__init__(self)
        torch.manual_seed(seed)
        small = {"img_size": 32, "patch_size": 8, "depth": 2}
        self.model = za.adapt(
            "timm/vit_tiny_patch16_224", pretrained=False, num_classes=3, lora={"r": 2}, **small
        )


def test_a_lora_run_with_a_schedule_resumes_exactly(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    schedule = {2: "blocks.1"}  # the last block's base tensors join the adapters at epoch 2
    run = functools.partial(fit, unfreeze=schedule)
    whole = LoraClassifier(seed=0)
    straight = run(whole, 4, tmp_path / "straight")
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    run(LoraClassifier(seed=0), 1, tmp_path / "first", checkpoint=saver)
    second = LoraClassifier(seed=1)
    resumed = run(second, 4, tmp_path / "second", ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    adapters = set(za.adapter_names(whole.model))
    block = set(za.anatomy(whole.model).groups["blocks.1"]) - adapters
    assert "blocks.1.attn.qkv.base_layer.weight" in block
    assert trainable(whole.model) == adapters | block | {"head.weight", "head.bias"}
    assert trainable(second.model) == trainable(whole.model)
    assert groups(resumed, second.model) == groups(straight, whole.model)
    assert [g[0] for g in groups(straight, whole.model)] == [
        "blocks.0.lora",
        "blocks.1.lora",
        "head",
        "head.no_decay",
        "blocks.1",
        "blocks.1.no_decay",
    ]  # the adapters keep a part of their own when their block's base tensors join
    assert_same_state(straight, whole, resumed, second)
