"""The ``hf`` zoo: Hugging Face Hub image classifiers, from the local cache first.

``hf/<org>/<name>`` names a Hub repository and ``hf/<directory>`` (or the directory
alone) a model written by ``save_pretrained``. The cache is the one ``huggingface_hub``
uses, read from ``HF_HUB_CACHE`` or ``HF_HOME`` on every call; ``za.list_models("hf/*")``
lists the cached repositories whose ``config.json`` names an ``*ForImageClassification``.
Files are downloaded only when online; offline, the message names the repository, its
files and the cache folder. ``transformers`` is needed to build, not to list.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from zooadapt import (
    AdaptError,
    DataConfig,
    ModelNotFoundError,
    Weights,
    WeightsNotAvailableError,
    offline,
)

ZOO = "hf"
CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
#: The weights files transformers reads, in its order of preference.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: PIL's resampling codes, as image processors store them.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: ConvNeXt-style processors resize ``shortest_edge`` without a crop from this size on.
CROP_PCT_LIMIT = 384
#: Processors that resize ``shortest_edge`` times a factor before their crop (in code).
EDGE_SCALE = {"LevitImageProcessor": 256 / 224}


def cache_dir() -> Path:
    """The Hub cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_folder(repo: str) -> Path:
    return cache_dir() / f"models--{repo.replace('/', '--')}"


def cached(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """The cached file of ``repo`` at ``revision`` (default ``main``), or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AdaptError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(values, dict):
        raise AdaptError(f"{path} holds {type(values).__name__}, not a JSON object")
    return values


def is_classifier_config(path: Path | None) -> bool:
    """Whether a ``config.json`` names an image-classification architecture."""
    if path is None or not path.is_file():
        return False
    try:
        architectures = read_json(path).get("architectures") or []
    except AdaptError:
        return False
    return any(str(a).endswith("ForImageClassification") for a in architectures)


# -- names ------------------------------------------------------------------------------


def models() -> list[str]:
    """The cached repositories (at ``main``) that hold an image classifier."""
    root = cache_dir()
    if not root.is_dir():
        return []
    repos = (p.name[len("models--") :].replace("--", "/") for p in root.glob("models--*--*"))
    return sorted(repo for repo in repos if is_classifier_config(cached(repo, CONFIG)))


def find(name: str) -> str | None:
    """A repository id as it is, or a ``save_pretrained`` directory as an absolute path.

    Raises:
        ModelNotFoundError: If a name given to this zoo is neither.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()) if (path / CONFIG).is_file() else None
    if REPO_ID.match(name):
        return name
    if name.startswith(("/", ".", "~")):
        raise ModelNotFoundError(f"hf/{name}: there is no directory {path}")
    raise ModelNotFoundError(
        f"hf/{name} is not a Hugging Face repository id: write hf/<org>/<name> "
        "(hf/google/vit-base-patch16-224) or hf/<directory written by save_pretrained>"
    )


def _directory(arch: str) -> Path | None:
    path = Path(arch)
    return path if path.is_absolute() and path.is_dir() else None


# -- weights ------------------------------------------------------------------------------


def weights(arch: str) -> list[Weights]:
    """``local`` for a directory; for a repository, ``main`` and every cached revision."""
    directory = _directory(arch)
    if directory is not None:
        file = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
        return [
            Weights(
                model=f"{ZOO}/{arch}",
                tag="local",
                url=directory.as_uri(),
                file=file or directory / WEIGHT_FILES[0],
                default=True,
                source=f"directory {directory} (save_pretrained)",
            )
        ]
    refs = _repo_folder(arch) / "refs"
    cached_refs = (p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    revisions = ["main", *sorted(r for r in cached_refs if r != "main")]  # refs/pr/1 too
    return [_hub_weights(arch, revision) for revision in revisions]


def is_sha256(name: str) -> bool:
    """Whether a cache blob's name is a sha256 (the Hub names LFS blobs by theirs)."""
    return bool(_SHA256.match(name))


def expected_file(repo: str, revision: str, filename: str) -> Path:
    """Where ``filename`` of ``repo`` at ``revision`` goes in the cache."""
    return _snapshot(repo, revision) / filename


def _hub_weights(repo: str, revision: str) -> Weights:
    file = next((f for name in WEIGHT_FILES if (f := cached(repo, name, revision))), None)
    expected = expected_file(repo, revision, WEIGHT_FILES[0])
    blob = file.resolve().name if file is not None else ""
    return Weights(
        model=f"{ZOO}/{repo}",
        tag=revision,
        url=f"https://huggingface.co/{repo}/resolve/{revision}/{(file or expected).name}",
        file=file or expected,
        sha256=blob if is_sha256(blob) else "",
        default=revision == "main",
        source=(
            f"Hugging Face Hub repo {repo}: {CONFIG}, {PROCESSOR} and one of "
            f"{', '.join(WEIGHT_FILES)}; `hf download {repo}` fetches them"
        ),
        download=lambda: _download(repo, revision),
    )


def _snapshot(repo: str, revision: str) -> Path:
    """The snapshot folder of ``revision``: the commit ``refs/<revision>`` names, if cached."""
    ref = _repo_folder(repo) / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    return _repo_folder(repo) / "snapshots" / commit


def _download(repo: str, revision: str) -> Path:
    """Fetch the config, the image processor config and the weights; return the weights."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir()))

    fetch(CONFIG)
    with contextlib.suppress(EntryNotFoundError):  # not every repository has one
        fetch(PROCESSOR)
    for filename in WEIGHT_FILES:
        try:
            path = fetch(filename)
        except EntryNotFoundError:
            continue
        if filename.endswith(".index.json"):
            for shard in sorted(set(read_json(path).get("weight_map", {}).values())):
                fetch(shard)
        return path
    raise WeightsNotAvailableError(f"{ZOO}/{repo} publishes none of {', '.join(WEIGHT_FILES)}")


# -- building -------------------------------------------------------------------------------


def build(arch: str, weights: Weights | None = None, **kwargs: Any) -> nn.Module:
    """``AutoModelForImageClassification``: from the config, or ``from_pretrained``.

    ``kwargs`` override config attributes (``drop_path_rate=0.1``), as in transformers.
    """
    transformers = _transformers(arch)
    folder = weights.file.parent if weights is not None else _config_folder(arch)
    config = folder / CONFIG
    if not is_classifier_config(config):
        raise ModelNotFoundError(
            f"{ZOO}/{arch}: {config} does not name an *ForImageClassification architecture; "
            "the hf zoo builds transformers image classifiers (a timm repository is "
            "timm/<name>)"
        )
    auto = transformers.AutoModelForImageClassification
    if weights is None:
        model = auto.from_config(transformers.AutoConfig.from_pretrained(folder, **kwargs))
    else:
        model = auto.from_pretrained(folder, **kwargs)
    model.config._name_or_path = str(folder)  # where the image processor config is
    return model


def _transformers(arch: str) -> Any:
    try:
        import transformers
    except ImportError as err:
        raise AdaptError(
            f"{ZOO}/{arch} needs Hugging Face transformers: pip install 'zooadapt[hf]' "
            "(or pip install 'transformers>=4.45')"
        ) from err
    return transformers


def _config_folder(arch: str) -> Path:
    """The folder holding ``config.json``: the directory, or the (downloaded) snapshot."""
    directory = _directory(arch)
    if directory is not None:
        return directory
    config = cached(arch, CONFIG)
    if config is not None:
        return config.parent
    reason = "offline mode (ZOOADAPT_OFFLINE)" if offline() else ""
    if not reason:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(arch, CONFIG, cache_dir=cache_dir())).parent
        except Exception as err:  # noqa: BLE001 - any failure means "not available"
            reason = f"download failed: {err!r}"
    raise WeightsNotAvailableError(
        f"{ZOO}/{arch}: its {CONFIG} is not in the Hugging Face cache ({reason}).\n"
        f"  published: Hugging Face Hub repo {arch}\n"
        f"  cache dir: {_repo_folder(arch)}\n"
        f"  fetch it where there is a network: hf download {arch} "
        f"(then copy {cache_dir()} here, or set HF_HOME)"
    )


# -- the image processor config ------------------------------------------------------------


def processor_file(name_or_path: str) -> Path | None:
    """The ``preprocessor_config.json`` beside a model: in its folder, or cached."""
    if not name_or_path:
        return None
    folder = Path(name_or_path)
    if folder.is_dir():
        file = folder / PROCESSOR
        return file if file.is_file() else None
    return cached(name_or_path, PROCESSOR) if REPO_ID.match(name_or_path) else None


def processor_config(values: Mapping[str, Any], source: str) -> DataConfig | None:
    """The :class:`DataConfig` of an image processor config, or ``None`` without statistics.

    The statistics are converted to images in ``[0, 1]`` (``rescale_factor`` and
    ``rescale_offset`` folded in); ``size``/``crop_size``/``crop_pct`` become the resize
    and crop, ``resample`` the interpolation.
    """
    mean, std = values.get("image_mean"), values.get("image_std")
    if not values.get("do_normalize", True):
        channels = len(mean) if isinstance(mean, (list, tuple)) else 3
        mean, std = [0.0] * channels, [1.0] * channels
    if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
        return None
    rescale = float(values.get("rescale_factor", 1 / 255)) if values.get("do_rescale", 1) else 1
    scale = 255 * rescale  # the model's input per unit of a [0, 1] image
    scale = 1.0 if math.isclose(scale, 1.0) else scale
    offset = 1.0 if values.get("rescale_offset") else 0.0
    if values.get("include_top"):  # EfficientNet's processor divides by the std twice
        std = [s * s for s in std]
    geometry = _geometry(values)
    if geometry is None:
        return None
    crop, resize, crop_mode, crop_pct = geometry
    return DataConfig(
        input_size=(len(mean), *crop),
        mean=[(m + offset) / scale for m in mean],
        std=[s / scale for s in std],
        interpolation=_interpolation(values.get("resample")),
        crop_pct=crop_pct,
        resize_size=resize,
        crop_mode=crop_mode,
        source=source,
    )


def _geometry(
    values: Mapping[str, Any],
) -> tuple[tuple[int, int], tuple[int, ...], str, float] | None:
    """``(crop, resize, crop_mode, crop_pct)`` as the processor resizes and crops."""
    size, crop = _size(values.get("size")), _size(values.get("crop_size"))
    if size is None:
        return None
    mode, resize = ("center", (size[0],)) if len(size) == 1 else ("squash", size)
    if len(size) == 1:
        resize = (int(EDGE_SCALE.get(values.get("image_processor_type", ""), 1) * size[0]),)
    if values.get("do_center_crop") and crop is not None and len(crop) == 2:
        return crop, resize, mode, crop[0] / resize[0]
    if len(size) == 2:
        return size, size, "squash", 1.0
    edge = size[0]
    crop_pct = values.get("crop_pct")
    if isinstance(crop_pct, (int, float)) and edge < CROP_PCT_LIMIT:  # ConvNeXt's processor
        return (edge, edge), (int(edge / crop_pct),), "center", float(crop_pct)
    return (edge, edge), (edge,), "center" if crop_pct is None else "squash", 1.0


def _size(value: object) -> tuple[int, ...] | None:
    """``(height, width)``, ``(shortest_edge,)`` or ``None``."""
    if isinstance(value, int):
        return (value, value)
    if not isinstance(value, Mapping):
        return None
    if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
        return (value["height"], value["width"])
    if isinstance(value.get("shortest_edge"), int):
        return (value["shortest_edge"],)
    return None


def _interpolation(resample: object) -> str:
    if isinstance(resample, int) and resample in RESAMPLE:
        return RESAMPLE[resample]
    return resample.lower() if isinstance(resample, str) else "bilinear"
