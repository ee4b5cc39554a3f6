"""zooadapt: make any pretrained vision model fine-tune-ready in one call.

Example:
    >>> import zooadapt as za
    >>> model = za.adapt("resnet18", num_classes=10, in_chans=1, pretrained=False)
"""

from zooadapt.adapt import adapt
from zooadapt.anatomy import anatomy
from zooadapt.checkpoint import LoadReport, read_state_dict
from zooadapt.errors import (
    AdaptError,
    AmbiguousFamilyError,
    CheckpointError,
    FamilyNotFoundError,
    ModelNotFoundError,
    PluginError,
    PluginWarning,
    WeightsNotAvailableError,
    ZooAdaptError,
)
from zooadapt.hookspecs import hookimpl
from zooadapt.manager import PluginManager, get_plugin_manager, make_plugin_manager
from zooadapt.names import list_models
from zooadapt.summary import summary
from zooadapt.types import Anatomy, Family, RenameRule, Weights, Zoo

__version__ = "0.1.0"

__all__ = [
    "AdaptError",
    "AmbiguousFamilyError",
    "Anatomy",
    "CheckpointError",
    "Family",
    "FamilyNotFoundError",
    "LoadReport",
    "ModelNotFoundError",
    "PluginError",
    "PluginManager",
    "PluginWarning",
    "RenameRule",
    "Weights",
    "WeightsNotAvailableError",
    "Zoo",
    "ZooAdaptError",
    "__version__",
    "adapt",
    "anatomy",
    "get_plugin_manager",
    "hookimpl",
    "list_models",
    "make_plugin_manager",
    "read_state_dict",
    "summary",
]
