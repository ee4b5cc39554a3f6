"""Gradual unfreezing that survives a resume: ``za.FineTuneSchedule``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from zooadapt._core.distributed import unwrap
from zooadapt._core.plugins import PluginManager
from zooadapt.errors import FreezeError
from zooadapt.freeze import FreezeSpec, freeze, select, unfreeze
from zooadapt.optim import LearningRate, model_groups
from zooadapt.types import Family

__all__ = ["FineTuneSchedule"]


class FineTuneSchedule:
    """Unfreeze groups of a model at given epochs, adding them to its optimizer once.

    The constructor freezes ``initial`` (all but the head by default). ``step(epoch)``
    applies every milestone up to ``epoch`` that is not applied yet, in epoch order, with
    :func:`zooadapt.unfreeze` (a group name unfreezes it and every group after it).
    ``state_dict()`` records the applied milestones; ``load_state_dict()`` re-applies them
    so that the optimizer has the same groups, in the same order, as when it was saved
    (load it before ``optimizer.load_state_dict``). Nothing is ever re-frozen or added
    twice: a tensor the optimizer already holds is not added again.

    Args:
        model: The model.
        optimizer: Its optimizer, usually ``za.optimizer(model, ...)`` built after the
            initial freeze.
        milestones: Epoch -> unfreeze spec (a group name, an int, a list, or ``None`` for
            everything).
        lr: Learning rate of the groups a milestone adds: a number; a dict group name ->
            lr; or a dict epoch -> (number or group dict) per milestone. ``None`` (or a
            milestone missing from an epoch dict) uses the optimizer's default lr.
        initial: Freeze spec applied by the constructor (``None``: leave the model as is).
        bn: BatchNorm policy of the initial freeze.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Raises:
        FreezeError: If a milestone's epoch or spec is invalid.

    Example:
        >>> za.freeze(model)
        >>> opt = za.optimizer(model, lr=1e-3)
        >>> schedule = za.FineTuneSchedule(model, opt, {2: "layer4", 4: "layer3"}, lr=1e-4)
        >>> for epoch in range(10):
        ...     schedule.step(epoch)
        ...     train_one_epoch(model, opt)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        milestones: Mapping[int, FreezeSpec],
        *,
        lr: LearningRate | Mapping[int, LearningRate] | None = None,
        initial: FreezeSpec = "backbone",
        bn: str = "frozen",
        family: str | Family | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self._lookup: dict[str, Any] = {"family": family, "plugin_manager": plugin_manager}
        self.milestones = dict(sorted(self._checked(milestones).items()))
        self.applied: list[int] = []
        if self._by_epoch() and set(self.lr) - set(self.milestones):  # type: ignore[arg-type]
            raise FreezeError(f"lr names epochs that are no milestones: {sorted(self.lr)}")
        if initial is not None:
            freeze(model, initial, bn=bn, **self._lookup)

    def _checked(self, milestones: Mapping[int, FreezeSpec]) -> dict[int, FreezeSpec]:
        root = unwrap(self.model)
        groups = model_groups(root, **self._lookup)
        names = [n for n, _ in root.named_parameters()]
        for epoch, spec in milestones.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise FreezeError(f"milestone epochs are non-negative ints, got {epoch!r}")
            select(groups, spec, names, unfreeze=True)
        return dict(milestones)

    def _by_epoch(self) -> bool:
        return isinstance(self.lr, Mapping) and all(isinstance(k, int) for k in self.lr)

    def _lr(self, epoch: int) -> LearningRate | None:
        if self._by_epoch():
            return self.lr.get(epoch)  # type: ignore[union-attr]
        return self.lr  # type: ignore[return-value]

    def _apply(self, epoch: int) -> list[str]:
        count = len(self.optimizer.param_groups)
        unfreeze(
            self.model,
            self.milestones[epoch],
            optimizer=self.optimizer,
            lr=self._lr(epoch),
            **self._lookup,
        )
        if epoch not in self.applied:
            self.applied = sorted([*self.applied, epoch])
        return [g.get("name", "") for g in self.optimizer.param_groups[count:]]

    def step(self, epoch: int) -> list[str]:
        """Apply every milestone up to ``epoch`` not applied yet.

        Call it at the start of each epoch.

        Returns:
            Names of the optimizer groups added (empty when nothing changed).
        """
        added: list[str] = []
        for milestone in self.milestones:
            if milestone <= epoch and milestone not in self.applied:
                added += self._apply(milestone)
        return added

    def state_dict(self) -> dict[str, Any]:
        """The applied milestones, JSON-serialisable."""
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Re-apply the milestones ``state`` records as applied (idempotent).

        Raises:
            FreezeError: If ``state`` names a milestone this schedule does not have.
        """
        applied = [int(e) for e in state["applied"]]
        unknown = [e for e in applied if e not in self.milestones]
        if unknown:
            raise FreezeError(
                f"schedule state applies milestones {unknown} that this schedule lacks "
                f"(milestones: {list(self.milestones)})"
            )
        for epoch in sorted(applied):
            self._apply(epoch)
