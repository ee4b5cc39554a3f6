"""Gradual unfreezing as a Lightning callback that survives checkpoint and resume.

Needs the optional extra: ``pip install 'zooadapt[lightning]'``.

:class:`ZooAdaptFinetuning` freezes the zoo model when fitting starts (before
``configure_optimizers`` runs, so ``za.optimizer(self.model, ...)`` there sees only the
head), unfreezes groups at the epochs of its schedule and adds them to the optimizer as
named groups, once. Its checkpoint state holds what is frozen (``za.freeze_state``) and the
milestones applied. On resume it re-adds the same groups, in the same order, before
Lightning loads the optimizer's state, and restores exactly the saved freeze state: unlike
Lightning's ``BackboneFinetuning``, which freezes the backbone again on resume, a resumed
run trains the same tensors as the run that was interrupted. Under Lightning's DDP
strategies the DDP wrapper is rebuilt after each unfreeze (DDP reduces only the tensors
that were trainable when it was built).

Build the optimizer in ``configure_optimizers`` over the trainable tensors only
(``za.optimizer(self.model, ...)``): the groups added later must be new to it. LR schedulers
created there do not know the groups added later. Only the first optimizer gets groups.

Example:
    >>> class Classifier(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.model = za.adapt("resnet50", num_classes=10)
    ...     def configure_optimizers(self):
    ...         return za.optimizer(self.model, lr=1e-3)  # the head only
    >>> finetuning = ZooAdaptFinetuning(unfreeze={2: "layer4", 4: "layer3"}, lr=1e-4)
    >>> L.Trainer(callbacks=[finetuning], max_epochs=6).fit(Classifier(), loader)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zooadapt._core.plugins import PluginManager
from zooadapt.errors import OptimizerError
from zooadapt.freeze import FreezeSpec, freeze, freeze_state, load_freeze_state, unfreeze
from zooadapt.lora import ADAPTER, adapter_names
from zooadapt.optim import LearningRate
from zooadapt.schedule import FineTuneSchedule
from zooadapt.types import Family

try:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as err:  # pragma: no cover - exercised with lightning hidden
    raise ImportError(
        "zooadapt.lightning needs Lightning: pip install 'zooadapt[lightning]' "
        "(or pip install 'lightning>=2.2')"
    ) from err

__all__ = ["ZooAdaptFinetuning", "rewrap_ddp"]


class ZooAdaptFinetuning(pl.Callback):
    """Freeze at fit start, unfreeze groups on a schedule, and resume exactly.

    Hooks, in Lightning's order: ``setup`` freezes (also on resume, as the run being
    resumed did); ``load_state_dict`` keeps the checkpoint's state; ``on_fit_start``,
    which Lightning calls after ``configure_optimizers`` and before it loads the
    optimizer's state, re-adds the groups the checkpoint's run had added and restores its
    freeze state; ``on_train_epoch_start`` applies the milestones due.

    Args:
        freeze: Freeze spec applied in ``setup`` (before ``configure_optimizers``):
            ``"backbone"``, a group name, an int, a list, or ``None`` (nothing).
        unfreeze: Epoch -> unfreeze spec, as in :class:`zooadapt.FineTuneSchedule`: at the
            start of that epoch the spec is unfrozen (a group name unfreezes it and every
            group after it) and its tensors are added to the first optimizer.
        lr: Learning rate of the added groups: a number, a dict group -> lr, or a dict
            epoch -> (number or dict). ``None`` uses the optimizer's default lr (the
            head's for ``za.optimizer``).
        lr_factor: Instead of ``lr``: the added groups get ``lr_factor`` times the
            optimizer's default lr.
        bn: BatchNorm policy of the freeze (``"frozen"``, ``"eval"``, ``"train"``).
        model_attr: Attribute of the LightningModule holding the zoo model (dotted paths
            allowed); ``None``: the LightningModule itself.
        family: Force the model's family by name, or pass a :class:`Family`; once
            resolved it travels with the model to every later call.
        plugin_manager: Defaults to the one the model's family was found with, else the
            shared manager with every installed plugin.

    Raises:
        OptimizerError: If both ``lr`` and ``lr_factor`` are given; at fit start, if the
            schedule does not fit the model or there is no optimizer.
    """

    def __init__(
        self,
        freeze: FreezeSpec = "backbone",
        unfreeze: Mapping[int, FreezeSpec] | None = None,
        *,
        lr: LearningRate | Mapping[int, LearningRate] | None = None,
        lr_factor: float | None = None,
        bn: str = "frozen",
        model_attr: str | None = "model",
        family: str | Family | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> None:
        if lr is not None and lr_factor is not None:
            raise OptimizerError("pass lr or lr_factor, not both")
        self.freeze = freeze
        self.milestones = dict(unfreeze or {})
        self.lr = lr
        self.lr_factor = lr_factor
        self.bn = bn
        self.model_attr = model_attr
        self.lookup: dict[str, Any] = {"family": family, "plugin_manager": plugin_manager}
        self.schedule: FineTuneSchedule | None = None
        self._resumed: dict[str, Any] | None = None  # callback state read from a checkpoint

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (one per ``model_attr``)."""
        return self._generate_state_key(model_attr=self.model_attr)

    def zoo_model(self, pl_module: pl.LightningModule) -> nn.Module:
        """The zoo model inside ``pl_module`` that this callback freezes."""
        model = pl_module
        for part in (self.model_attr or "").split("."):
            model = getattr(model, part) if part else model
        return model

    # -- Lightning hooks, in the order Lightning calls them ----------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Freeze before ``configure_optimizers`` builds the optimizer (fit only).

        LoRA adapters (:func:`zooadapt.lora`) stay trainable: the freeze spec is for the
        base.
        """
        if stage == "fit":
            model = self.zoo_model(pl_module)
            freeze(model, self.freeze, bn=self.bn, **self.lookup)
            if adapter_names(model):
                unfreeze(model, [ADAPTER.pattern], **self.lookup)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's state until the optimizer exists (``on_fit_start``)."""
        self._resumed = dict(state_dict)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the schedule; on resume, re-add the groups added before the checkpoint.

        Lightning calls this after ``configure_optimizers`` and before it loads the
        optimizer's state, which needs the same groups in the same order.
        """
        if not trainer.optimizers:
            raise OptimizerError("ZooAdaptFinetuning needs an optimizer from configure_optimizers")
        model = self.zoo_model(pl_module)
        optimizer = trainer.optimizers[0]
        lr = self.lr
        if self.lr_factor is not None:
            lr = self.lr_factor * float(optimizer.defaults["lr"])
        self.schedule = FineTuneSchedule(
            model, optimizer, self.milestones, lr=lr, initial=None, **self.lookup
        )
        if self._resumed:
            self.schedule.load_state_dict(self._resumed["schedule"])
            load_freeze_state(model, self._resumed["freeze"])
            self._resumed = None
            rewrap_ddp(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Unfreeze the groups due at this epoch and add them to the optimizer, once."""
        if self.schedule is None:  # on_fit_start builds it; nothing to do without it
            return
        added = self.schedule.step(trainer.current_epoch)
        if added:
            rewrap_ddp(trainer)
            rank_zero_info(f"epoch {trainer.current_epoch}: unfroze and added groups {added}")

    def state_dict(self) -> dict[str, Any]:
        """What is frozen and the milestones applied, for the checkpoint."""
        if self.schedule is None:  # saved before fitting started: nothing applied
            return dict(self._resumed) if self._resumed else {}
        return {
            "freeze": freeze_state(self.schedule.model),
            "schedule": self.schedule.state_dict(),
        }


def rewrap_ddp(trainer: pl.Trainer) -> None:
    """Rebuild Lightning's DDP wrapper so that it also reduces the newly trainable tensors.

    DistributedDataParallel registers only the parameters that require grad when it is
    built; without a new wrapper each process would train the unfrozen groups on its own
    gradients and the replicas would drift apart.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
