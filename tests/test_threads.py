"""The one fork-safe pool helper: a child of a fork gets fresh, working pools; sizes follow the settings."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import pytest

import gpuzarr
from gpuzarr.threads import ForkLocal, ThreadPool, cpu_pool

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _pool_report(pool: ThreadPool) -> tuple[int, list[int], list[str]]:
    """(pid, squares computed on the pool, names of the threads that ran them)."""
    results = list(pool.map(lambda x: (x * x, threading.current_thread().name), range(8)))
    return os.getpid(), [r[0] for r in results], sorted({r[1] for r in results})


_POOL = ThreadPool("gpuzarr-test", 3)  # module level: a forked worker inherits it as the parent left it


def _child_uses_pools() -> tuple[tuple[int, list[int], list[str]], tuple[int, list[int], list[str]]]:
    return _pool_report(_POOL), _pool_report(cpu_pool())


def test_pool_used_before_fork_works_in_the_child() -> None:
    parent_pid, squares, _ = _pool_report(_POOL)
    parent_executor = _POOL.executor()
    _pool_report(cpu_pool())
    with mp.get_context("fork").Pool(1) as workers:  # the worker process is forked now, pools in use
        # a pool inherited over fork that did not start afresh would hang here (TimeoutError fails the test)
        (child_pid, child_squares, names), (_, cpu_squares, _) = workers.apply_async(_child_uses_pools).get(60)
    assert child_pid != parent_pid
    assert child_squares == squares == [x * x for x in range(8)]
    assert cpu_squares == squares
    assert all(name.startswith("gpuzarr-test") for name in names)
    assert _POOL.executor() is parent_executor  # the parent's pool is untouched


def test_os_fork_with_a_held_lock_does_not_deadlock_the_child() -> None:
    local: ForkLocal[list[int]] = ForkLocal(lambda: [os.getpid()])
    assert local.get() == [os.getpid()]
    local._lock.acquire()  # as if another thread were inside get() at the fork
    try:
        pid = os.fork()
        if pid == 0:  # child: a fresh lock and a fresh value
            ok = local.peek() is None and local.get() == [os.getpid()]
            ok = ok and list(ThreadPool("gpuzarr-child", 2).map(abs, [-1, -2])) == [1, 2]
            os._exit(0 if ok else 1)
    finally:
        local._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert local.get() == [os.getpid()]


def test_cpu_pool_follows_the_threads_setting() -> None:
    with gpuzarr.config.set({"threads": 3}):
        assert cpu_pool().size == 3
        assert cpu_pool().executor()._max_workers == 3
        assert sorted(cpu_pool().map(abs, [-3, 1, -2])) == [1, 2, 3]
    with gpuzarr.config.set({"threads": 2}):
        assert cpu_pool().executor()._max_workers == 2


def test_shutdown_then_use_starts_again_and_close_runs_once() -> None:
    closed: list[int] = []
    local: ForkLocal[object] = ForkLocal(object, close=lambda v: closed.append(id(v)))
    first = local.get()
    assert local.get() is first
    local.reset()
    assert closed == [id(first)]
    assert local.get() is not first
    pool = ThreadPool("gpuzarr-test", 1)
    assert list(pool.map(abs, [-1])) == [1]
    pool.shutdown()
    assert list(pool.map(abs, [-2])) == [2]
