"""zooadapt: make any pretrained vision model fine-tune-ready in one call.

Example:
    >>> import zooadapt as za
    >>> model = za.adapt("resnet18", num_classes=10, in_chans=1, pretrained=False)

``import zooadapt`` is cheap: the vocabulary (errors, dataclasses, ``hookimpl``) is
imported at once, everything that needs torch on first use, so that the command line
answers ``--help`` and ``--version`` without importing torch.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from zooadapt.errors import (
    AdaptError,
    AdaptWarning,
    AmbiguousFamilyError,
    CheckpointError,
    DataError,
    FamilyNotFoundError,
    FreezeError,
    ModelNotFoundError,
    OptimizerError,
    PluginError,
    PluginWarning,
    WeightsNotAvailableError,
    ZooAdaptError,
)
from zooadapt.hookspecs import hookimpl
from zooadapt.types import (
    Adaptation,
    Anatomy,
    DataConfig,
    Family,
    RenameRule,
    StemLayout,
    Weights,
    Zoo,
)

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first use.
_LAZY = {
    "BenchResult": "zooadapt.bench",
    "FeatureCache": "zooadapt.features",
    "FineTuneSchedule": "zooadapt.schedule",
    "LoadReport": "zooadapt.loading",
    "MemoryEstimate": "zooadapt.memory",
    "PluginManager": "zooadapt._core.plugins",
    "Training": "zooadapt.training",
    "adapt": "zooadapt.adapt",
    "anatomy": "zooadapt._core.anatomy",
    "bench": "zooadapt.bench",
    "build_on_meta": "zooadapt._core.meta",
    "data_config": "zooadapt.data",
    "estimate_memory": "zooadapt.memory",
    "extract_features": "zooadapt.features",
    "first_conv": "zooadapt._core.trace",
    "freeze": "zooadapt.freeze",
    "freeze_state": "zooadapt.freeze",
    "labels": "zooadapt.labels",
    "get_plugin_manager": "zooadapt._core.plugins",
    "list_models": "zooadapt._core.names",
    "load": "zooadapt.saving",
    "load_freeze_state": "zooadapt.freeze",
    "load_report": "zooadapt.loading",
    "load_training": "zooadapt.training",
    "load_weights": "zooadapt.loading",
    "adapter_names": "zooadapt.lora",
    "is_adapter": "zooadapt.lora",
    "lora": "zooadapt.lora",
    "lora_base_name": "zooadapt.lora",
    "lora_roles": "zooadapt.lora",
    "lora_settings": "zooadapt.lora",
    "lora_targets": "zooadapt.lora",
    "merge_lora": "zooadapt.lora",
    "make_plugin_manager": "zooadapt._core.plugins",
    "max_batch_size": "zooadapt.memory",
    "meta_copy": "zooadapt._core.meta",
    "offline": "zooadapt._core.pretrained",
    "optimizer": "zooadapt.optim",
    "output_layer": "zooadapt._core.trace",
    "output_layers": "zooadapt._core.trace",
    "param_groups": "zooadapt.optim",
    "parse_bytes": "zooadapt.memory",
    "predict": "zooadapt.predict",
    "read_state_dict": "zooadapt._core.files",
    "rewrap": "zooadapt._core.distributed",
    "save": "zooadapt.saving",
    "save_training": "zooadapt.training",
    "summary": "zooadapt.summary",
    "transforms": "zooadapt.transforms",
    "unfreeze": "zooadapt.freeze",
    "unwrap": "zooadapt._core.distributed",
}


def _public(name: str) -> Any:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _public(name)
    raise AttributeError(f"module 'zooadapt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(ModuleType):
    """The package module, whose public functions win over submodules of the same name.

    ``adapt``, ``bench``, ``freeze``, ``labels``, ``predict``, ``summary`` and
    ``transforms`` stay the functions after their
    submodules are imported (the import system sets the submodule as an attribute).
    """

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if isinstance(value, ModuleType) and name in _LAZY:
            return _public(name)
        return value


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AdaptError",
    "AdaptWarning",
    "Adaptation",
    "AmbiguousFamilyError",
    "Anatomy",
    "BenchResult",
    "CheckpointError",
    "DataConfig",
    "DataError",
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
    "adapter_names",
    "anatomy",
    "bench",
    "build_on_meta",
    "data_config",
    "estimate_memory",
    "extract_features",
    "first_conv",
    "freeze",
    "freeze_state",
    "get_plugin_manager",
    "hookimpl",
    "labels",
    "list_models",
    "load",
    "load_freeze_state",
    "load_report",
    "load_training",
    "load_weights",
    "is_adapter",
    "lora",
    "lora_base_name",
    "lora_roles",
    "lora_settings",
    "lora_targets",
    "make_plugin_manager",
    "max_batch_size",
    "merge_lora",
    "meta_copy",
    "offline",
    "optimizer",
    "output_layer",
    "output_layers",
    "param_groups",
    "parse_bytes",
    "predict",
    "read_state_dict",
    "rewrap",
    "save",
    "save_training",
    "summary",
    "transforms",
    "unfreeze",
    "unwrap",
]
