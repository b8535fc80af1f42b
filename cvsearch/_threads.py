"""One small thread pool shared by the stages that work in parallel inside a call
(scoring segments, verifying a short-list): their inner loops (numpy, numba's
``nogil`` loops, OpenCV) release the GIL. Tasks submitted here never wait on
other tasks of the pool, so callers from many threads cannot deadlock it."""

from __future__ import annotations

import os
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
    if len(items) > 1 and THREADS > 1:
        return list(pool().map(function, items))
    return [function(item) for item in items]
