"""Word assignment at 20,000 words: the inverted file at several ``n_probe``
(fixed, or the fewest cells with ``probe_ratio``) and coarse cell counts,
faiss's HNSW over the same centres, faiss's inverted file (IVF-Flat) over the
same centres and cells, and OpenCV's FLANN
(randomised kd-trees, and its hierarchical k-means tree) over the same centres,
on the same descriptors (issue 22: "choose by measurement").

A vocabulary is learnt on a fixed sample of Caltech-101 images; the descriptors
of other images are then assigned, one image at a time, in one thread. For each
method: milliseconds per image and the share of descriptors given their exact
nearest centre.

    python benchmarks/assignment.py --data ../shared/data
    python benchmarks/assignment.py --data ../shared/data --method rootsift \
        --only-inverted-file --output assignment_rootsift
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_vocabulary_sample_arguments,
    run_metadata,
    vocabulary_sample,
)

from cvsearch import Vocabulary  # noqa: E402
from cvsearch.vocabulary import coarse_cells  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed_per_image(assign, images) -> tuple[float, list]:
    started = time.perf_counter()
    words = [assign(descriptors) for descriptors in images]
    return 1000 * (time.perf_counter() - started) / len(images), words


def flann_rows(vocabulary, images, exact) -> list[dict]:
    """OpenCV's FLANN over the centres: randomised kd-trees and a hierarchical
    k-means tree, at a few numbers of leaves checked (one OpenCV thread)."""
    import cv2

    cv2.setNumThreads(1)
    rows = []
    kinds = [(f"OpenCV FLANN, {trees} randomised kd-trees",
              {"algorithm": 1, "trees": trees}) for trees in (4, 8)]
    kinds.append(("OpenCV FLANN, k-means tree (branching 16)",
                  {"algorithm": 2, "branching": 16, "iterations": 5}))
    for name, params in kinds:
        tree = cv2.flann_Index(vocabulary.centers_, params)
        for checks in (64, 256):
            search = {"checks": checks}
            tree.knnSearch(images[0], 2, params=search)
            ms, words = timed_per_image(
                lambda d, t=tree, c=search: t.knnSearch(d, 2, params=c)[0][:, 0], images)
            rows.append({"method": f"{name}, checks={checks} (two nearest)",
                         "ms_per_image": round(ms, 2),
                         "agreement": round(float(np.mean(np.concatenate(words) == exact)),
                                            4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vocabulary_sample_arguments(parser)
    parser.add_argument("--method", default="sift", choices=["sift", "rootsift"])
    parser.add_argument("--only-inverted-file", action="store_true",
                        help="leave out faiss, FLANN and more coarse cells")
    parser.add_argument("--output", default="assignment",
                        help="results/<output>.md and .json (default: %(default)s)")
    args = parser.parse_args(argv)
    meta = run_metadata("assignment.py", argv)
    vocabulary, images = vocabulary_sample(args, args.method)
    exact = np.concatenate([vocabulary.predict_exact(d) for d in images])
    rows = []
    n_cells = len(vocabulary.cell_centers_)
    # the same words under coarse quantisers of more cells (fewer words each)
    # a fixed number of cells (probe_ratio None), and the cells nearly as near
    # as the nearest (at least 6)
    settings = [(vocabulary.get_state(), n_cells, n_probe, None) for n_probe in (8, 10, 12)]
    settings += [(vocabulary.get_state(), n_cells, 6, ratio) for ratio in (1.4, 1.45, 1.5)]
    for more, probes in ((2 * n_cells, (14, 16)), (round(2.83 * n_cells), (14, 16, 18))):
        if args.only_inverted_file:
            break
        cell_centers, word_cells = coarse_cells(vocabulary.centers_, more, args.seed)
        state = {**vocabulary.get_state(), "cell_centers": cell_centers,
                 "word_cells": word_cells}
        settings += [(state, more, n_probe, None) for n_probe in probes]
    with threadpool_limits(1):
        for state, cells, n_probe, ratio in settings:
            probed = Vocabulary.from_state({**vocabulary.get_params(), "n_cells": cells,
                                            "n_probe": n_probe, "probe_ratio": ratio},
                                           state)
            probed.predict(images[0])  # compiled on first use
            ms, words = timed_per_image(probed.predict, images)
            default = cells == n_cells and (n_probe, ratio) == (
                Vocabulary().n_probe, Vocabulary().probe_ratio)
            rows.append({"method": f"inverted file, {cells} cells, n_probe={n_probe}"
                         + ("" if ratio is None else f", probe_ratio={ratio}")
                         + (" (default)" if default else ""),
                         "ms_per_image": round(ms, 2),
                         "agreement": round(float(np.mean(np.concatenate(words) == exact)),
                                            4)})
            print(json.dumps(rows[-1]), flush=True)
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None and not args.only_inverted_file:
            faiss.omp_set_num_threads(1)
            for links in (16, 32):
                hnsw = faiss.IndexHNSWFlat(vocabulary.centers_.shape[1], links)
                hnsw.hnsw.efConstruction = 80
                hnsw.add(vocabulary.centers_)
                for ef in (16, 32, 48):
                    hnsw.hnsw.efSearch = ef
                    hnsw.search(images[0], 1)
                    ms, words = timed_per_image(lambda d, h=hnsw: h.search(d, 1)[1][:, 0],
                                                images)
                    rows.append({"method": f"faiss HNSW, M={links}, efSearch={ef}",
                                 "ms_per_image": round(ms, 2),
                                 "agreement": round(float(np.mean(
                                     np.concatenate(words) == exact)), 4)})
                    print(json.dumps(rows[-1]), flush=True)
            # faiss's own scan over the vocabulary's cell centres: the same
            # centres, each in its nearest cell (the vocabulary's own k-means
            # labels differ for a few), so nearly our candidates at one n_probe
            quantiser = faiss.IndexFlatL2(vocabulary.centers_.shape[1])
            quantiser.add(vocabulary.cell_centers_)
            ivf = faiss.IndexIVFFlat(quantiser, vocabulary.centers_.shape[1], n_cells)
            ivf.is_trained = True
            ivf.add(vocabulary.centers_)
            for n_probe in (8, 10):
                ivf.nprobe = n_probe
                ivf.search(images[0], 2)
                ms, words = timed_per_image(lambda d, i=ivf: i.search(d, 2)[1][:, 0],
                                            images)
                rows.append({"method": f"faiss IVF-Flat, {n_cells} cells, "
                                       f"nprobe={n_probe} (two nearest)",
                             "ms_per_image": round(ms, 2),
                             "agreement": round(float(np.mean(
                                 np.concatenate(words) == exact)), 4)})
                print(json.dumps(rows[-1]), flush=True)
        if not args.only_inverted_file:
            rows += flann_rows(vocabulary, images, exact)
    n_descriptors = float(np.mean([len(d) for d in images]))
    results = {**meta, "rows": rows, "descriptors_per_image": round(n_descriptors, 1),
               "args": vars(args) | {"data": str(args.data)}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Word assignment: methods compared", "",
             f"`{results['command']}` on {results['date']} ({results['machine']}).", "",
             f"A {args.n_words:,}-word vocabulary learnt on {args.images} Caltech-101 "
             f"images (seed {args.seed}); {len(images)} other images assigned one at "
             f"a time in one thread ({n_descriptors:.0f} {args.method} descriptors "
             "each). "
             "Agreement: descriptors given their exact nearest centre.", "",
             "| method | ms per image | agreement with exact |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['ms_per_image']} | {100 * r['agreement']:.1f}% |"
              for r in rows]
    lines += ["", "Wall-clock on a shared machine: compare within one run."]
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / f"{args.output}.md").read_text())


if __name__ == "__main__":
    main()
