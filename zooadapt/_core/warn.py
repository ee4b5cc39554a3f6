"""Warnings that point at the user's line, not at zooadapt's internals."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch.utils._contextlib

#: The zooadapt package folder.
_PACKAGE = str(Path(__file__).resolve().parent.parent)
#: Decorators that wrap zooadapt's functions (``contextmanager``, ``torch.no_grad``).
_WRAPPERS = {contextlib.__file__, torch.utils._contextlib.__file__}


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the line that called into zooadapt.

    That is the caller of the outermost zooadapt frame, with the decorators around it
    looked through.
    """
    frames = []  # frames[i] is what stacklevel i + 2 names
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame.f_code.co_filename)
        frame = frame.f_back
    inside = [i for i, file in enumerate(frames) if file.startswith(_PACKAGE)]
    level = inside[-1] + 1 if inside else 0
    while level < len(frames) - 1 and frames[level] in _WRAPPERS:
        level += 1
    warnings.warn(message, category, stacklevel=level + 2)
