"""What the conformance checks report: problems, reports, samples, shared helpers."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from zooadapt.errors import PluginError

#: A model, or a function without arguments that builds one (called once per check run).
ModelSource = nn.Module | Callable[[], nn.Module]
#: A checkpoint for the rename-rule check: a state dict, its keys, or a file path.
CheckpointKeys = Mapping[str, Any] | Iterable[str] | str | os.PathLike[str]

#: Parameters (or keys) listed one by one before the rest are summarised.
MAX_LISTED = 10
DEFAULT_INPUT = (2, 3, 64, 64)

T = TypeVar("T")
_FAILED: Any = object()


class ConformanceError(PluginError, AssertionError):
    """A family or plugin does not conform; the message lists every problem found."""


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong, found by the check named ``check``.

    Attributes:
        check: ``"owner"``, ``"head"``, ``"stem"``, ``"groups"``, ``"rename"``,
            ``"adapt"``, ``"forward"``, ``"freeze"``, ``"model"``, ``"plugin"`` or ``"zoo"``.
        message: What is wrong, naming the group, parameter, path, rule or key.
        subject: The family and model (or zoo) it concerns, in a plugin report.
    """

    check: str
    message: str
    subject: str = ""

    def __str__(self) -> str:
        where = f"{self.subject}: " if self.subject else ""
        return f"{where}[{self.check}] {self.message}"


@dataclass
class ConformanceReport:
    """What the checks found about one family on one model, or about one plugin.

    Attributes:
        subject: What was checked, e.g. ``"family 'tinynet' (plugin 'tinynet') on TinyNet"``.
        problems: Everything found wrong; empty when the subject conforms.
        notes: Checks that were skipped and why (a headless model has no head to replace).
    """

    subject: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def add(self, check: str, message: str) -> None:
        """Record a problem found by ``check``."""
        self.problems.append(Problem(check, message))

    def merge(self, other: ConformanceReport) -> None:
        """Take over ``other``'s problems and notes, labelled with its subject."""
        for problem in other.problems:
            self.problems.append(Problem(problem.check, problem.message, other.subject))
        self.notes.extend(f"{other.subject}: {note}" for note in other.notes)

    def raise_if_failed(self) -> ConformanceReport:
        """Return the report if it found no problem.

        Raises:
            ConformanceError: Listing every problem, if any was found.
        """
        if self.problems:
            raise ConformanceError(str(self))
        return self

    def __str__(self) -> str:
        count = len(self.problems)
        status = "conforms" if not count else f"{count} problem{'s' * (count != 1)}"
        lines = [f"{self.subject}: {status}"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class Sample:
    """A model to check a family on, with the options that model needs.

    Args:
        model: The model or a function that builds it.
        input_shape: ``(N, C, H, W)`` of an input the unadapted model accepts.
        device: ``"meta"`` builds the model without memory (the forward pass then only
            checks shapes); ``None`` keeps the device the model is built on.
        rules_checkpoint: Keys of a checkpoint in a historical layout that the family's
            rename rules must map onto the model's keys.
    """

    model: ModelSource
    input_shape: tuple[int, ...] | None = None
    device: str | torch.device | None = None
    rules_checkpoint: CheckpointKeys | None = None


def _attempt(report: ConformanceReport, check: str, what: str, func: Callable[[], T]) -> T:
    """``func()``, or ``_FAILED`` after reporting that ``what`` raised."""
    try:
        return func()
    except Exception as err:  # noqa: BLE001 - every failure is a finding
        report.add(check, f"{what} raised {_describe(err)}")
        return _FAILED


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 500 else text[:497] + "..."


def _names(items: Iterable[str]) -> str:
    listed = [repr(item) for item in items]
    shown = ", ".join(listed[:MAX_LISTED])
    more = len(listed) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _did_you_mean(path: str, model: nn.Module) -> str:
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=3)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
