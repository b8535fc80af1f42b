"""Instance retrieval on the first 56 UKBench images (14 objects x 4 views).

Every image queries all 56 (itself included, as in the standard protocol); the
vocabulary is trained on the same images. Reports the N-S score (mean number of the
4 views of the object in the top 4; 4.0 is perfect) without and with RANSAC
re-ranking, for each feature method.

    python benchmarks/ukbench.py --data ../shared/data/ukbench56
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from cvsearch import FeatureExtractor, Index
from cvsearch.evaluation import ns_score


def run(data: Path, method: str, n_words: int, rerank: int, seed: int,
        tf_power: float) -> dict:
    truth = json.loads((data / "groundtruth.json").read_text())["object_of_image"]
    names = sorted(truth)
    paths = [str(data / "images" / name) for name in names]
    labels = np.array([truth[name] for name in names])
    start = time.perf_counter()
    index = Index.build(paths, FeatureExtractor(method), n_words=n_words,
                        random_state=seed, tf_power=tf_power)
    build = time.perf_counter() - start
    result = {"method": method, "n_words": n_words, "build_s": round(build, 2)}
    for shortlist in (0, rerank):
        start = time.perf_counter()
        _, ids = index.query_batch(paths, k=4, rerank=shortlist)
        per_query = (time.perf_counter() - start) / len(paths)
        key = "rerank" if shortlist else "bow"
        result[f"ns_{key}"] = round(ns_score(labels[ids], labels), 4)
        result[f"ms_per_query_{key}"] = round(1000 * per_query, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ukbench56"))
    parser.add_argument("--methods", nargs="+", default=["sift", "rootsift", "orb"])
    parser.add_argument("--n-words", type=int, default=5000)
    parser.add_argument("--rerank", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tf-power", type=float, default=1.0,
                        help="Index tf_power (1: the counts as they are, as in the "
                             "committed results; benchmarks/instance.py measures "
                             "the library default)")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "ukbench.md")
    args = parser.parse_args()
    rows = [run(args.data, m, args.n_words, args.rerank, args.seed, args.tf_power)
            for m in args.methods]
    lines = [
        "# UKBench (first 56 images): N-S score",
        "",
        f"Command: `python benchmarks/ukbench.py --n-words {args.n_words} "
        f"--rerank {args.rerank} --seed {args.seed}`  ",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}; date: {date.today()}",
        "",
        "Times are wall-clock on a shared 2-core machine: compare them only within "
        "one run.",
        "",
        "| method | words | N-S (BoW) | N-S (re-ranked) | ms/query BoW | "
        "ms/query re-ranked | build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['n_words']} | {r['ns_bow']:.3f} | "
                     f"{r['ns_rerank']:.3f} | {r['ms_per_query_bow']} | "
                     f"{r['ms_per_query_rerank']} | {r['build_s']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
