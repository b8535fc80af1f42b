"""Does a decision keep its meaning as the index grows? The copies of
``copies.py`` among up to a million synthetic distractors.

The index holds the 150 originals of ``copies.py`` (seed 0) and N synthetic
images drawn as ``scale.py`` draws them (400 words from the word statistics of
real Caltech-101 images, keypoints spread over a 640 x 480 frame, with their
vocabulary); the queries are the 1,800 copies and the 546 negatives of
``copies.py``, with ``rerank=100``. The a-contrario count is over the images
verified (the short-list), which does not grow with N, so the false-positive
rate per query should stay put while N grows a hundredfold (a larger index
fills the short-list with more similar images), and the copies should still
be found.

    python benchmarks/copies_scale.py --data ../shared/data --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rate_text, rate_with_interval, run_metadata  # noqa: E402
from copies import choose_images, make_copies  # noqa: E402
from scale import add_synthetic, model  # noqa: E402

from cvsearch import Index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_size(args, n: int, base, frequency, originals, queries, truth) -> dict:
    folder = args.work / f"index-{n}"
    base.save(folder)
    index = Index.load(folder)
    started = time.perf_counter()
    index.add(originals, names=originals)
    index = add_synthetic(index, folder, np.random.default_rng(1), frequency, n,
                          args.words_per_image)
    build_s = time.perf_counter() - started
    ids_of = {name: i for i, name in zip(index.ids, index.names.values())}
    copies, negatives, times = [], [], []
    for query, original in zip(queries, truth):
        started = time.perf_counter()
        _, ids, evidence = index.query(query, k=10, rerank=args.rerank,
                                       return_evidence=True)
        times.append(time.perf_counter() - started)
        if original is None:
            negatives.append((bool(evidence.copy.any()), bool(evidence.same_object.any())))
        else:
            at = np.flatnonzero(ids == ids_of[original])
            copies.append(bool(len(at) and evidence.copy[at[0]]))
    return {"images": len(index), "build_s": round(build_s),
            "copies_detected": round(float(np.mean(copies)), 3),
            **{f"{kind}_false_positive_{field}": value
               for kind, column in (("copy", 0), ("object", 1))
               for field, value in rate_with_interval(
                   [called[column] for called in negatives]).items()},
            "negatives": len(negatives), "copies": len(copies),
            "median_query_ms": round(1000 * float(np.median(times)), 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-copies-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rerank", type=int, default=100)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--words-per-image", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)
    meta = run_metadata("copies_scale.py", argv)
    selection = argparse.Namespace(seed=0, originals=150, negatives=300,
                                   distractors=0)
    originals, _, negatives = choose_images(args.data, selection)
    copies = make_copies(originals, args.work.parent / "cvsearch-copies", 0)
    queries = [c[0] for c in copies] + negatives
    truth = [originals[c[1]] for c in copies] + [None] * len(negatives)
    base, frequency, _ = model(args, args.work / "model" / "index")
    rows = []
    for n in sorted(args.sizes):
        row = run_size(args, n, base, frequency, originals, queries, truth)
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = {**meta, "rows": rows,
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "copies_scale.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Decisions as the index grows", "",
             f"`{results['command']}` on {results['date']} ({results['machine']}).", "",
             "The 150 originals of `copies.py` among N synthetic distractors (drawn as "
             "`scale.py` draws them, SIFT with 400 keypoints and a 20,000-word "
             "vocabulary of Caltech-101); queries: its 1,800 copies and 546 "
             f"negatives, `rerank={args.rerank}`.", "",
             "| images | copies decided copies | negatives called copies | negatives "
             "given an object | median query ms | build s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rates = " | ".join(rate_text(r[f"{kind}_false_positive_rate"],
                                     r[f"{kind}_false_positive_ci95"])
                           for kind in ("copy", "object"))
        lines.append(f"| {r['images']:,} | {r['copies_detected']:.3f} | {rates} | "
                     f"{r['median_query_ms']} | {r['build_s']} |")
    lines += ["", "In brackets, each rate's exact 95% interval (Clopper-Pearson) over "
              "the negatives: an upper end under a target shows the rate is under "
              "it."]
    (RESULTS / "copies_scale.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "copies_scale.md").read_text())


if __name__ == "__main__":
    main()
