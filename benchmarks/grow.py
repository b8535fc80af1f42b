"""What growing a large index costs: adds of 1 or 100 images into an index of N,
with what a changed state's queries need computed by its first query (the
default) or before the add returns (``Index.warm_changes``, what ``cvsearch
serve`` sets); beside them, what the whole pass over every posting costs on the
same states (``Store.weights`` after the add).

The norms depend on the idf, hence on every image. A state changed from one
whose norms were computed bounds them instead, and computes exactly only those
its queries need (see ``cvsearch.store``). The index and the queries are those
of ``benchmarks/scale.py`` (synthetic images of 400 words drawn from the word
frequencies of real Caltech-101 images; real Caltech-101 queries, their words
given). For each size, the three settings take turns add by add in one process,
so their ratios are measured under the same conditions; each add is followed by
a query.

    python benchmarks/grow.py --data ../shared/data --sizes 10000 100000

Writes benchmarks/results/grow.json and grow.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import run_metadata
from scale import add_synthetic, model, synthetic

from cvsearch import Index

RESULTS = Path(__file__).resolve().parent / "results"
#: lazy: the default; warm: Index.warm_changes; pass: the whole pass after the add
SETTINGS = ("lazy", "warm", "pass")


def run_size(args, n: int) -> dict:
    work = Path(args.work)
    base, frequency, queries = model(args, work / "model" / "index")
    words = base.image_words([base.extractor.extract(q) for q in queries])
    folder = work / f"grow-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    base.save(folder)
    rng = np.random.default_rng(1)
    index = add_synthetic(Index.load(folder), folder, rng, frequency, n,
                          args.words_per_image)
    index.warm_up()
    fingerprint = index.vocabulary.fingerprint
    params = index.extractor.feature_params()
    row = {"n": n}
    added = n
    for batch in args.batches:
        # setting -> (adds, queries after, whole passes)
        times = {label: ([], [], []) for label in SETTINGS}
        for r in range(args.rounds):
            # each setting first in turn
            for label in SETTINGS[r % 3:] + SETTINGS[:r % 3]:
                items, names = synthetic(rng, frequency, batch, args.words_per_image,
                                         fingerprint, params, added)
                added += batch
                index.warm_changes = label == "warm"
                started = time.perf_counter()
                index.add(items, names=names)
                middle = time.perf_counter()
                if label == "pass":  # the idf and every norm: a pass over the postings
                    index.searcher().store.weights()
                passed = time.perf_counter()
                index.query(words[r % len(words)], k=10)
                ended = time.perf_counter()
                times[label][0].append(middle - started)
                times[label][1].append(ended - passed)
                times[label][2].append(passed - middle)
        for label in ("lazy", "warm"):
            adds, after, _ = times[label]
            row[f"add{batch}_{label}_ms"] = round(1000 * statistics.median(adds), 2)
            row[f"query_after_add{batch}_{label}_ms"] = round(
                1000 * statistics.median(after), 2)
        row[f"add{batch}_pass_ms"] = round(1000 * statistics.median(times["pass"][2]), 2)
        row[f"add{batch}_pass_over_lazy_query"] = round(
            statistics.median(times["pass"][2])
            / statistics.median(times["lazy"][1]), 2)
    index.warm_changes = False
    started = time.perf_counter()
    index.query(words[0], k=10)
    row["query_ms"] = round(1000 * (time.perf_counter() - started), 2)
    row["segments"] = index.n_segments
    shutil.rmtree(folder, ignore_errors=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder holding caltech101/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100],
                        help="images per add")
    parser.add_argument("--rounds", type=int, default=10,
                        help="adds of each setting per batch size")
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--words-per-image", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--work", default=None, help="scratch folder (default: temp)")
    args = parser.parse_args(argv)
    args.work = args.work or tempfile.mkdtemp(prefix="cvsearch-grow-")
    rows = []
    for n in args.sizes:
        rows.append(run_size(args, n))
        print(rows[-1], flush=True)
    write_results(args, argv, rows)
    return 0


def write_results(args, argv, rows):
    meta = run_metadata("grow.py", argv)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grow.json").write_text(json.dumps({**meta, "rows": rows}, indent=1)
                                       + "\n")
    lines = ["# Growing an index: what an add costs beside the images it adds", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}; code "
             f"{meta['code']}).", "",
             "Synthetic images as in scale.md, added to an index of N images. "
             "\"lazy\": the default, the first query of a changed state computes "
             "what its queries need: bounds on the norms from the state before and "
             "the exact norms of the images that can reach its best (or, where that "
             "costs more, every norm: a pass over every posting); \"warm\": "
             "`Index.warm_changes = True` (what `cvsearch serve` sets), the add "
             "computes the bounds before its state becomes visible; \"whole pass\": "
             "`index.searcher().store.weights()` after an add, every norm of the "
             "new state (what the first query of every changed state computed "
             "before the bounds). The "
             "three take turns add by add; each add is followed by a query. Medians "
             f"of {args.rounds} adds each.", "",
             "| images | images per add | add ms, lazy | query after, lazy ms "
             "| add ms, warm | query after, warm ms | whole pass ms "
             "| whole pass / query after, lazy |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for batch in args.batches:
            lines.append(
                f"| {row['n']:,} | {batch} | {row[f'add{batch}_lazy_ms']} | "
                f"{row[f'query_after_add{batch}_lazy_ms']} | "
                f"{row[f'add{batch}_warm_ms']} | "
                f"{row[f'query_after_add{batch}_warm_ms']} | "
                f"{row[f'add{batch}_pass_ms']} | "
                f"{row[f'add{batch}_pass_over_lazy_query']}x |")
    lines += ["", "A query after the last add, its state ready: " + ", ".join(
        f"{row['query_ms']} ms at {row['n']:,} images ({row['segments']} segments)"
        for row in rows) + "."]
    (RESULTS / "grow.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
