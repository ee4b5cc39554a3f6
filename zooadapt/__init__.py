"""zooadapt: make any pretrained vision model fine-tune-ready in one call.

Example:
    >>> import zooadapt as za
    >>> model = za.adapt("resnet18", num_classes=10, in_chans=1, pretrained=False)
"""

from zooadapt._core.anatomy import anatomy
from zooadapt._core.distributed import rewrap, unwrap
from zooadapt._core.files import read_state_dict
from zooadapt._core.meta import build_on_meta, meta_copy
from zooadapt._core.names import list_models
from zooadapt._core.plugins import PluginManager, get_plugin_manager, make_plugin_manager
from zooadapt._core.trace import first_conv, output_layer
from zooadapt.adapt import adapt
from zooadapt.bench import BenchResult, bench
from zooadapt.errors import (
    AdaptError,
    AmbiguousFamilyError,
    CheckpointError,
    FamilyNotFoundError,
    FreezeError,
    ModelNotFoundError,
    OptimizerError,
    PluginError,
    PluginWarning,
    WeightsNotAvailableError,
    ZooAdaptError,
)
from zooadapt.features import FeatureCache, extract_features
from zooadapt.freeze import freeze, freeze_state, load_freeze_state, unfreeze
from zooadapt.hookspecs import hookimpl
from zooadapt.loading import LoadReport, load_weights
from zooadapt.memory import MemoryEstimate, estimate_memory, max_batch_size, parse_bytes
from zooadapt.optim import optimizer, param_groups
from zooadapt.saving import load, save
from zooadapt.schedule import FineTuneSchedule
from zooadapt.summary import summary
from zooadapt.training import Training, load_training, save_training
from zooadapt.types import Anatomy, Family, RenameRule, StemLayout, Weights, Zoo

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
    "OptimizerError",
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
    "first_conv",
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
    "meta_copy",
    "optimizer",
    "output_layer",
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
