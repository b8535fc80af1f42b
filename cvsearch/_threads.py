"""One small thread pool shared by the stages that work in parallel inside a call
(scoring segments, verifying a short-list): their inner loops (numpy, numba's
``nogil`` loops, OpenCV) release the GIL. Tasks submitted here never wait on
other tasks of the pool, so callers from many threads cannot deadlock it."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

#: Threads of the pool.
THREADS = min(4, os.cpu_count() or 1)
_POOL = None
_LOCK = threading.Lock()


def pool():
    """The shared ``ThreadPoolExecutor``, created on first use."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="cvsearch")
        return _POOL


def map_in_pool(function, items: list) -> list:
    """``[function(item) for item in items]``, in the pool when it has more than one
    thread and there is more than one item."""
    if len(items) > 1 and THREADS > 1:  # THREADS: the budget's, at this call
        return list(pool().map(function, items))
    return [function(item) for item in items]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cores_of(n_jobs: int) -> int:
    """The cores ``n_jobs`` gives: -1 is every usable core."""
    return usable_cores() if n_jobs == -1 else max(1, int(n_jobs))


_BUDGET_LOCK = threading.Lock()
_ACTIVE: list[int] = []  # the cores of every budget open now, in any thread
_SAVED: dict = {}  # what the first open budget found, restored by the last


_CONTROLLER: list = []  # [modules loaded when it was made, threadpoolctl's controller]


def _controller():
    """threadpoolctl's controller of the BLAS and OpenMP pools this process has
    loaded. Finding them reads every loaded library, a good part of what a
    one-image add spends above its features, so they are found once, and again
    only when modules were imported since (an import is what loads another
    pool). Call with ``_BUDGET_LOCK`` held."""
    from threadpoolctl import ThreadpoolController

    if not _CONTROLLER or _CONTROLLER[0] != len(sys.modules):
        _CONTROLLER[:] = [len(sys.modules), ThreadpoolController()]
    return _CONTROLLER[1]


def _apply(cores: int) -> None:
    import cv2

    global THREADS
    _controller().limit(limits=cores)
    cv2.setNumThreads(cores)
    THREADS = min(_SAVED["threads"], cores)  # the pool of map_in_pool too


@contextlib.contextmanager
def budget(n_jobs: int):
    """Within the block, the thread pools of this process (BLAS and OpenMP, as
    scikit-learn's k-means uses them, through threadpoolctl; OpenCV's; the one
    cvsearch verifies short-lists in) use at most the cores ``n_jobs`` gives
    (-1: all). The limits are the process's: threads running meanwhile keep to
    them too. Budgets opened at once (nested, or in several threads) hold the
    smallest of them; when the last closes, the pools are as they were before
    the first opened, whatever the order they close in.

    Public as ``cvsearch.thread_budget``::

        with cvsearch.thread_budget(1):  # one core, whatever the machine has
            index.query("photo.jpg", rerank=100)

    Without it, each library starts one thread per core of the machine on its
    own: on a busy machine the spinning OpenMP threads of one k-means made a
    build several times slower, and inside worker processes they multiply.
    """
    import cv2

    global THREADS
    cores = cores_of(n_jobs)
    with _BUDGET_LOCK:
        if not _ACTIVE:
            _SAVED.update(cv2=cv2.getNumThreads(), threads=THREADS,
                          limiter=_controller().limit(limits=None))
        _ACTIVE.append(cores)
        _apply(min(_ACTIVE))
    try:
        yield cores
    finally:
        with _BUDGET_LOCK:
            _ACTIVE.remove(cores)
            if _ACTIVE:
                _apply(min(_ACTIVE))
            else:
                _SAVED["limiter"].restore_original_limits()
                cv2.setNumThreads(_SAVED["cv2"])
                THREADS = _SAVED["threads"]
                _SAVED.clear()


def one_thread_per_worker() -> None:
    """In a worker process: the workers fill the cores, so each keeps to one
    thread (OpenCV's pool, BLAS and OpenMP), for the life of the process."""
    import cv2
    from threadpoolctl import threadpool_limits

    global THREADS
    THREADS = 1  # map_in_pool runs in the calling thread
    cv2.setNumThreads(1)
    threadpool_limits(limits=1)
