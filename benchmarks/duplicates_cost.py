"""Where the cost per image of ``Index.duplicates()`` goes as the collection grows.

``duplicates.py`` times whole runs: its cost per image grows from 1,000 to
10,000 images. This script searches the same images, those in all of the
indexes ``duplicates.py`` saved (run it first, with the same ``--work``), as
``duplicates()`` searches them (their files, ``rerank`` 50 with the mirror
image, every result decided), one at a time in one thread
(``cvsearch.thread_budget(1)``), each image at every size in turn, and splits
each search's time into the bag-of-words search (extraction, assignment and
scoring: ``rerank=0``) and the rest (verification and the decisions). It counts
the word correspondences verified over the short-list (a larger collection's
short-list holds images more like the query, with more of them), and the
results verified as the same object: each one costs a coverage and a pixel
check, and ``duplicates()`` searches a short-list mostly of them again, beyond
what they share (this script does not: it times one search per image).

    python benchmarks/duplicates_cost.py --work /tmp/dup3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import run_metadata, write_results

from cvsearch import Index, thread_budget

RESULTS = Path(__file__).parent / "results"


def cost(index: Index, path: str, rerank: int) -> dict:
    """One image searched as ``duplicates()`` does, and as a bag-of-words
    search alone (milliseconds, the results decided the same object, and the
    word correspondences its verification tried over the short-list)."""
    start = time.perf_counter()
    index.query(path, k=rerank, mirror=True)
    bag_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    _, _, evidence = index.query(path, k=rerank, rerank=rerank, mirror=True,
                                 return_evidence=True)
    total_ms = (time.perf_counter() - start) * 1e3
    return {"total_ms": total_ms, "bag_ms": bag_ms,
            "same_object": int(evidence.same_object.sum()),
            "pairs": int(evidence.pairs.sum())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-duplicates"))
    parser.add_argument("--images", type=int, default=300,
                        help="images searched at each size (those in every index)")
    parser.add_argument("--rerank", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    meta = run_metadata("duplicates_cost.py", argv)
    folders = sorted(args.work.glob("index-size-*"),
                     key=lambda f: int(f.name.rsplit("-", 1)[1]))
    folders += sorted(args.work.glob("index-0-*"))  # the whole index
    if not folders:
        raise SystemExit(f"{args.work}: no index of duplicates.py; run it first")
    indexes = [Index.load(folder) for folder in folders]
    common = set(indexes[0].names.values())
    for index in indexes[1:]:
        common &= set(index.names.values())
    rng = np.random.default_rng(args.seed)
    chosen = sorted(common)
    chosen = [chosen[i] for i in np.sort(rng.choice(
        len(chosen), min(args.images, len(chosen)), replace=False))]
    screenshot = np.array(["_screenshot" in Path(name).name for name in chosen])
    by_size = [[] for _ in indexes]
    with thread_budget(1):
        for index in indexes:
            index.warm_up()
            cost(index, chosen[0], args.rerank)  # first-call costs out of the timings
        # each image at every size in turn: the machine's load drifts alike for all
        for name in chosen:
            for measured, index in zip(by_size, indexes):
                measured.append(cost(index, name, args.rerank))
    rows, rest_ms, same_objects, pairs = [], [], [], []
    for index, measured in zip(indexes, by_size):
        total = np.array([m["total_ms"] for m in measured])
        bag = np.array([m["bag_ms"] for m in measured])
        same = np.array([m["same_object"] for m in measured])
        rest_ms.append(total - bag)
        same_objects.append(same)
        pairs.append(np.array([m["pairs"] for m in measured], float))
        row = {"images": len(index), "searched": len(chosen),
               "screenshots": int(screenshot.sum())}
        for label, where in (("all", np.ones(len(chosen), bool)),
                             ("not screenshots", ~screenshot),
                             ("screenshots", screenshot)):
            if not where.any():
                continue
            row[label] = {"mean_ms": round(float(total[where].mean()), 1),
                          "median_ms": round(float(np.median(total[where])), 1),
                          "bag_of_words_mean_ms": round(float(bag[where].mean()), 1),
                          "rest_mean_ms": round(float((total - bag)[where].mean()), 1),
                          "same_object_mean": round(float(same[where].mean()), 2),
                          "pairs_mean": round(float(pairs[-1][where].mean()))}
        rows.append(row)
        print(row, flush=True)
    # the rest's cost per result verified the same object, one line through all
    # sizes' searches; with it taken out, what is left should not grow
    slope, intercept = np.polyfit(np.concatenate(same_objects), np.concatenate(rest_ms), 1)
    for row, rest, same in zip(rows, rest_ms, same_objects):
        row["rest_without_same_object_mean_ms"] = round(float((rest - slope * same).mean()),
                                                        1)
    # and with the correspondences verified too: a larger collection's
    # short-list holds images more like the query, each with more of them
    work = np.column_stack([np.concatenate(same_objects), np.concatenate(pairs) / 1e3,
                            np.ones(sum(len(p) for p in pairs))])
    per_same, per_thousand, base = np.linalg.lstsq(work, np.concatenate(rest_ms),
                                                   rcond=None)[0]
    for row, rest, same, tried in zip(rows, rest_ms, same_objects, pairs):
        row["rest_without_work_mean_ms"] = round(
            float((rest - per_same * same - per_thousand * tried / 1e3).mean()), 1)
    results = {**meta, "rerank": args.rerank, "rows": rows,
               "rest_ms_per_same_object": round(float(slope), 2),
               "rest_ms_intercept": round(float(intercept), 1),
               "fit_with_pairs": {"ms_per_same_object": round(float(per_same), 2),
                                  "ms_per_thousand_pairs": round(float(per_thousand), 2),
                                  "ms_at_none": round(float(base), 1)}}
    lines = [
        "# Duplicates: where the cost per image goes",
        "",
        f"`{meta['command']}` on {meta['date']} ({meta['machine']}), one thread, "
        "each image searched at every size in turn.",
        "",
        f"The same {len(chosen)} images ({int(screenshot.sum())} of them screenshot "
        "copies), those in every index `duplicates.py` saved, each searched as "
        f"`Index.duplicates()` searches it: its file, `k={args.rerank}, "
        f"rerank={args.rerank}, mirror=True`, every result decided. \"Bag of words\" is "
        "the same search with `rerank=0` (extraction, assignment, scoring); \"the rest\" "
        "is verification and the decisions. \"Same object\" counts the results "
        "verified the same object (or copies): each costs a coverage and a pixel "
        "check; `duplicates()` searches a short-list three quarters full of them again, "
        "beyond what they share, which this script does not.",
        "",
        "| images | searched | mean ms | median ms | bag of words, mean ms | the rest, "
        "mean ms | same object per search | correspondences verified per search |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for label in ("all", "not screenshots", "screenshots"):
            if label in row:
                r = row[label]
                lines.append(f"| {row['images']:,} | {label} | {r['mean_ms']} | "
                             f"{r['median_ms']} | {r['bag_of_words_mean_ms']} | "
                             f"{r['rest_mean_ms']} | {r['same_object_mean']} | "
                             f"{r['pairs_mean']:,} |")
    lines += [
        "",
        f"The rest costs {slope:.1f} ms more per result verified the same object (a "
        f"least-squares line through all sizes' searches, {intercept:.1f} ms at none). "
        "With that taken out, the rest's mean per search is: "
        + ", ".join(f"{row['rest_without_same_object_mean_ms']} ms at {row['images']:,}"
                    for row in rows) + " images.",
        "",
        f"A plane through the same searches, by the results verified the same object "
        f"and the word correspondences verified: {per_same:.1f} ms per result, "
        f"{per_thousand:.2f} ms per thousand correspondences, {base:.1f} ms at none. "
        "With both taken out, the rest's mean per search is: "
        + ", ".join(f"{row['rest_without_work_mean_ms']} ms at {row['images']:,}"
                    for row in rows) + " images.",
    ]
    write_results(RESULTS, "duplicates_cost", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
