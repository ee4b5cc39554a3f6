"""zooadapt: make any pretrained vision model fine-tune-ready in one call.

Example:
    >>> import zooadapt as za
    >>> model = za.adapt("resnet18", num_classes=10, in_chans=1, pretrained=False)
"""

from zooadapt.adapt import adapt
from zooadapt.anatomy import anatomy
from zooadapt.benchmark import BenchResult, bench
from zooadapt.checkpoint import read_state_dict
from zooadapt.construct import build_on_meta
from zooadapt.errors import (
    AdaptError,
    AmbiguousFamilyError,
    CheckpointError,
    FamilyNotFoundError,
    FreezeError,
    ModelNotFoundError,
    PluginError,
    PluginWarning,
    WeightsNotAvailableError,
    ZooAdaptError,
)
from zooadapt.features import FeatureCache, extract_features
from zooadapt.freeze import freeze, freeze_state, load_freeze_state, unfreeze
from zooadapt.hookspecs import hookimpl
from zooadapt.loading import LoadReport, load_weights
from zooadapt.manager import PluginManager, get_plugin_manager, make_plugin_manager
from zooadapt.memory import MemoryEstimate, estimate_memory, max_batch_size, parse_bytes
from zooadapt.names import list_models
from zooadapt.optim import optimizer, param_groups
from zooadapt.saving import load, save
from zooadapt.schedule import FineTuneSchedule
from zooadapt.summary import summary
from zooadapt.training import Training, load_training, save_training
from zooadapt.types import Anatomy, Family, RenameRule, StemLayout, Weights, Zoo
from zooadapt.wrappers import rewrap, unwrap

__version__ = "0.1.0"

__all__ = [
    "AdaptError",
    "AmbiguousFamilyError",
    "Anatomy",
    "BenchResult",
    "CheckpointError",
    "Family",
    "FamilyNotFoundError",
    "FeatureCache",
    "FineTuneSchedule",
    "FreezeError",
    "LoadReport",
    "MemoryEstimate",
    "ModelNotFoundError",
    "PluginError",
    "PluginManager",
    "PluginWarning",
    "RenameRule",
    "StemLayout",
    "Training",
    "Weights",
    "WeightsNotAvailableError",
    "Zoo",
    "ZooAdaptError",
    "__version__",
    "adapt",
    "anatomy",
    "bench",
    "build_on_meta",
    "estimate_memory",
    "extract_features",
    "freeze",
    "freeze_state",
    "get_plugin_manager",
    "hookimpl",
    "list_models",
    "load",
    "load_freeze_state",
    "load_training",
    "load_weights",
    "make_plugin_manager",
    "max_batch_size",
    "optimizer",
    "param_groups",
    "parse_bytes",
    "read_state_dict",
    "rewrap",
    "save",
    "save_training",
    "summary",
    "unfreeze",
    "unwrap",
]
