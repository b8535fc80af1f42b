"""Speed and size of each stage on 2,000 Caltech-101 images with 20,000 words.

Builds an index of a fixed random sample of Caltech-101 images (BACKGROUND_Google
left out), then times each stage on held-out query images that are not in it:

* feature extraction, ms per image;
* word assignment, ms per image, approximate (the library's default) and exact,
  and how often the two agree;
* query scoring (tf-idf of the query, sparse cosine against the index, top-k), ms;
* verification of a 50-image short-list, ms, with keypoint shapes (the
  default) and with RANSAC (full counts: no early stop at min_inliers);
* index size on disk per image, and the build time (extraction, vocabulary,
  indexing).

    python benchmarks/speed.py --data ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from _common import folder_bytes, timed

from cvsearch import FeatureExtractor, ImageWords, Index
from cvsearch.datasets import image_folder


def run(args) -> dict:
    collection = image_folder(Path(args.data) / "101_ObjectCategories",
                              exclude=["BACKGROUND_Google"])
    order = np.random.default_rng(args.seed).permutation(len(collection.paths))
    database = [collection.paths[i] for i in order[:args.images]]
    queries = [collection.paths[i]
               for i in order[args.images:args.images + args.queries]]

    extractor = FeatureExtractor(args.method)
    index, build_s = timed(Index.build, database, extractor, args.n_words,
                           random_state=args.seed, n_probe=args.n_probe)
    n_descriptors = index.n_keypoints

    # Stage timings on held-out queries, one query at a time as a user would.
    # One query first, untimed: the first computes the idf and norms of the
    # index (and compiles the scoring loop with the 'fast' extra).
    index.query(queries[0])
    extract_s, assign_s, exact_s, score_s, rerank_s, ransac_s = [], [], [], [], [], []
    two_s = []
    agree = total = 0
    for path in queries:
        features, seconds = timed(extractor.extract, path)
        extract_s.append(seconds)
        words, seconds = timed(index.vocabulary.predict, features.descriptors)
        assign_s.append(seconds)
        _, seconds = timed(index.vocabulary.predict_two, features.descriptors)
        two_s.append(seconds)
        exact, seconds = timed(index.vocabulary.predict_exact, features.descriptors)
        exact_s.append(seconds)
        agree += int((words == exact).sum())
        total += len(words)

        # scoring and top-k alone: the query's words given
        given = ImageWords(words, features.keypoints, features.image_shape,
                           index.vocabulary.fingerprint, extractor.feature_params())
        (_, ids), seconds = timed(index.query, given, k=args.shortlist)
        score_s.append(seconds)

        _, seconds = timed(index.inliers, given, ids)
        rerank_s.append(seconds)
        _, seconds = timed(index.inliers, given, ids, verification="ransac")
        ransac_s.append(seconds)

    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        disk = folder_bytes(Path(tmp))
    ms = lambda values: 1000 * float(np.mean(values))  # noqa: E731
    return {
        "images": len(index), "queries": len(queries), "n_words": index.n_words,
        "method": args.method, "n_probe": args.n_probe,
        "descriptors_per_image": n_descriptors / len(index),
        "extract_ms": ms(extract_s),
        "assign_ms": ms(assign_s), "assign_exact_ms": ms(exact_s),
        "assign_two_ms": ms(two_s),
        "agreement": agree / max(1, total),
        "score_ms": ms(score_s), "score_ms_p95": 1000 * float(np.percentile(score_s, 95)),
        "rerank_ms": ms(rerank_s),
        "rerank_ms_p95": 1000 * float(np.percentile(rerank_s, 95)),
        "ransac_ms": ms(ransac_s),
        "ransac_ms_p95": 1000 * float(np.percentile(ransac_s, 95)),
        "bytes_per_image": disk / len(index), "disk_mb": disk / 2**20,
        "build_s": build_s,
    }


def report(r: dict, args) -> str:
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    return "\n".join([
        "# Speed and size of each stage",
        "",
        f"Command: `python benchmarks/speed.py --images {args.images} --queries "
        f"{args.queries} --n-words {args.n_words} --method {args.method} "
        f"--n-probe {args.n_probe} --seed {args.seed}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, shared with other work; date: {date.today()}",
        "",
        f"Index: {r['images']} Caltech-101 images (fixed random sample, seed "
        f"{args.seed}), {r['n_words']} words, {r['method']}, "
        f"{r['descriptors_per_image']:.0f} descriptors per image. Stage times are "
        f"means over {r['queries']} held-out query images, one at a time.",
        "",
        "| stage | measured | target | met |",
        "|---|---|---|---|",
        f"| feature extraction | {r['extract_ms']:.1f} ms/image | | |",
        f"| word assignment, approximate (n_probe={r['n_probe']}) | "
        f"{r['assign_ms']:.1f} ms/image | < extraction | "
        f"{ok(r['assign_ms'] < r['extract_ms'])} |",
        f"| word assignment with the second word (multiple assignment, queries) | "
        f"{r['assign_two_ms']:.1f} ms/image | | |",
        f"| word assignment, exact (for comparison) | {r['assign_exact_ms']:.1f} "
        "ms/image | | |",
        f"| agreement of approximate with exact nearest centre | "
        f"{100 * r['agreement']:.1f}% of descriptors | >= 90% | "
        f"{ok(r['agreement'] >= 0.9)} |",
        f"| query scoring (tf-idf, sparse cosine, top-{args.shortlist}) | "
        f"{r['score_ms']:.2f} ms (p95 {r['score_ms_p95']:.2f}) | < 2 ms | "
        f"{ok(r['score_ms'] < 2)} |",
        f"| verification of {args.shortlist} candidates, keypoint shapes (default) | "
        f"{r['rerank_ms']:.1f} ms (p95 {r['rerank_ms_p95']:.1f}) | < 100 ms | "
        f"{ok(r['rerank_ms'] < 100)} |",
        f"| verification of {args.shortlist} candidates, RANSAC | "
        f"{r['ransac_ms']:.1f} ms (p95 {r['ransac_ms_p95']:.1f}) | < 100 ms | "
        f"{ok(r['ransac_ms'] < 100)} |",
        f"| index on disk | {r['bytes_per_image'] / 1024:.1f} KiB/image "
        f"({r['disk_mb']:.1f} MiB in all, vocabulary included) | | |",
        f"| build (extract, train, index) | {r['build_s']:.0f} s | | |",
        "",
        "Times are wall-clock on a shared machine: compare numbers within one run.",
        "",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech101"),
                        help="folder holding 101_ObjectCategories (default: %(default)s)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--method", default="sift")
    parser.add_argument("--n-probe", type=int, default=8)
    parser.add_argument("--shortlist", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "speed.md")
    args = parser.parse_args()
    text = report(run(args), args)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
