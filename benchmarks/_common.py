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

#: The libraries whose versions change what a run measures (OpenCV's SIFT,
#: scikit-learn's k-means build the words), named in every run's machine.
LIBRARIES = {"opencv-contrib-python": "OpenCV", "scikit-learn": "scikit-learn",
             "numpy": "NumPy"}


def run_metadata(script: str, argv=None) -> dict:
    """The command, date, machine (with the versions of ``LIBRARIES``), code
    (the git commit, "+changes" when the checkout has uncommitted ones) and
    processor of a benchmark run.

    Parameters
    ----------
    script : str
        The script's file name, e.g. ``"scale.py"``.
    argv : list of str or None
        Its arguments (None: this process's).
    """
    from importlib import metadata

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    arguments = argv if argv is not None else sys.argv[1:]
    versions = []
    for distribution, name in LIBRARIES.items():
        try:
            versions.append(f"{name} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            pass
    return {"command": " ".join(["python", f"benchmarks/{script}", *arguments]),
            "date": date.today().isoformat(),
            "machine": ", ".join([f"{platform.machine()}, {os.cpu_count()} cores, "
                                  f"{memory:.0f} GiB, Python {platform.python_version()}",
                                  *versions]),
            "code": commit_of(), "cpu": _cpu()}


def _cpu() -> str:
    """The processor's model, and the instruction sets OpenCV runs with (its
    SIFT and warps take other paths on other ones)."""
    import cv2

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; OpenCV: {cv2.getCPUFeaturesLine()}"


def commit_of(root: Path | None = None) -> str | None:
    """The commit of the checkout at ``root`` (None: this repository), with
    "+changes" if its code differs from it; None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent if root is None else root
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                  "--", "cvsearch", "benchmarks/*.py"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def write_results(folder: Path, name: str, results: dict, markdown: str):
    """Write ``name``.json (``results``, for machines) and ``name``.md
    (``markdown``, for people) into ``folder``, and print the markdown."""
    import json

    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)


def rate_with_interval(passed) -> dict:
    """The share of trials that passed, and its exact 95% interval.

    A rate measured on a few hundred negatives is uncertain, and the interval
    says how much: with 546 negatives, none passing still allows a rate up to
    0.68%. Clopper-Pearson's interval (scipy's ``binomtest``): it never covers
    less than its level, so an upper bound under a target is evidence.

    Parameters
    ----------
    passed : sequence of bool
        One per trial (a negative called a copy, say).

    Returns
    -------
    dict
        ``rate`` (float, rounded to 4 places) and ``ci95`` ([low, high],
        rounded outwards to 4 places: a bound rounded towards the rate would
        claim more than was measured).
    """
    from scipy.stats import binomtest

    passed = np.asarray(passed, bool).ravel()
    if not len(passed):
        raise ValueError("no trials: a rate needs at least one")
    interval = binomtest(int(passed.sum()), len(passed)).proportion_ci(0.95, "exact")
    return {"rate": round(float(passed.mean()), 4),
            "ci95": [float(np.floor(interval.low * 1e4) / 1e4),
                     float(np.ceil(interval.high * 1e4) / 1e4)]}


def rate_text(rate: float, ci95) -> str:
    """A rate and its interval (:func:`rate_with_interval`) as a table's text:
    "0.0073 (0.0019-0.0187)"."""
    low, high = ci95
    return f"{rate:.4f} ({low:.4f}-{high:.4f})"


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


def add_vocabulary_sample_arguments(parser):
    """``--data``, ``--images``, ``--queries``, ``--n-words``, ``--seed``: what
    :func:`vocabulary_sample` reads."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)


def vocabulary_sample(args, method: str = "sift"):
    """A vocabulary learnt on ``args.images`` Caltech-101 images (a fixed random
    sample) and the descriptors of ``args.queries`` other images, one array per
    image, none empty: what word assignment benchmarks assign.

    Returns
    -------
    vocabulary : cvsearch.Vocabulary
    images : list of ndarray of shape (n_i, 128), float32
    """
    from cvsearch import FeatureExtractor, Index
    from cvsearch.datasets import image_folder

    paths = [str(p) for p in image_folder(
        args.data / "caltech101" / "101_ObjectCategories").paths]
    chosen = np.random.default_rng(args.seed).permutation(len(paths))
    train = [paths[i] for i in chosen[:args.images]]
    held_out = [paths[i] for i in chosen[args.images:args.images + args.queries]]
    index = Index.build(train, FeatureExtractor(method), n_words=args.n_words,
                        random_state=args.seed, n_jobs=-1)
    images = [index.extractor.extract(p).descriptors for p in held_out]
    return index.vocabulary, [d for d in images if len(d)]
