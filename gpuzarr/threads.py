"""Thread pools and per-process state that survive ``fork()``, sized from :data:`gpuzarr.config`.

A forked child (torch DataLoader workers, ``multiprocessing`` with the fork start
method) inherits a ``ThreadPoolExecutor`` object but none of its threads: work
submitted to it would wait forever. It may also inherit a lock that a parent thread
held at the moment of the fork. Everything in gpuzarr that must exist once per process
— thread pools, network clients bound to threads or event loops — is a
:class:`ForkLocal`: made lazily, remade in a child, and its lock renewed by an
``os.register_at_fork`` hook (as zarr-python resets its pools and loops).

:class:`ThreadPool` is the one pool type. :func:`cpu_pool` is the one pool for CPU work —
the CPU engine's decode tasks and the GPU engine's fallback decodes share it, so the
``threads`` setting is one budget, not one per component. Fetchers own I/O pools sized by
``io_threads`` (blocking reads wait, they do not compute). A pool whose size comes from
the settings follows them: a changed setting takes effect at the pool's next use.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gpuzarr.settings import thread_budget

__all__ = ["ForkLocal", "ThreadPool", "cpu_pool"]

T = TypeVar("T")

_live: weakref.WeakSet[ForkLocal[Any]] = weakref.WeakSet()


class ForkLocal[T]:
    """A value made on first use, once per process; a forked child makes its own.

    ``factory()`` makes the value; ``close(value)`` (optional) releases it on
    :meth:`reset` in the process that made it — never in a child, where the parent's
    value is dropped unclosed (its threads and sockets belong to the parent).
    ``stale(value)`` (optional) asks, on each :meth:`get`, whether the value must be
    remade (a pool whose configured size changed).
    """

    def __init__(self, factory: Callable[[], T], *, close: Callable[[T], None] | None = None,
                 stale: Callable[[T], bool] | None = None) -> None:
        self._factory = factory
        self._close = close
        self._stale = stale
        self._lock = threading.Lock()
        self._value: T | None = None
        self._pid = -1
        _live.add(self)

    def get(self) -> T:
        """This process's value, made now if needed."""
        value, pid = self._value, os.getpid()
        if value is not None and self._pid == pid and (self._stale is None or not self._stale(value)):
            return value
        with self._lock:
            old = self._value if self._pid == pid else None
            if old is not None and (self._stale is None or not self._stale(old)):
                return old
            self._value, self._pid = self._factory(), pid
            value = self._value
        if old is not None and self._close is not None:
            self._close(old)
        return value

    def peek(self) -> T | None:
        """This process's value if it has been made, else ``None`` (makes nothing)."""
        return self._value if self._pid == os.getpid() else None

    def take(self) -> T | None:
        """Drop the value and hand this process's to the caller (unclosed); the next :meth:`get` makes a new one."""
        with self._lock:
            value = self._value if self._pid == os.getpid() else None
            self._value, self._pid = None, -1
        return value

    def reset(self) -> None:
        """Drop the value, closing it if this process made it."""
        value = self.take()
        if value is not None and self._close is not None:
            self._close(value)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._value, self._pid = None, -1


def _after_fork_in_child() -> None:
    for item in list(_live):
        item._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ThreadPool:
    """A fork-safe ``ThreadPoolExecutor`` of ``size`` threads (an int, or a callable read at each use)."""

    def __init__(self, name: str, size: int | Callable[[], int]) -> None:
        self.name = name
        self._size = size
        self._local: ForkLocal[ThreadPoolExecutor] = ForkLocal(
            self._start, close=lambda ex: ex.shutdown(wait=False), stale=lambda ex: ex._max_workers != self.size)

    @property
    def size(self) -> int:
        """Threads the pool runs with now (the setting, resolved)."""
        return max(1, int(self._size() if callable(self._size) else self._size))

    def _start(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.size, thread_name_prefix=self.name)

    def executor(self) -> ThreadPoolExecutor:
        """The executor of this process (started, or restarted after a fork or a size change)."""
        return self._local.get()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.executor().submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> Iterator[T]:
        return self.executor().map(fn, *iterables)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the threads of this process's executor; a later use starts a new one."""
        executor = self._local.take()
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)


_CPU_POOL = ThreadPool("gpuzarr-cpu", thread_budget)


def cpu_pool() -> ThreadPool:
    """The process-wide pool for CPU work (decode, fallback decode), ``threads`` threads."""
    return _CPU_POOL
