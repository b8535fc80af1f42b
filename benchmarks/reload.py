"""A reader reloading after another process's save, against loading afresh.

For each index folder given, a scratch copy (hard links: saves never change a
file in place) is loaded by a reader and by a writer. The writer then adds one
Caltech-101 image and saves, ``--repeats`` times; after each save the reader
loads the folder again sharing what did not change with its previous state
(``Index.load(folder, previous=reader)``, what the service's workers do), and a
fresh load (``Index.load(folder)``) is timed beside it. Each load is followed by
``warm_up`` (what a first query needs), as the service does: after a fresh load,
the idf and every image's norm; after a reload, bounds on the norms of the
segments shared with a state that knew them, and the new segments' norms. The writer's
save is timed too (one new segment and the manifest: the vocabulary is in the
folder already).

    python benchmarks/reload.py --data ../shared/data --indexes \\
        /tmp/cvsearch-copies-scale/index-10000 /tmp/cvsearch-copies-scale/index-100000 \\
        /tmp/cvsearch-copies-scale/index-1000000

(``copies_scale.py`` leaves those folders in its work folder.) Writes
benchmarks/results/reload.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import run_metadata, timed, write_results

from cvsearch import Index
from cvsearch.datasets import caltech101

RESULTS = Path(__file__).resolve().parent / "results"


def load(folder: Path, previous=None, warm_ups=None) -> Index:
    """A load as the service's workers make it: then the weights of a first query
    (their seconds appended to ``warm_ups``)."""
    index = Index.load(folder, previous=previous)
    index, seconds = timed(index.warm_up)
    if warm_ups is not None:
        warm_ups.append(seconds)
    return index


def measure(folder: Path, images: list[str], scratch: Path) -> dict:
    copy = scratch / folder.name
    shutil.copytree(folder, copy, copy_function=os.link)
    reader = Index.load(copy).warm_up()
    writer = Index.load(copy)
    features = [writer.extractor.extract(path) for path in images]
    saves, fresh, shared, warm_ups = [], [], [], []
    for i, extracted in enumerate(features):
        writer.add([extracted], names=[f"reload-{i}"])
        saves.append(timed(writer.save, copy)[1])
        loaded, seconds = timed(load, copy)
        fresh.append(seconds)
        reader, seconds = timed(load, copy, previous=reader, warm_ups=warm_ups)
        shared.append(seconds)
        assert reader.names == loaded.names == writer.names
    shutil.rmtree(copy)
    ms = lambda values: round(1000 * float(np.median(values)), 1)  # noqa: E731
    return {"folder": str(folder), "images": len(writer), "segments": writer.n_segments,
            "fresh_load_ms": ms(fresh), "shared_reload_ms": ms(shared),
            "fresh_over_shared": round(float(np.median(fresh) / np.median(shared)), 1),
            "shared_warm_up_ms": ms(warm_ups),
            "save_ms": ms(saves)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder holding caltech101/")
    parser.add_argument("--indexes", nargs="+", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    meta = run_metadata("reload.py", argv)
    data = caltech101(args.data, download=False)
    order = np.random.default_rng(0).permutation(len(data.paths))
    images = [data.paths[i] for i in order[:args.repeats]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvsearch-reload-") as scratch:
        for folder in args.indexes:
            rows.append(measure(folder, images, Path(scratch)))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["# A reader reloading after another process's save", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}; code "
             f"{meta['code']}).", "",
             f"Medians of {args.repeats} rounds: a writer adds one image and saves; a "
             "reader then loads the folder sharing what did not change with its "
             "previous state (`Index.load(folder, previous=reader)`, as the "
             "service's workers do), and a fresh `Index.load(folder)` is timed "
             "beside it; both followed by `warm_up()`. Every file a load reads is "
             "hashed, as by default.", "",
             "| images | segments | fresh load + warm-up (ms) | reload sharing the "
             "previous state (ms) | of which warm-up (ms) | fresh / shared | "
             "writer's save (ms) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['images']:,} | {r['segments']} | {r['fresh_load_ms']} | "
              f"{r['shared_reload_ms']} | {r['shared_warm_up_ms']} | "
              f"{r['fresh_over_shared']}x | {r['save_ms']} |" for r in rows]
    lines += ["", "The warm-up computes what a first query needs. Every add changes "
              "each image's norm, as the collection's size is in every idf: after "
              "a fresh load, they are computed, a pass over every posting; after "
              "a reload, the segments shared with the previous state (which knew "
              "their norms) bound them instead, and only the new segments are "
              "computed (a query then computes exactly the few norms that can "
              "reach its best).", "",
              "Wall-clock on a shared machine: compare within one run."]
    write_results(RESULTS, "reload", {**meta, "repeats": args.repeats, "rows": rows},
                  "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
