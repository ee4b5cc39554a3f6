"""Every exception zooadapt raises on purpose derives from :class:`ZooAdaptError`."""

from __future__ import annotations

__all__ = [
    "AdaptError",
    "AdaptWarning",
    "AmbiguousFamilyError",
    "CheckpointError",
    "DataError",
    "FamilyNotFoundError",
    "FreezeError",
    "ModelNotFoundError",
    "OptimizerError",
    "PluginError",
    "PluginWarning",
    "WeightsNotAvailableError",
    "ZooAdaptError",
]


class ZooAdaptError(Exception):
    """Base class of every error zooadapt raises on purpose."""


class PluginError(ZooAdaptError):
    """A plugin failed to load, returned something invalid, or raised inside a hook.

    Attributes:
        plugin: Name of the plugin at fault, when one is (else ``None``).
    """

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class PluginWarning(UserWarning):
    """A broken plugin was skipped (set ``ZOOADAPT_STRICT_PLUGINS=1`` to raise instead)."""


class AdaptWarning(UserWarning):
    """A request zooadapt carried out that is probably not what was meant."""


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
    """A freeze or unfreeze request does not fit the model.

    Raised for an unknown freeze group (the message lists the valid ones), a parameter
    regex that matches nothing, or an invalid ``bn`` policy.
    """


class OptimizerError(ZooAdaptError, ValueError):
    """An optimizer request is invalid.

    Raised for an unknown optimizer name, invalid learning rates or decay settings, or an
    optimizer that holds tensors which are not parameters of the model.
    """


class DataError(ZooAdaptError, ValueError):
    """Data-side input is invalid: a data config, statistics, class names or an image.

    Raised for statistics that do not fit the channel count, an unknown interpolation, an
    image file that cannot be read, or an image whose channels a model cannot take.
    """
