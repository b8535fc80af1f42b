"""What every benchmark's results say about how they were made."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import date
from pathlib import Path


def run_metadata(script: str, argv=None) -> dict:
    """The command, date and machine of a benchmark run.

    Parameters
    ----------
    script : str
        The script's file name, e.g. ``"scale.py"``.
    argv : list of str or None
        Its arguments (None: this process's).
    """
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    arguments = argv if argv is not None else sys.argv[1:]
    return {"command": " ".join(["python", f"benchmarks/{script}", *arguments]),
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{memory:.0f} GiB, Python {platform.python_version()}"}


def timed(function, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
