"""Train the head of a fully frozen backbone on features computed once.

When everything but the head is frozen and the inputs are not augmented, every epoch feeds
the head exactly the same inputs. :class:`FeatureCache` runs the backbone once over the
data, keeps what the head receives, and later epochs train the head on that alone, without
running the backbone again.

Features are computed in eval mode under ``torch.no_grad()``: no dropout, BatchNorm with
its running statistics, and the inputs exactly as the data yields them. With random
augmentation every epoch sees different inputs, so caching does not apply: train through
the backbone instead.

A disk cache is a directory holding safetensors shards ``features-00000.safetensors``, ...
(tensors ``features`` and ``targets``, in data order) and ``features.json``, which
describes the cache (model, head, shapes, sample and batch counts). Every file is written
atomically and ``features.json`` last, so an interrupted run never leaves a partial shard
nor a directory that passes for a complete cache.

Example:
    >>> model = za.adapt("resnet50", num_classes=10, freeze="backbone")
    >>> cache = za.FeatureCache(model, loader, path="cache/resnet50")  # backbone runs once
    >>> classifier = cache.classifier(model)
    >>> optimizer = torch.optim.AdamW(cache.head(model).parameters(), lr=1e-3)
    >>> for epoch in range(10):
    ...     for features, targets in cache.batches(shuffle=True):
    ...         loss = F.cross_entropy(classifier(features), targets)
    ...         optimizer.zero_grad()
    ...         loss.backward()
    ...         optimizer.step()
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooadapt._core.anatomy import anatomy, class_name
from zooadapt._core.calling import caller
from zooadapt._core.distributed import unwrap
from zooadapt._core.files import atomic_write
from zooadapt._core.plugins import PluginManager
from zooadapt.adapt import adapted_from
from zooadapt.errors import AdaptError, CheckpointError
from zooadapt.types import Family

__all__ = ["DEFAULT_SHARD_BYTES", "FeatureCache", "extract_features"]

FORMAT = "zooadapt-features/1"
INDEX = "features.json"
SHARD = "features-{:05d}.safetensors"
#: Shards are closed once they hold this many bytes of features and targets.
DEFAULT_SHARD_BYTES = 256 * 2**20
# shards, and the temporary files atomic_write leaves behind when a run is killed
_OWN_FILE = re.compile(
    r"features-\d{5,}\.safetensors|\.(features-\d{5,}\.safetensors|features\.json)\.\d+\.tmp"
)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
Batch = tuple[torch.Tensor, torch.Tensor]


class _HeadReached(BaseException):
    """Raised by the head's pre-hook: stops the forward with the head's input.

    A ``BaseException`` so that model code catching ``Exception`` lets it through.
    """

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features


@dataclass
class _Shard:
    """A run of consecutive samples: in memory, or a file mapped on first use."""

    start: int
    count: int
    file: Path | None = None
    tensors: Batch | None = None

    @property
    def stop(self) -> int:
        return self.start + self.count


class FeatureCache:
    """What a frozen model's head receives, computed once over a dataset.

    Everything before the single head runs once per batch, in eval mode (no dropout,
    BatchNorm running statistics) under ``torch.no_grad()``; a forward pre-hook on the
    head takes its input and stops the forward there, so the head and anything after it
    never run. The model's train/eval flags (per module) are restored afterwards. Cached
    features are valid only while the backbone does not change and the inputs are not
    randomly augmented: with augmentation every epoch sees different inputs, so caching
    does not apply.

    For an ``nn.Linear`` head the features are exactly what the Linear receives (the
    pooled, flattened vector); for a 1x1 convolution head (SqueezeNet) they keep their
    4-D shape ``(channels, height, width)`` per sample.

    Args:
        model: A model whose parameters outside its one head are all frozen (see
            :func:`zooadapt.freeze`); wrappers (DataParallel, DDP, ``torch.compile``) are
            looked through and the module inside runs, on one device.
        data: Batches ``(inputs, targets)``: a DataLoader, a list, any iterable. Inputs
            are one tensor; targets anything ``torch.as_tensor`` takes, one row per sample.
        path: Directory for a disk cache (created if needed); ``None`` keeps the cache in
            memory.
        overwrite: Replace a cache already in ``path`` (it is deleted before the new one
            is written). Leftover shards of an interrupted run are always replaced.
        device: Where the backbone runs; default: where the model is. A model elsewhere
            is moved there for the extraction and moved back afterwards.
        storage_device: Where a memory cache keeps its tensors (default CPU). A disk cache
            is read back on the CPU.
        shard_bytes: Size at which a shard is closed (whole source batches per shard).
        progress: Show a progress bar (tqdm if installed, else a line on stderr).
        family: Force the model's family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Raises:
        AdaptError: If the model has several heads or none, has trainable parameters
            outside its head, never calls its head, if the data is empty or its batches
            are not ``(tensor, targets)`` pairs of consistent shapes.
        CheckpointError: If ``path`` already holds a cache and ``overwrite`` is false, or
            is not a directory zooadapt may write its cache to.

    Example:
        >>> cache = za.FeatureCache(model, loader, path="cache/")
        >>> head = cache.head(model)  # the module to train
        >>> for features, targets in cache.batches():
        ...     loss = F.cross_entropy(cache.classifier(model)(features), targets)
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Any],
        *,
        path: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        device: str | torch.device | None = None,
        storage_device: str | torch.device | None = None,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        progress: bool = False,
        family: str | Family | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> None:
        root = unwrap(model)
        anat = anatomy(root, family=family, plugin_manager=plugin_manager)
        name = _model_name(root)
        head = _single_head(anat.head, name)
        _check_frozen(root, head, name)
        storage = _storage_device(storage_device, path)
        _check_shard_bytes(shard_bytes)
        batches, total = _nonempty(data, name)
        directory = _prepare_directory(Path(path), overwrite) if path is not None else None
        writer = _ShardWriter(directory, shard_bytes, storage)
        try:
            with _capturing(root, root.get_submodule(head), _run_device(root, device)) as run:
                for index, batch in enumerate(_progress(batches, total, progress)):
                    writer.add(*_capture(run, batch, index, name, head))
            writer.flush()
            info = _describe(root, anat.family, head, writer)
            if directory is not None:
                _write_index(directory, info)
        except BaseException:
            writer.discard()
            raise
        self._setup(info, writer.shards, directory)

    # -- reopening -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureCache:
        """Reopen the disk cache in ``path``, without the model.

        Only the shards' headers are read here; their data is memory-mapped on first use
        and read as batches ask for it.

        Args:
            path: The directory a :class:`FeatureCache` was built into.

        Returns:
            The cache, read-only.

        Raises:
            CheckpointError: If the directory holds no cache, an incomplete one (the run
                that wrote it was interrupted), or shards that do not fit its description.
        """
        directory = Path(path)
        info = _read_index(directory)
        shards: list[_Shard] = []
        try:
            for entry in _shard_entries(info):
                shards.append(_check_shard(directory, entry, info, sum(s.count for s in shards)))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed {directory / INDEX}: {err!r}; rebuild it") from err
        if sum(shard.count for shard in shards) != info.get("num_samples"):
            raise CheckpointError(f"{directory / INDEX}: shard sizes do not add up; rebuild it")
        cache = cls.__new__(cls)
        cache._setup(info, shards, directory)
        return cache

    def _setup(self, info: dict[str, Any], shards: list[_Shard], directory: Path | None) -> None:
        self._info = info
        self._shards = shards
        self._starts = [shard.start for shard in shards]
        self._path = directory

    # -- description ---------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The cache's directory, or ``None`` for a memory cache."""
        return self._path

    @property
    def model_name(self) -> str:
        """Registry name of the model (its class name if it was not built from one)."""
        return self._info["model"] or self._info["model_class"]

    @property
    def head_path(self) -> str:
        """Module path of the head whose input is cached, e.g. ``"fc"``."""
        return self._info["head"]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features, e.g. ``(2048,)`` or ``(512, 13, 13)``."""
        return tuple(self._info["feature_shape"])

    @property
    def num_samples(self) -> int:
        """Number of cached samples (also ``len(cache)``)."""
        return self._info["num_samples"]

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the source batches, in order."""
        return [size for size, count in self._info["batch_sizes"] for _ in range(count)]

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything the cache records about itself (``features.json`` on disk)."""
        return json.loads(json.dumps(self._info))

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "memory"
        return (
            f"FeatureCache({self.model_name}, head {self.head_path!r}, {self.num_samples} "
            f"samples of {self.feature_shape} {self._info['feature_dtype']}, in {where})"
        )

    # -- training the head ---------------------------------------------------------------

    def head(self, model: nn.Module) -> nn.Module:
        """The module of ``model`` whose input is cached: the one to train.

        Args:
            model: The model the cache was built from, or another instance of the same
                registry model (wrappers are looked through).

        Returns:
            ``model.get_submodule(cache.head_path)``; it is the model's own module, so
            training it trains the model's head.

        Raises:
            AdaptError: If the model is not the kind the cache was built from, lacks the
                head, or its head does not take features of the cached size.
        """
        root = unwrap(model)
        self._check_model(root)
        try:
            module = root.get_submodule(self.head_path)
        except AttributeError:
            raise AdaptError(
                f"{type(root).__name__} has no module {self.head_path!r}, the head this cache "
                f"of {self.model_name} was built for"
            ) from None
        _check_fits(module, self.feature_shape, self.head_path)
        return module

    def classifier(self, model: nn.Module) -> nn.Module:
        """A module mapping cached features to what ``model`` would output.

        It applies the head, then the modules that follow the head inside the same
        ``nn.Sequential`` (SqueezeNet's ReLU and average pooling), then flattens an output
        whose spatial dimensions are all 1. For a Linear head that is the last layer it
        is the head alone. Its parameters are the model's own. What a model's forward
        computes after its head in code of its own (rare: a scale, an average of heads)
        is not reproduced.

        Args:
            model: As for :meth:`head`.

        Returns:
            A module taking a batch of cached features.

        Raises:
            AdaptError: As :meth:`head`.
        """
        head = self.head(model)
        parent_path, _, leaf = self.head_path.rpartition(".")
        root = unwrap(model)
        parent = root.get_submodule(parent_path) if parent_path else root
        after: list[nn.Module] = []
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            after = [parent._modules[n] for n in names[names.index(leaf) + 1 :]]
        return _Classifier(head, after)

    def batches(
        self,
        batch_size: int | None = None,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> Iterator[Batch]:
        """Batches ``(features, targets)`` of the cached samples.

        By default, exactly the source's batches in the source's order. Each batch is a
        new tensor: changing it does not change the cache.

        Args:
            batch_size: Samples per batch; ``None`` keeps the source's batch sizes.
            shuffle: Visit the samples in a random order (a new one on every call).
            generator: Random generator of the shuffle (default: torch's global one).
            drop_last: Leave out a last batch smaller than the others.
            device: Move each batch there (default: where the cache keeps it).

        Returns:
            An iterator over the batches.

        Raises:
            AdaptError: If ``batch_size`` is not a positive int.
        """
        sizes = self._batch_plan(batch_size, drop_last)
        order = torch.randperm(self.num_samples, generator=generator) if shuffle else None
        return self._iterate(sizes, order, device)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def tensors(self) -> Batch:
        """All features and all targets, each as one tensor (reads the whole cache)."""
        return self._range(0, self.num_samples)

    # -- reading -------------------------------------------------------------------------

    def _check_model(self, root: nn.Module) -> None:
        built, name = self._info["model_class"], self._info["model"]
        origin = (adapted_from(root) or {}).get("model", "")
        if class_name(type(root)) != built or (name and origin and origin != name):
            raise AdaptError(
                f"this cache holds features of {self.model_name}, not of "
                f"{origin or class_name(type(root))}; build a FeatureCache for this model"
            )

    def _batch_plan(self, batch_size: int | None, drop_last: bool) -> list[int]:
        if batch_size is None:
            sizes = self.batch_sizes
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AdaptError(f"batch_size must be a positive int or None, got {batch_size!r}")
        else:
            full, rest = divmod(self.num_samples, batch_size)
            sizes = [batch_size] * full + ([rest] if rest else [])
        if drop_last and sizes and sizes[-1] < (batch_size or sizes[0]):
            sizes.pop()
        return sizes

    def _iterate(
        self, sizes: list[int], order: torch.Tensor | None, device: str | torch.device | None
    ) -> Iterator[Batch]:
        start = 0
        for size in sizes:
            stop = start + size
            if order is None:
                features, targets = self._range(start, stop)
            else:
                features, targets = self._gather(order[start:stop])
            start = stop
            if device is not None:
                features, targets = features.to(device), targets.to(device)
            yield features, targets

    def _range(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` as new tensors."""
        parts = []
        for number in range(bisect.bisect_right(self._starts, start) - 1, len(self._shards)):
            shard = self._shards[number]
            features, targets = self._tensors(number)
            low, high = max(start, shard.start) - shard.start, min(stop, shard.stop) - shard.start
            parts.append((features[low:high], targets[low:high]))
            if shard.stop >= stop:
                break
        return torch.cat([f for f, _ in parts]), torch.cat([t for _, t in parts])

    def _gather(self, index: torch.Tensor) -> Batch:
        """Samples at the global positions ``index``, in that order, as new tensors."""
        owner = torch.searchsorted(torch.tensor(self._starts), index, right=True) - 1
        like_features, like_targets = self._tensors(0)
        features = like_features.new_empty((len(index), *like_features.shape[1:]))
        targets = like_targets.new_empty((len(index), *like_targets.shape[1:]))
        for number in owner.unique().tolist():
            rows = (owner == number).nonzero().squeeze(1)
            local = (index[rows] - self._shards[number].start).to(features.device)
            rows = rows.to(features.device)
            shard_features, shard_targets = self._tensors(number)
            features.index_copy_(0, rows, shard_features.index_select(0, local))
            targets.index_copy_(0, rows, shard_targets.index_select(0, local))
        return features, targets

    def _tensors(self, number: int) -> Batch:
        shard = self._shards[number]
        if shard.tensors is None:  # a shard of a disk cache, mapped on first use
            shard.tensors = _map_shard(shard.file, self._info, shard.count)  # type: ignore[arg-type]
        return shard.tensors


class _Classifier(nn.Module):
    """The head plus the modules the model applies after it, then a flatten of 1x1 maps."""

    def __init__(self, head: nn.Module, after: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(head, *after)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map a batch of cached features to the model's output."""
        out = self.layers(features)
        if out.dim() > 2 and all(size == 1 for size in out.shape[2:]):
            out = out.flatten(1)
        return out


def extract_features(
    model: nn.Module,
    data: Iterable[Any],
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
    **kwargs: Any,
) -> FeatureCache:
    """Run ``model``'s frozen backbone once over ``data`` and keep what its head receives.

    The same as ``FeatureCache(model, data, family=..., plugin_manager=..., **kwargs)``;
    see :class:`FeatureCache`.

    Returns:
        The cache, in memory or (with ``path=``) on disk.
    """
    return FeatureCache(model, data, family=family, plugin_manager=plugin_manager, **kwargs)


# -- checks ------------------------------------------------------------------------------------


def _model_name(root: nn.Module) -> str:
    return (adapted_from(root) or {}).get("model") or class_name(type(root))


def _single_head(heads: tuple[str, ...], name: str) -> str:
    if len(heads) == 1:
        return heads[0]
    if not heads:
        raise AdaptError(f"{name} has no head; FeatureCache caches the input of a model's head")
    raise AdaptError(
        f"FeatureCache needs a model with one head; {name} has {len(heads)}: "
        f"{', '.join(heads)}. Build it without auxiliary heads (aux_logits=False for "
        "GoogLeNet and Inception), or train it through its backbone"
    )


def _check_frozen(root: nn.Module, head: str, name: str) -> None:
    inside = f"{head}."
    trainable = [
        n for n, p in root.named_parameters() if p.requires_grad and not n.startswith(inside)
    ]
    if trainable:
        raise AdaptError(
            f"FeatureCache needs a fully frozen backbone, but {name} has {len(trainable)} "
            f"trainable parameter(s) outside its head {head!r} (first: {trainable[0]!r}); "
            "call za.freeze(model) first: cached features go stale once the backbone trains"
        )


def _check_fits(module: nn.Module, shape: tuple[int, ...], path: str) -> None:
    if isinstance(module, nn.Linear):
        expected, got = module.in_features, shape[-1] if shape else None
    elif isinstance(module, nn.modules.conv._ConvNd):
        expected, got = module.in_channels, shape[0] if shape else None
    else:
        return
    if expected != got:
        raise AdaptError(
            f"head {path!r} takes {expected} features but the cache holds samples of shape "
            f"{shape}; build a FeatureCache for this model"
        )


def _check_shard_bytes(shard_bytes: object) -> None:
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise AdaptError(f"shard_bytes must be a positive int, got {shard_bytes!r}")


def _storage_device(
    storage_device: str | torch.device | None, path: str | os.PathLike[str] | None
) -> torch.device:
    storage = torch.device(storage_device or "cpu")
    if path is not None and storage.type != "cpu":
        raise AdaptError(
            f"storage_device={storage_device!r} is for memory caches; a disk cache is read "
            "back on the CPU (move batches with cache.batches(device=...))"
        )
    return storage


def _run_device(root: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        tensor = next(itertools.chain(root.parameters(), root.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _nonempty(data: Iterable[Any], name: str) -> tuple[Iterable[Any], int | None]:
    """``data`` as an iterable whose first batch is known to exist, and its length."""
    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    iterator = iter(data)
    end = object()
    first = next(iterator, end)
    if first is end:
        raise AdaptError(f"the data to extract features of {name} from holds no batches")
    return itertools.chain([first], iterator), total


# -- extraction --------------------------------------------------------------------------------


def _stop_at_head(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of the head: hand its input over and stop the forward."""
    features = args[0] if args else next(iter(kwargs.values()))
    raise _HeadReached(features)


@contextlib.contextmanager
def _capturing(
    root: nn.Module, head: nn.Module, device: torch.device
) -> Iterator[tuple[Callable[[Any], Any], torch.device]]:
    """Eval mode, no grad, the stopping hook, on ``device``; all undone on exit.

    Yields the model's runner (its family's ``call``, looked up once) and the device.
    """
    modes = [(module, module.training) for module in root.modules()]
    home = _run_device(root, None)
    handle = head.register_forward_pre_hook(_stop_at_head, prepend=True, with_kwargs=True)
    try:
        if device != home:
            root.to(device)
        root.eval()
        with torch.no_grad():  # not inference_mode: autograd must be able to save the features
            yield caller(root), device
    finally:
        handle.remove()
        if device != home:
            root.to(home)
        for module, mode in modes:
            module.training = mode


def _capture(
    run: tuple[Callable[[Any], Any], torch.device], batch: Any, index: int, name: str, head: str
) -> Batch:
    """The head's input for one batch, and the batch's targets."""
    model, device = run
    inputs, targets = _pair(batch, index)
    try:
        model(inputs.to(device, non_blocking=True))
    except _HeadReached as reached:
        features = reached.features
    else:
        raise AdaptError(f"the forward of {name} returned without calling its head {head!r}")
    if not isinstance(features, torch.Tensor) or features.dim() == 0:
        raise AdaptError(f"head {head!r} of {name} received {type(features).__name__}")
    if len(features) != len(targets):
        raise AdaptError(
            f"batch {index} has {len(targets)} targets for {len(features)} samples; "
            "targets must have one row per sample"
        )
    return features, targets


def _pair(batch: Any, index: int) -> Batch:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise AdaptError(
            f"batch {index} is a {type(batch).__name__}, not a pair (inputs, targets) as a "
            "DataLoader over (image, label) samples yields"
        )
    inputs, targets = batch
    if not isinstance(inputs, torch.Tensor):
        raise AdaptError(f"the inputs of batch {index} are a {type(inputs).__name__}, not a tensor")
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as err:
        raise AdaptError(f"the targets of batch {index} are not a tensor: {err}") from err
    if targets.dim() == 0:
        raise AdaptError(f"the targets of batch {index} are a scalar, not one row per sample")
    return inputs, targets


def _progress(batches: Iterable[Any], total: int | None, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _stderr_progress(batches, total)
    return tqdm(batches, total=total, desc="extracting features", unit="batch")


def _stderr_progress(batches: Iterable[Any], total: int | None) -> Iterator[Any]:
    of = f"/{total}" if total else ""
    shown = 0.0
    for count, batch in enumerate(batches, 1):
        yield batch
        if time.monotonic() - shown > 0.5 or count == total:
            print(f"\rextracting features: {count}{of} batches", end="", file=sys.stderr)
            shown = time.monotonic()
    print(file=sys.stderr)


# -- storage -----------------------------------------------------------------------------------


class _ShardWriter:
    """Collects each batch's features and targets into shards, in memory or on disk."""

    def __init__(self, directory: Path | None, shard_bytes: int, storage: torch.device) -> None:
        self.directory = directory
        self.shard_bytes = shard_bytes
        self.storage = storage
        self.pending: list[Batch] = []
        self.pending_bytes = 0
        self.shards: list[_Shard] = []
        self.sizes: list[int] = []
        self.first: Batch | None = None  # the first batch, to which all others must conform

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    def add(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        # copy=True: never keep a view that holds a larger tensor of the model alive
        features = features.to(self.storage, memory_format=torch.contiguous_format, copy=True)
        targets = targets.to(self.storage, memory_format=torch.contiguous_format, copy=True)
        if self.first is None:
            self.first = (features, targets)
        else:
            _check_consistent(self.first, (features, targets), len(self.sizes))
        self.pending.append((features, targets))
        self.sizes.append(len(features))
        self.pending_bytes += _nbytes(features) + _nbytes(targets)
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        features = torch.cat([f for f, _ in self.pending])
        targets = torch.cat([t for _, t in self.pending])
        self.pending, self.pending_bytes = [], 0
        start = sum(shard.count for shard in self.shards)
        shard = _Shard(start, len(features), tensors=(features, targets))
        if self.directory is not None:
            shard.file = self.directory / SHARD.format(len(self.shards))
            _write_shard(shard.file, features, targets, len(self.shards))
            shard.tensors = None
        self.shards.append(shard)

    def discard(self) -> None:
        """Remove the shard files written so far (after a failure)."""
        if self.directory is None:
            return
        for shard in self.shards:
            if shard.file is not None:
                shard.file.unlink(missing_ok=True)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _check_consistent(first: Batch, batch: Batch, index: int) -> None:
    for what, a, b in (("features", first[0], batch[0]), ("targets", first[1], batch[1])):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise AdaptError(
                f"batch {index} gives {what} of shape {tuple(b.shape[1:])} {b.dtype} per sample, "
                f"batch 0 {tuple(a.shape[1:])} {a.dtype}; a cache needs one shape (resize every "
                "input to one size)"
            )


def _describe(root: nn.Module, family: str, head: str, writer: _ShardWriter) -> dict[str, Any]:
    from zooadapt import __version__

    features, targets = writer.first  # type: ignore[misc]
    return {
        "format": FORMAT,
        "zooadapt_version": __version__,
        "model": (adapted_from(root) or {}).get("model", ""),
        "model_class": class_name(type(root)),
        "family": family,
        "head": head,
        "head_class": class_name(type(root.get_submodule(head))),
        "feature_shape": list(features.shape[1:]),
        "feature_dtype": _dtype_name(features.dtype),
        "target_shape": list(targets.shape[1:]),
        "target_dtype": _dtype_name(targets.dtype),
        "num_samples": writer.samples,
        "batch_sizes": _runs(writer.sizes),
        "shards": [{"file": s.file and s.file.name, "samples": s.count} for s in writer.shards],
    }


def _runs(sizes: list[int]) -> list[list[int]]:
    """Run-length encoding: ``[32, 32, 8]`` -> ``[[32, 2], [8, 1]]``."""
    return [[size, len(list(group))] for size, group in itertools.groupby(sizes)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in a feature cache")
    return dtype


def _prepare_directory(directory: Path, overwrite: bool) -> Path:
    """Make ``directory`` ready for a new cache: no index, no shards of an old one."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a feature cache path is a directory")
    index = directory / INDEX
    if index.exists():
        _read_index(directory)  # refuses to delete a features.json that is not ours
        if not overwrite:
            raise CheckpointError(
                f"{directory} already holds a feature cache; pass overwrite=True to replace "
                f"it, or reopen it with FeatureCache.load({str(directory)!r})"
            )
    directory.mkdir(parents=True, exist_ok=True)
    index.unlink(missing_ok=True)  # from here on the directory holds no complete cache
    for file in directory.iterdir():
        if _OWN_FILE.fullmatch(file.name):
            file.unlink(missing_ok=True)
    return directory


def _write_shard(file: Path, features: torch.Tensor, targets: torch.Tensor, number: int) -> None:
    from safetensors.torch import save_file

    tensors = {"features": features.cpu(), "targets": targets.cpu()}
    with atomic_write(file) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT, "shard": str(number)})


def _write_index(directory: Path, info: dict[str, Any]) -> None:
    with atomic_write(directory / INDEX) as temporary:
        temporary.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def _read_index(directory: Path) -> dict[str, Any]:
    index = directory / INDEX
    if not directory.is_dir():
        raise CheckpointError(f"{directory} does not exist or is no directory: no feature cache")
    if not index.is_file():
        leftovers = any(_OWN_FILE.fullmatch(f.name) for f in directory.iterdir())
        problem = (
            "holds an incomplete feature cache (the run writing it was interrupted)"
            if leftovers
            else "holds no feature cache"
        )
        raise CheckpointError(f"{directory} {problem}; build it with FeatureCache(model, data)")
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {index}: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(
            f"{index} is not a zooadapt feature cache index ({FORMAT}); choose another directory"
        )
    return info


def _shard_entries(info: dict[str, Any]) -> list[dict[str, Any]]:
    entries = info.get("shards")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"malformed {INDEX}: no list of shards")
    return entries


def _check_shard(
    directory: Path, entry: dict[str, Any], info: dict[str, Any], start: int
) -> _Shard:
    """A shard of a reopened cache, after checking its header against the index."""
    file = directory / str(entry.get("file"))
    header = _read_header(file)
    count = int(entry.get("samples", -1))
    for name, shape, dtype in _expected(info, count):
        found = header.get(name, {})
        if found.get("shape") != shape or _SAFETENSORS_DTYPES.get(found.get("dtype")) != dtype:
            raise CheckpointError(
                f"{file}: {name} are {found.get('shape')} {found.get('dtype')}, the index says "
                f"{shape} {dtype}; the cache is damaged, build it again"
            )
    return _Shard(start, count, file=file)


def _expected(info: dict[str, Any], count: int) -> list[tuple[str, list[int], torch.dtype]]:
    return [
        ("features", [count, *info["feature_shape"]], _parse_dtype(info["feature_dtype"])),
        ("targets", [count, *info["target_shape"]], _parse_dtype(info["target_dtype"])),
    ]


def _read_header(file: Path) -> dict[str, dict[str, Any]]:
    """Shape and dtype of each tensor in a safetensors shard, read by the safetensors library."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {
                name: {
                    "shape": list(handle.get_slice(name).get_shape()),
                    "dtype": handle.get_slice(name).get_dtype(),
                }
                for name in handle.keys()  # noqa: SIM118 - safe_open is no mapping
            }
    except Exception as err:  # noqa: BLE001 - OSError or safetensors' own error
        raise CheckpointError(f"cannot read feature shard {file}: {err}; build it again") from err


def _map_shard(file: Path, info: dict[str, Any], count: int) -> Batch:
    """Open a shard's tensors memory-mapped: pages are read from disk as they are used."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            features, targets = handle.get_tensor("features"), handle.get_tensor("targets")
    except Exception as err:  # noqa: BLE001 - OSError or safetensors' own error
        raise CheckpointError(f"cannot read feature shard {file}: {err}; build it again") from err
    return features, targets
