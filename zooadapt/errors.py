"""Every exception zooadapt raises on purpose derives from :class:`ZooAdaptError`."""

from __future__ import annotations

__all__ = [
    "AdaptError",
    "AmbiguousFamilyError",
    "CheckpointError",
    "FamilyNotFoundError",
    "FreezeError",
    "ModelNotFoundError",
    "PluginError",
    "PluginWarning",
    "WeightsNotAvailableError",
    "ZooAdaptError",
]


class ZooAdaptError(Exception):
    """Base class of every error zooadapt raises on purpose."""


class PluginError(ZooAdaptError):
    """A plugin failed to load, returned something invalid, or raised inside a hook."""


class PluginWarning(UserWarning):
    """A broken plugin was skipped (set ``ZOOADAPT_STRICT_PLUGINS=1`` to raise instead)."""


class ModelNotFoundError(ZooAdaptError, LookupError):
    """A registry name matches no model of any installed zoo."""


class FamilyNotFoundError(ZooAdaptError, LookupError):
    """No installed family plugin understands a module."""


class AmbiguousFamilyError(ZooAdaptError):
    """Two families claim a module equally specifically."""


class AdaptError(ZooAdaptError, ValueError):
    """An adaptation request is invalid for the model (bad argument, impossible surgery)."""


class WeightsNotAvailableError(ZooAdaptError, FileNotFoundError):
    """Pretrained weights are neither cached locally nor downloadable."""


class CheckpointError(ZooAdaptError):
    """A checkpoint cannot be read or does not fit the model."""


class FreezeError(ZooAdaptError, ValueError):
    """A freeze, unfreeze or optimizer request does not fit the model.

    Raised for an unknown freeze group (the message lists the valid ones), a parameter
    regex that matches nothing, invalid learning rates, an unknown optimizer, or an
    optimizer that holds tensors which are not parameters of the model.
    """
