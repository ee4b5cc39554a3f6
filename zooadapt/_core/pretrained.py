"""Pretrained weights of zoo models: choose them, find them in the local cache, verify them.

Offline first: a file already in the zoo's cache is used as is (after a sha256 check);
otherwise it is downloaded, unless ``ZOOADAPT_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) is set
or the download fails, in which case the error says exactly which file to put where.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from pathlib import Path

from zooadapt._core.names import ModelRef
from zooadapt.errors import AdaptError, CheckpointError, PluginError, WeightsNotAvailableError
from zooadapt.types import Weights

__all__ = ["available_weights", "ensure_local", "select_weights"]

OFFLINE = "offline mode (ZOOADAPT_OFFLINE)"
_verified: set[tuple[str, int, float]] = set()


def available_weights(ref: ModelRef) -> list[Weights]:
    """Every pretrained weights entry the zoo declares for ``ref``'s architecture."""
    try:
        return list(ref.zoo.item.weights(ref.arch))
    except Exception as err:
        raise PluginError(
            f"plugin {ref.zoo.plugin!r} failed listing weights of {ref.qualified!r}: {err!r}",
            plugin=ref.zoo.plugin,
        ) from err


def select_weights(ref: ModelRef, pretrained: bool | str) -> Weights:
    """The weights that ``pretrained=True`` or ``pretrained="<tag>"`` means for ``ref``.

    Raises:
        AdaptError: If the name's tag and ``pretrained`` name different weights.
        WeightsNotAvailableError: If the zoo knows no such weights.
    """
    requested = pretrained if isinstance(pretrained, str) else None
    if ref.tag and requested and ref.tag != requested:
        raise AdaptError(
            f"{ref.qualified}.{ref.tag} names weights {ref.tag!r} but pretrained={requested!r}"
        )
    tag = ref.tag or requested
    known = available_weights(ref)
    for weights in known:
        if (weights.tag == tag) if tag else weights.default:
            return weights
    tags = ", ".join(w.tag for w in known) or "none"
    wanted = f"weights {tag!r}" if tag else "default weights"
    raise WeightsNotAvailableError(
        f"{ref.qualified} has no {wanted}; known weights: {tags}. "
        "Pass pretrained=False for random initialisation or a local checkpoint path."
    )


def offline() -> bool:
    """Whether downloads are off: ``ZOOADAPT_OFFLINE`` or ``HF_HUB_OFFLINE`` set, not to 0.

    Zoo plugins that download read it too, so that one switch covers every source.
    """
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("ZOOADAPT_OFFLINE", "HF_HUB_OFFLINE")
    )


def ensure_local(weights: Weights, ref: ModelRef) -> Path:
    """Return the verified local file of ``weights``, downloading it only when online.

    Raises:
        WeightsNotAvailableError: If the file is not cached and cannot be downloaded; the
            message names the file, URL, sha256, cache directory and cached alternatives.
        CheckpointError: If the cached file's sha256 does not match the published one.
    """
    path: Path | None = weights.file
    if not weights.cached:
        reason = OFFLINE if offline() else unreachable(weights.url)
        path = None
        if not reason:
            reason, path = _download(weights)
        if path is None or not path.is_file():
            raise WeightsNotAvailableError(_missing_message(weights, ref, reason))
    verify_sha256(path, weights.sha256)
    return path


#: Hosts found unreachable in this process: asked once, then answered at once.
_unreachable: dict[tuple[str, int], str] = {}


def unreachable(url: str, timeout: float = 3.0) -> str:
    """Why ``url``'s host cannot be reached (``""`` if it answers): one connection attempt.

    Without a network a download library retries for a minute; this answers within
    ``timeout`` seconds, so that missing weights fail at once with the offline message.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return ""  # not a URL the probe understands: the download says what is wrong
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if address not in _unreachable:
        try:
            with socket.create_connection(address, timeout=timeout):
                return ""
        except OSError as err:
            _unreachable[address] = (
                f"no network: cannot reach {address[0]}:{address[1]} ({err.strerror or err})"
            )
    return _unreachable[address]


def _download(weights: Weights) -> tuple[str, Path | None]:
    try:
        if weights.download is not None:
            return "downloaded", Path(weights.download())
        from torch.hub import download_url_to_file

        weights.file.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(weights.url, str(weights.file), progress=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not available"
        return f"download failed: {err!r}", None
    return "downloaded", weights.file


def _missing_message(weights: Weights, ref: ModelRef, reason: str) -> str:
    cached = [w for w in available_weights(ref) if w.cached and w.tag != weights.tag]
    lines = [
        f"pretrained weights {weights.tag!r} of {ref.qualified} are not available ({reason}).",
        *([f"  published: {weights.source}"] if weights.source else []),
        f"  file:      {weights.file.name}"
        + (f" (sha256 {weights.sha256}...)" if weights.sha256 else ""),
        f"  url:       {weights.url}",
        f"  cache dir: {weights.file.parent}  (put the file there)",
        f"  or pass the file itself: pretrained='/path/to/{weights.file.name}'",
    ]
    if cached:
        options = ", ".join(f"pretrained={w.tag!r}" for w in cached)
        lines.append(f"  weights of this model already cached: {options}")
    return "\n".join(lines)


def verify_sha256(path: Path, expected: str) -> None:
    """Check that ``path``'s sha256 starts with ``expected`` (no-op when unknown).

    Raises:
        CheckpointError: Naming the file and both digests, if they differ.
    """
    if not expected:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key in _verified:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not actual.startswith(expected.lower()):
        raise CheckpointError(
            f"{path} has sha256 {actual[:16]}..., expected {expected}...: the file is corrupt "
            "or not the published one; delete it and download it again"
        )
    _verified.add(key)
