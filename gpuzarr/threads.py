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

:class:`BackgroundBuild` is the one way to make something slow once per process — the
Numba compiles of the CPU engine's lane and of the planner's twins — on the caller's
thread or a background one, once enough work has asked for it.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gpuzarr.settings import thread_budget

__all__ = ["BackgroundBuild", "ForkLocal", "ThreadPool", "cpu_pool"]

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


class _BuildState:
    """One process's progress on a :class:`BackgroundBuild`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: Any = None
        self.failed: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.asked = 0  # work items asked for before a background build started


class BackgroundBuild[T]:
    """A value slow to make (a Numba compile), built once per process, on the caller's thread or a background one.

    ``build()`` makes it. An ``ImportError`` (an optional extra not installed) leaves it
    unbuilt silently; any other failure is said once in a ``RuntimeWarning`` naming
    ``what`` and what happens ``instead``. Either way :meth:`get` then answers ``None``
    for the rest of the process, and callers take their other path. A forked child
    builds its own (a thread of the parent's never runs in it).
    """

    def __init__(self, build: Callable[[], T], *, what: str, instead: str) -> None:
        self._build, self._what, self._instead = build, what, instead
        self._state: ForkLocal[_BuildState] = ForkLocal(_BuildState)

    def _run(self, state: _BuildState) -> None:
        try:
            value = self._build()
        except ImportError as exc:
            state.failed = exc
            return
        except Exception as exc:  # noqa: BLE001 - any build failure leaves the other path, said once
            state.failed = exc
            warnings.warn(f"gpuzarr: {self._what} could not be built ({type(exc).__name__}: {exc}); {self._instead}",
                          RuntimeWarning, stacklevel=2)
            return
        state.value = value

    def built(self) -> T | None:
        """The value if this process has built it (never starts or waits for a build)."""
        state = self._state.peek()
        return None if state is None else state.value

    def join(self) -> T | None:
        """Wait for a background build in progress, if any (never starts one); the value, or ``None``."""
        state = self._state.peek()
        if state is None:
            return None
        if state.thread is not None:
            state.thread.join()
        return state.value

    def get(self, wait: bool) -> T | None:
        """The value: ``wait`` builds it now (or waits for the background build); otherwise a build starts in a
        background thread and this answers ``None`` until it is done."""
        state = self._state.get()
        if state.value is not None or state.failed is not None:
            return state.value
        with state.lock:
            if state.value is not None or state.failed is not None:  # built by a caller that held the lock
                return state.value
            if state.thread is None:
                if wait:
                    self._run(state)
                    return state.value
                state.thread = threading.Thread(target=self._run, args=(state,), name="gpuzarr-build", daemon=True)
                state.thread.start()
        if wait:
            state.thread.join()
        return state.value

    def when_due(self, items: int, *, eager: bool, after: int) -> T | None:
        """The value for a caller about to do ``items`` work items that the value would speed up.

        ``eager``: build it now and wait. Otherwise the background build starts once ``after``
        items in all have been asked for in this process (a script that does little never
        pays for the build), and the answer is ``None`` until it is done.
        """
        state = self._state.get()
        if state.value is not None or state.failed is not None or eager:
            return self.get(wait=eager)
        if state.thread is None:
            state.asked += items
            if state.asked < after:
                return None
        return self.get(wait=False)
