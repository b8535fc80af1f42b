"""What ``FeatureExtractor(min_keypoints=100)`` (the default) costs and touches,
in one run: the share of images detected again at lower contrast thresholds,
and the extraction time against ``min_keypoints=0``, interleaved image by image
on one thread (Caltech-101 photos, a fixed sample); and which SMVS images (the
covers and phone photos of ``instance.py``) are detected again.

Usage::

    python benchmarks/min_keypoints.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata, write_results  # noqa: E402

from cvsearch import FeatureExtractor, thread_budget  # noqa: E402
from cvsearch.datasets import caltech101  # noqa: E402
from cvsearch.io import read_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    meta = run_metadata("min_keypoints.py", argv)
    caltech = caltech101(args.data, download=False)
    rng = np.random.default_rng(args.seed)
    paths = [caltech.paths[i] for i in rng.choice(len(caltech.paths), args.images,
                                                  replace=False)]
    grays = [read_image(p) for p in paths]
    default, once = FeatureExtractor(), FeatureExtractor(min_keypoints=0)
    seconds = {"default": 0.0, "once": 0.0}
    again = 0
    with thread_budget(1):
        for gray in grays:
            for name, extractor in (("default", default), ("once", once)):
                start = time.perf_counter()
                found = extractor.extract(gray)
                seconds[name] += time.perf_counter() - start
                if name == "once":
                    again += len(found.keypoints) < default.min_keypoints
    smvs = sorted((args.data / "smvs_dvd_covers_half").rglob("*.jpg"))
    rootsift = FeatureExtractor("rootsift", min_keypoints=0)
    few = [(str(p.relative_to(args.data)), len(rootsift.extract(p).keypoints))
           for p in smvs]
    few = [(name, n) for name, n in few if n < default.min_keypoints]
    results = {**meta, "caltech_images": len(grays),
               "caltech_detected_again": again,
               "extraction_ratio": round(seconds["default"] / seconds["once"], 3),
               "smvs_images": len(smvs), "smvs_detected_again": few,
               "args": vars(args) | {"data": str(args.data)}}
    lines = ["# min_keypoints: what it costs and touches", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
             f"- Caltech-101, {len(grays)} photos (seed {args.seed}): {again} "
             f"({again / len(grays):.1%}) give fewer than {default.min_keypoints} "
             "keypoints at OpenCV's contrast threshold and are detected again;",
             f"- extraction with `min_keypoints=100` / `0`, one thread, interleaved: "
             f"{results['extraction_ratio']:.3f}x;",
             f"- SMVS (RootSIFT), {len(smvs)} images: {len(few)} detected again "
             f"({', '.join(f'{n} with {k}' for n, k in few) or 'none'})."]
    write_results(RESULTS, "min_keypoints", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
