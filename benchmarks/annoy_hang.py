"""Why cvsearch no longer offers OpenCV's Annoy: its build does not return on
some sets of unit vectors.

The PCA-128 embeddings of Caltech-101 (fitted on learned.py's seen training
images, seed 0) of the first n images, in the order caltech101() lists them, are
given to ``cv2.ANNIndex`` (angular, seed 0, one tree); each build runs in a
child process that is killed after --timeout seconds. The raw 1,280-d
descriptors are built the same way for comparison.

    python benchmarks/annoy_hang.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from _common import describe_all, run_metadata
from learned import splits

from cvsearch.datasets import caltech101
from cvsearch.projection import PCAProjection

RESULTS = Path(__file__).parent / "results"


def _build(vectors: np.ndarray, done) -> None:
    import cv2

    annoy = cv2.ANNIndex_create(vectors.shape[1], cv2.ANNIndex_DIST_ANGULAR)
    annoy.setSeed(0)
    annoy.addItems(np.ascontiguousarray(vectors, np.float32))
    start = time.perf_counter()
    annoy.build(1)
    done.put(time.perf_counter() - start)


def build_seconds(vectors: np.ndarray, timeout: float) -> float | None:
    """Seconds the build took, or None if it had not returned after ``timeout``."""
    done = multiprocessing.Queue()
    child = multiprocessing.Process(target=_build, args=(vectors, done))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return done.get()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-learned"))
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 157, 159, 500])
    args = parser.parse_args(argv)
    meta = run_metadata("annoy_hang.py", argv)
    data = caltech101(args.data, download=False)
    labels = np.asarray(data.labels)
    descriptors = describe_all([str(p) for p in data.paths], args.work)
    (train, _), _ = splits(labels, 0, 20)
    embedded = PCAProjection(128).fit(descriptors[train]).transform(descriptors)
    rows = []
    for name, vectors in (("PCA-128", embedded), ("raw 1,280-d", descriptors)):
        for n in args.sizes:
            seconds = build_seconds(vectors[:n], args.timeout)
            rows.append({"vectors": name, "n": n, "seconds": seconds})
            print(rows[-1], flush=True)
    results = {**meta, "timeout_s": args.timeout, "rows": rows}
    (RESULTS / "annoy_hang.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# OpenCV's Annoy build on Caltech-101 embeddings", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
             "The first n images' vectors, one tree, angular distance, seed 0; "
             f"a build still running after {args.timeout:g} s is killed.", "",
             "| vectors | n | build |", "|---|---|---|"]
    lines += [f"| {r['vectors']} | {r['n']} | "
              + (f"{r['seconds'] * 1000:.1f} ms" if r["seconds"] is not None
                 else f"did not return in {args.timeout:g} s") + " |" for r in rows]
    (RESULTS / "annoy_hang.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
