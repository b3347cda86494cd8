"""The fork-safe helpers: a child of a fork gets fresh, working pools; sizes follow the settings; slow builds run once."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import warnings

import pytest

import gpuzarr
from gpuzarr.threads import BackgroundBuild, ForkLocal, ThreadPool, cpu_pool

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


class _Counted:
    """A build that counts its calls (and the threads they ran on), slowly, or failing with ``exc``."""

    def __init__(self, exc: BaseException | None = None, seconds: float = 0.0) -> None:
        self.calls: list[str] = []
        self.exc, self.seconds = exc, seconds

    def __call__(self) -> str:
        self.calls.append(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.exc is not None:
            raise self.exc
        return "built"


def test_background_build_runs_once_however_many_callers_wait() -> None:
    build = _Counted(seconds=0.2)
    lazy: BackgroundBuild[str] = BackgroundBuild(build, what="a test value", instead="going without")
    assert lazy.built() is None and lazy.join() is None  # nothing started, nothing made
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(lazy.get(wait=True))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["built"] * 4 and len(build.calls) == 1
    assert lazy.built() == "built" and lazy.get(wait=False) == "built"


def test_background_build_waits_for_enough_work_then_builds_in_a_thread() -> None:
    build = _Counted(seconds=0.1)
    lazy: BackgroundBuild[str] = BackgroundBuild(build, what="a test value", instead="going without")
    assert lazy.when_due(30, eager=False, after=100) is None
    assert lazy.when_due(69, eager=False, after=100) is None
    assert build.calls == []  # 99 items asked for: not yet
    assert lazy.when_due(1, eager=False, after=100) is None  # the 100th starts it, in the background
    assert lazy.join() == "built"
    assert build.calls == ["gpuzarr-build"]
    assert lazy.when_due(1, eager=False, after=100) == "built"


def test_background_build_eager_builds_on_the_callers_thread() -> None:
    build = _Counted()
    lazy: BackgroundBuild[str] = BackgroundBuild(build, what="a test value", instead="going without")
    assert lazy.when_due(1, eager=True, after=10**9) == "built"
    assert build.calls == [threading.current_thread().name]


def test_background_build_failures_leave_the_other_path() -> None:
    """A missing optional extra (ImportError) is silent; any other failure is said once, naming what and instead."""
    missing = BackgroundBuild(_Counted(ImportError("no numba")), what="a test value", instead="going without")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert missing.get(wait=True) is None
        assert missing.get(wait=True) is None
    broken_build = _Counted(ValueError("bad IR"))
    broken = BackgroundBuild(broken_build, what="the test value", instead="going without it")
    with pytest.warns(RuntimeWarning, match=r"the test value could not be built \(ValueError: bad IR\); going without"):
        assert broken.get(wait=True) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert broken.get(wait=True) is None and broken.when_due(10, eager=False, after=1) is None
    assert len(broken_build.calls) == 1  # never tried again in this process


_FORKED_BUILD = _Counted()
_FORKED = BackgroundBuild(_FORKED_BUILD, what="a test value", instead="going without")


def _child_sees() -> tuple[str | None, str | None, int]:
    return _FORKED.built(), _FORKED.get(wait=True), len(_FORKED_BUILD.calls)


def test_background_build_in_a_forked_child_is_its_own() -> None:
    assert _FORKED.get(wait=True) == "built" and len(_FORKED_BUILD.calls) == 1
    with mp.get_context("fork").Pool(1) as workers:
        before, after, calls = workers.apply_async(_child_sees).get(60)
    assert (before, after, calls) == (None, "built", 2)  # the child built its own (the parent's one call, then its)
