"""Loops compiled by numba where the 'fast' extra is installed.

Each loop compiled here has a numpy path that gives the same results (see where
it is used); numba only makes it faster, and releases the GIL so threads run it
on several cores. Without numba, callers get None and take the numpy path (each
caller's module has its own ``USE_COMPILED`` switch, which tests turn off to
compare the two paths).
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_COMPILED = {}  # (python loop, options) -> its numba version, or None


def compiled(loop, fastmath=False):
    """``loop`` compiled by numba (``pip install 'cvsearch[fast]'``), or None.

    Parameters
    ----------
    loop : function
        Plain Python over numpy arrays, in numba's subset.
    fastmath : bool or set of str
        numba's ``fastmath``: a set such as ``{"reassoc", "contract"}`` lets
        a sum of products be vectorised (in another order than numpy's).
    """
    key = (loop, repr(fastmath))
    if key not in _COMPILED:
        with _LOCK:
            if key not in _COMPILED:
                try:
                    import numba
                except ImportError:
                    _COMPILED[key] = None
                else:
                    _COMPILED[key] = numba.njit(nogil=True, cache=True,
                                                fastmath=fastmath)(loop)
    return _COMPILED[key]
