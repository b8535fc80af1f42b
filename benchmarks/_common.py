"""What every benchmark's results say about how they were made."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np


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


def write_results(folder: Path, name: str, results: dict, markdown: str):
    """Write ``name``.json (``results``, for machines) and ``name``.md
    (``markdown``, for people) into ``folder``, and print the markdown."""
    import json

    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)


def timed(function, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def describe_all(paths, work: Path, flip_average: bool = False) -> np.ndarray:
    """CNN descriptors of every path (``CNNDescriptor(flip_average=...)``),
    (n, 1280) float32, cached in ``work`` (by the list of paths)."""
    from cvsearch.cnn import CNNDescriptor

    digest = hashlib.sha256("\n".join(os.path.abspath(p) for p in paths).encode()
                            ).hexdigest()[:12]
    cache = work / f"cnn-{len(paths)}-{digest}{'-flip' if flip_average else ''}.npy"
    if cache.exists():
        return np.load(cache)
    vectors, seconds = timed(CNNDescriptor(flip_average=flip_average).describe_many,
                             paths)
    print(f"described {len(paths)} images in {seconds:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors
