"""Process-wide patches scoped to a call and to the thread that makes it.

zooadapt temporarily changes a few global things (``nn.Module.register_parameter`` while
building on meta, ``F.scaled_dot_product_attention`` while estimating memory, the garbage
collector while creating many tensors). Each is installed while at least one call needs
it and removed after the last; a patched function behaves as the original in every
thread that is not inside such a call, so concurrent users never see each other's patch.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ScopedPatch", "gc_paused"]


class ScopedPatch:
    """Replace ``owner.name`` by ``patched(original, *args, **kwargs)`` inside :meth:`active`.

    Args:
        owner: The class or module holding the attribute.
        name: The attribute's name.
        patched: Called instead of the original, with the original first, by threads that
            are inside :meth:`active`; every other thread gets the original.
    """

    def __init__(self, owner: Any, name: str, patched: Callable[..., Any]) -> None:
        self.owner, self.name, self.patched = owner, name, patched
        self._lock = threading.Lock()
        self._users = 0
        self._local = threading.local()
        self._original: Any = None

    def _dispatcher(self) -> Callable[..., Any]:
        original, patched, local = self._original, self.patched, self._local

        def dispatch(*args: Any, **kwargs: Any) -> Any:
            if getattr(local, "depth", 0):
                return patched(original, *args, **kwargs)
            return original(*args, **kwargs)

        return dispatch

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Apply the patch for the calling thread (re-entrant)."""
        with self._lock:
            if self._users == 0:
                self._original = getattr(self.owner, self.name)
                setattr(self.owner, self.name, self._dispatcher())
            self._users += 1
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    setattr(self.owner, self.name, self._original)


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many tensor objects are created.

    Building a model and unpickling a checkpoint allocate thousands of objects, which
    otherwise trigger full collections over the whole heap (0.2 s of a 0.3 s ResNet-152
    load in ``benchmarks/bench_load.py``). Calls may overlap, in any threads: the
    collector is paused by the first and enabled again (if it was) after the last.
    """
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()
