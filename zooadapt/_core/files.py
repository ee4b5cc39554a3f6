"""Read checkpoint files safely: safetensors or torch files, never running pickled code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import re
import secrets
import signal
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from zooadapt.errors import CheckpointError

__all__ = [
    "NESTED_KEYS",
    "Source",
    "atomic_write",
    "check_regular_file",
    "check_writable",
    "load_torch",
    "reading",
    "read_state_dict",
    "remove_stale_temporaries",
    "safe_globals",
    "unpickling_message",
]

#: Keys under which training checkpoints nest the model's state dict, in preference order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")

#: A checkpoint: a path or an open binary file.
Source = str | os.PathLike[str] | IO[bytes]

_SAFETENSORS_HINT = b"{"

#: Memory-map zip checkpoints (see benchmarks/README.md for the measured trade-off).
MMAP = True


def read_state_dict(
    source: Source,
    *,
    key: str | None = None,
    trust_pickle: bool = False,
    map_location: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or torch checkpoint, on the CPU.

    Torch files are read with ``weights_only=True`` (memory-mapped when they are zip
    files), so a malicious pickle cannot run. A training checkpoint's nested state dict
    is unwrapped (``state_dict``, ``model_state_dict``, ``model``, ``module``,
    ``state_dict_ema``, ``model_ema``, in that order), or the one named by ``key``.

    Args:
        source: A file path or an open binary file.
        key: The entry of a checkpoint dict that holds the state dict.
        trust_pickle: Allow arbitrary pickled objects (a whole pickled model, say). Only
            for files you trust: unpickling can run any code.
        map_location: Device to read tensors to (default: the CPU).

    Raises:
        CheckpointError: Naming the file, if it is missing, truncated, not a checkpoint,
            holds pickled objects without ``trust_pickle``, or lacks ``key``.
    """
    label = _label(source)
    if isinstance(source, (str, os.PathLike)):
        check_regular_file(source, "checkpoint")
    with reading(f"checkpoint {label}", label):
        if _is_safetensors(source):
            data: Any = _read_safetensors(source, str(map_location or "cpu"))
        else:
            data = _torch_load(source, trust_pickle, map_location or "cpu")
    return _unwrap(data, label, key)


@contextlib.contextmanager
def reading(what: str, label: str) -> Iterator[None]:
    """Any error while reading ``what`` becomes one :class:`CheckpointError` naming it.

    A refused unpickle names the blocked global and how to allow it
    (:func:`unpickling_message`); anything else says the file is damaged.
    """
    try:
        yield
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(unpickling_message(label, err)) from err
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read {what}: it is truncated or not a checkpoint ({first})"
        ) from err


#: How deep nested checkpoint dicts are unwrapped before giving up (a cycle is caught
#: earlier, by identity).
MAX_NESTING = 8


def check_regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path`, if it is a regular file: never open a FIFO or a device.

    Raises:
        CheckpointError: Naming the path: missing, a directory, or not a regular file.
    """
    target = Path(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{what} {target} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {target}: {err.strerror or err}") from err
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{what} {target} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise CheckpointError(
            f"{what} {target} is not a regular file (a FIFO, socket or device); "
            "zooadapt reads checkpoints only from regular files"
        )
    return target


def _label(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<file object>"))


def _head_bytes(source: Source) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return handle.read(9)
    position = source.tell()
    head = source.read(9)
    source.seek(position)
    return head


def _is_safetensors(source: Source) -> bool:
    """Safetensors files start with an 8-byte header length and a JSON header."""
    head = _head_bytes(source)
    return len(head) == 9 and head[8:9] == _SAFETENSORS_HINT


def _read_safetensors(source: Source, device: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load, load_file

    if isinstance(source, (str, os.PathLike)):
        return load_file(str(source), device=device)
    return {k: v.to(device) for k, v in load(source.read()).items()}


def _torch_load(source: Source, trust_pickle: bool, location: Any) -> Any:
    if trust_pickle:
        data = torch.load(source, map_location=location, weights_only=False)
        return data.state_dict() if isinstance(data, nn.Module) else data
    if isinstance(source, (str, os.PathLike)):
        try:
            return load_torch(source, location, mmap=MMAP)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
    return load_torch(source, location)


def load_torch(source: Source, location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and the inert types of :func:`safe_globals`."""
    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(source, map_location=location, weights_only=True, mmap=mmap or None)


@functools.cache
def safe_globals() -> list[Any]:
    """Inert types real checkpoints hold, unpickled without ``trust_pickle``.

    ``argparse.Namespace`` (the ``args`` of timm's ``train.py`` and many scripts), numpy
    scalars and arrays (not of ``object`` dtype), ``pathlib`` paths, ``datetime`` values,
    ``Counter`` and builtin types. They build data only; nothing they unpickle runs code.
    (``defaultdict`` cannot be rebuilt by torch's restricted unpickler at all.)
    """
    import argparse
    import collections
    import datetime
    import pathlib

    allowed: list[Any] = [
        argparse.Namespace,
        collections.Counter,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        pathlib.Path,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        list,
        tuple,
        dict,
        set,
        frozenset,
    ]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return allowed
    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct")]
        allowed += [(multiarray.scalar, f"{module}.scalar")]
    allowed += [np.ndarray, np.dtype]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]
    allowed += [type(np.dtype("M8[s]")), type(np.dtype("m8[s]"))]
    return allowed


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BLOCKED = (re.compile(r"GLOBAL ([\w.]+)"), re.compile(r"got <class '([\w.]+)'>"))


def unpickling_message(label: str, err: BaseException) -> str:
    """One plain message for a refused unpickle: the blocked global and how to allow it."""
    text = _ANSI.sub("", str(err))
    found = next((m.group(1) for regex in _BLOCKED if (m := regex.search(text))), None)
    what = f"a pickled {found}" if found else "pickled Python objects (a whole model, say)"
    allow = (
        f", or allow just that type with torch.serialization.add_safe_globals([{found}])"
        if found
        else ""
    )
    return (
        f"{label} holds {what}, which zooadapt does not unpickle by default (unpickling can "
        f"run code). If you trust this file: trust_pickle=True (CLI: --trust-pickle){allow}"
    )


def _unwrap(data: Any, label: str, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(data, Mapping) or key not in data:
            keys = sorted(map(str, data)) if isinstance(data, Mapping) else []
            raise CheckpointError(f"{label} has no entry {key!r}; its entries: {keys[:20]}")
        data = data[key]
    seen: set[int] = set()
    while isinstance(data, Mapping) and not _is_state_dict(data):
        if id(data) in seen or len(seen) >= MAX_NESTING:
            problem = "refers to itself" if id(data) in seen else f"nests over {MAX_NESTING} deep"
            raise CheckpointError(
                f"{label}: its nested entries {problem}; choose the state dict with key=..."
            )
        seen.add(id(data))
        nested = next((k for k in NESTED_KEYS if isinstance(data.get(k), Mapping)), None)
        if nested is None:
            raise CheckpointError(
                f"{label} is a dict without tensors or a known nested entry {NESTED_KEYS}; "
                f"its entries: {sorted(map(str, data))[:20]}; choose one with key=..."
            )
        data = data[nested]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"{label} holds {type(data).__name__}, not a state dict")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(data: Mapping[Any, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


#: Temporary files of :func:`atomic_write`: ``.za-<target tag>-<pid>-<random>.tmp``, short
#: enough beside any valid file name, and recognisable as a given target's.
TEMP_PREFIX = ".za-"
_live: set[Path] = set()  # temporary files being written by this process
_live_lock = threading.Lock()
_previous_sigterm: Any = None


def _tag(target: Path) -> str:
    return hashlib.sha1(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _temporary(target: Path) -> Path:
    return target.with_name(f"{TEMP_PREFIX}{_tag(target)}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove what killed writers (``kill -9``) left beside ``target``; return those files."""
    removed = []
    for leftover in target.parent.glob(f"{TEMP_PREFIX}{_tag(target)}-*.tmp"):
        try:
            pid = int(leftover.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if leftover in _live or (pid != os.getpid() and _alive(pid)):
            continue  # another writer is still at work
        leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _on_sigterm(signum: int, frame: Any) -> None:
    """Remove this process's temporary files, then end as SIGTERM would have."""
    for temporary in list(_live):
        temporary.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _previous_sigterm or signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _track(temporary: Path) -> None:
    global _previous_sigterm
    with _live_lock:
        first = not _live
        _live.add(temporary)
    main = threading.current_thread() is threading.main_thread()
    if first and main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _untrack(temporary: Path) -> None:
    global _previous_sigterm
    with _live_lock:
        _live.discard(temporary)
        last = not _live
    main = threading.current_thread() is threading.main_thread()
    if last and main and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _previous_sigterm or signal.SIG_DFL)
        _previous_sigterm = None


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, if a file can be written there (checked before work).

    Raises:
        CheckpointError: Naming the path: a directory, a missing or unwritable folder.
    """
    target = Path(path)
    _check_target(target)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {target}: no permission to write in {target.parent}")
    return target


def _check_target(target: Path) -> None:
    if not target.name or target.name in (".", ".."):
        raise CheckpointError(f"cannot write {target}: not a file name")
    if target.is_dir():
        raise CheckpointError(f"cannot write {target}: it is a directory")
    parent = target.parent
    if not parent.exists():
        raise CheckpointError(
            f"cannot write {target}: directory {parent} does not exist (create it first)"
        )
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {target}: {parent} is a file, not a directory")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file has a name of its own for every call (any thread, any process), is
    fsynced and renamed over ``path``, then the directory is fsynced: ``path`` always
    holds one complete write (the last one to finish), never a mix or a partial one.
    On an exception, or SIGTERM / SIGINT, the temporary file is removed and ``path`` is
    untouched; what a SIGKILL leaves is removed by the next write to ``path``. Missing
    directories are not created.

    Raises:
        CheckpointError: Naming the path and the cause (a missing directory, a read-only
            or full disk, ...); the file at ``path``, if any, is intact.
    """
    if path is None:
        raise CheckpointError("no path to write to: pass a file name")
    target = Path(path)
    _check_target(target)
    remove_stale_temporaries(target)
    temporary = _temporary(target)
    _track(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            cause = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise CheckpointError(f"cannot write {target}: {cause}") from err
        raise
    finally:
        _untrack(temporary)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
