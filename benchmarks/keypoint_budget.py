"""The keypoint budget shared among grid cells (``FeatureExtractor(budget_grid=4)``)
against OpenCV's strongest anywhere (``budget_grid=1``, the default), in one run.

Where text or a busy texture covers part of a picture (a screenshot's page), the
strongest keypoints are all there and the rest of the picture keeps few. Shared
among 4 x 4 cells, each cell keeps its strongest up to a sixteenth of
``max_keypoints`` and what cells leave goes to the strongest left. Measured with
everything else at the library's defaults:

- copies (``copies.py``'s originals, attacks and negatives, with fewer
  distractors): each attack's copies decided copies of their original, and the
  negatives called copies (``mirror=True``, re-rank 100);
- instance search (``instance.py``'s SMVS phone photos, 2,000 Caltech-101
  distractors, RootSIFT, 20,000 words, re-rank 100): the right cover first;
- UKBench-56 (5,000 words): the N-S score with re-rank 20.

Usage::

    python benchmarks/keypoint_budget.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copies as copies_bench  # noqa: E402
import instance as instance_bench  # noqa: E402
from _attacks import ATTACKS  # noqa: E402
from _common import run_metadata, write_results  # noqa: E402

from cvsearch import FeatureExtractor, Index  # noqa: E402
from cvsearch.evaluation import ns_score  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GRIDS = (1, 4)


def copies_part(args, grid: int) -> dict:
    originals, distractors, negatives = copies_bench.choose_images(args.data, args)
    copies = copies_bench.make_copies(originals, args.work, args.seed)
    index_paths = originals + distractors
    start = time.perf_counter()
    index = Index.build(index_paths, FeatureExtractor("sift", budget_grid=grid),
                        n_words=args.n_words, random_state=args.seed, n_jobs=args.jobs)
    build_s = time.perf_counter() - start
    ids_of = {name: i for i, name in zip(index.ids, index.names.values())}
    queries = [c[0] for c in copies] + negatives
    original_ids = [ids_of[originals[c[1]]] for c in copies] + [-1] * len(negatives)
    rows = copies_bench.run_cvsearch(index, queries, original_ids, args, mirror=True)
    n = len(copies)
    return {"indexed": len(index), "build_s": round(build_s),
            "per_attack": copies_bench.summarise(
                copies, [r["kind"] == "copy" for r in rows[:n]],
                [r["first"] for r in rows[:n]]),
            "false_positive_rate": round(float(np.mean(
                [r["any_copy"] for r in rows[n:]])), 4),
            "negatives": len(negatives),
            "median_query_ms": round(1000 * float(np.median(
                [r["seconds"] for r in rows])), 1)}


def instance_part(args, grid: int) -> dict:
    references, queries, truth = instance_bench.smvs(args.data)
    others = instance_bench.distractors(args.data, args.instance_distractors, args.seed)
    extractor = FeatureExtractor("rootsift", budget_grid=grid)
    index, build_s = instance_bench.build(args, references, others, extractor)
    words, extract_ms, _ = instance_bench.query_words(index, queries)
    result = instance_bench.evaluate(index, words, truth, {"rerank": 100})
    return {"images": len(index), "top1": result["top1"], "top10": result["top10"],
            "bow_top10": result["bow_top10"],
            "top1_per_phone": result["top1_per_phone"],
            "ms_extract": round(extract_ms, 1), "build_s": round(build_s)}


def ukbench_part(args, grid: int) -> dict:
    folder = args.data / "ukbench56"
    truth = json.loads((folder / "groundtruth.json").read_text())["object_of_image"]
    names = sorted(truth)
    paths = [str(folder / "images" / name) for name in names]
    labels = np.array([truth[name] for name in names])
    index = Index.build(paths, FeatureExtractor("rootsift", budget_grid=grid),
                        n_words=5000, random_state=args.seed)
    _, ids = index.query_batch(paths, k=4, rerank=20)
    return {"ns_rerank_20": round(ns_score(labels[ids], labels), 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    copies_bench.image_arguments(parser, distractors=1000)
    parser.add_argument("--instance-distractors", type=int, default=2000)
    args = parser.parse_args(argv)
    meta = run_metadata("keypoint_budget.py", argv)
    rows = []
    for grid in GRIDS:
        row = {"budget_grid": grid, "copies": copies_part(args, grid),
               "instance": instance_part(args, grid), "ukbench": ukbench_part(args, grid)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    results = {**meta, "rows": rows, "attacks": list(ATTACKS),
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "keypoint_budget", results, report(results))


def report(r: dict) -> str:
    rows, a = r["rows"], r["args"]
    labels = [f"budget_grid={row['budget_grid']}" for row in rows]
    first = rows[0]["copies"]
    lines = [
        "# Keypoint budget: the strongest anywhere, or shared among grid cells", "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        "`FeatureExtractor(budget_grid=1)` keeps OpenCV's strongest "
        "`max_keypoints` (1,500) anywhere; `budget_grid=4` (the default since "
        "2026-12-03) shares them among 4 x 4 cells "
        "(`cvsearch.features.spread_budget`). Everything else at the library's "
        "defaults.", "",
        f"## Copies ({first['indexed']:,} indexed images: copies.py's "
        f"{a['originals']} originals and {a['distractors']:,} of its distractors; "
        f"{first['negatives']} negatives; SIFT, {a['n_words']:,} words; "
        f"`mirror=True`, re-rank {a['rerank']})", "",
        "Decided copies of their original (the original first, in brackets):", "",
        "| attack | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(rows)]
    for attack in [*r["attacks"], "all"]:
        cells = [f"{row['copies']['per_attack'][attack]['detected']:.3f} "
                 f"({row['copies']['per_attack'][attack]['first']:.3f})" for row in rows]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    lines.append("| **negatives called copies** | " + " | ".join(
        f"{row['copies']['false_positive_rate']:.4f}" for row in rows) + " |")
    lines.append("| median query ms | " + " | ".join(
        str(row["copies"]["median_query_ms"]) for row in rows) + " |")
    inst = rows[0]["instance"]
    lines += ["", f"## Instance search (SMVS: 50 covers, {inst['images'] - 50:,} "
              "Caltech-101 distractors, 200 phone photos; RootSIFT, "
              f"{a['n_words']:,} words, re-rank 100) and UKBench-56", "",
              "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(rows)]
    for name, value in (
            ("top-1", lambda row: f"{row['instance']['top1']:.3f}"),
            ("top-1 Canon / Droid / E63 / Palm", lambda row: " / ".join(
                f"{v:.2f}" for v in row["instance"]["top1_per_phone"].values())),
            ("top-10", lambda row: f"{row['instance']['top10']:.3f}"),
            ("bag-of-words top-10", lambda row: f"{row['instance']['bow_top10']:.3f}"),
            ("ms to extract a photo", lambda row: str(row["instance"]["ms_extract"])),
            ("UKBench-56 N-S, re-rank 20",
             lambda row: str(row["ukbench"]["ns_rerank_20"]))):
        lines.append(f"| {name} | " + " | ".join(value(row) for row in rows) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
