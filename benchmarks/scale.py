"""How far one machine goes: an index of N images, built, saved, loaded, grown and
queried, for N up to a million.

The images are synthetic word lists drawn from the word statistics of real
Caltech-101 images (400 SIFT words each, a 20,000-word vocabulary trained on real
images), with keypoints spread over a 640 x 480 frame; the queries are real
Caltech-101 images that are not in the training set, their features computed
beforehand (the time measured is the index's, not SIFT's). Each size runs in its
own process, so its peak memory is its own.

    python benchmarks/scale.py --data ../shared/data --sizes 10000 100000 1000000

Writes benchmarks/results/scale.json, scale.md and scale.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import run_metadata

from cvsearch import FeatureExtractor, ImageWords, Index
from cvsearch.datasets import caltech101

RESULTS = Path(__file__).resolve().parent / "results"
SEGMENT = 65_536  # images per added batch (one segment each)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model(args, cache: Path):
    """The vocabulary, the word frequencies and the query features, from real
    Caltech-101 images (cached in ``cache``)."""
    extractor = FeatureExtractor("sift", max_keypoints=args.words_per_image)
    if (cache / "index.json").exists():
        index = Index.load(cache)
        if index.extractor == extractor:  # else made with other default features
            stats = np.load(cache.parent / "stats.npz")
            return index, stats["frequency"], list(stats["queries"])
    data = caltech101(args.data, download=False)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.paths))
    train = [data.paths[i] for i in order[:args.train_images]]
    index = Index.build(train, extractor, n_words=args.n_words, random_state=0,
                        n_jobs=2, train_images=len(train))
    counts = np.zeros(args.n_words)
    for words in index.image_words(train, n_jobs=2):
        if isinstance(words, ImageWords):
            counts += np.bincount(words.words, minlength=args.n_words)
    frequency = counts / counts.sum()
    queries = [data.paths[i] for i in order[-args.queries:]]
    empty = Index(extractor, args.n_words)
    empty.vocabulary = index.vocabulary
    shutil.rmtree(cache, ignore_errors=True)  # a cache of other features
    empty.save(cache)
    np.savez(cache.parent / "stats.npz", frequency=frequency, queries=np.array(queries))
    return Index.load(cache), frequency, queries


def synthetic(rng, frequency, n, words_per_image, fingerprint, params, first):
    """``n`` ImageWords drawn from the word frequencies, and their names."""
    words = rng.choice(len(frequency), size=(n, words_per_image),
                       p=frequency).astype(np.int32)
    xy = rng.random((n, words_per_image, 2)) * [640, 480]
    # sizes and angles vary as real ones do: identical shape arrays would be
    # stored once (files are named by their content) and understate the disk
    size = np.exp2(rng.uniform(1, 6, (n, words_per_image, 1)))
    angle = rng.uniform(0, 360, (n, words_per_image, 1))
    keypoints = np.concatenate([xy, size, angle], axis=2).astype(np.float32)
    items = [ImageWords(words[i], keypoints[i], (480, 640), fingerprint, params)
             for i in range(n)]
    return items, [f"synthetic/{first + i:08d}" for i in range(n)]


def add_synthetic(index, folder: Path, rng, frequency, n: int, words_per_image: int):
    """Add ``n`` synthetic images to ``index``, one segment per ``SEGMENT``, each
    saved to ``folder`` and memory-mapped again (the way a large index is built
    without holding it all in memory); returns the index loaded last."""
    fingerprint = index.vocabulary.fingerprint
    params = index.extractor.feature_params()
    for first in range(0, n, SEGMENT):
        items, names = synthetic(rng, frequency, min(SEGMENT, n - first),
                                 words_per_image, fingerprint, params, first)
        index.add(items, names=names)
        del items
        index.save(folder)
        index = Index.load(folder, verify=False)
    return index


def median_ms(times) -> float:
    return round(1000 * statistics.median(times), 2)


def run_size(args, n: int) -> dict:
    work = Path(args.work)
    base, frequency, queries = model(args, work / "model" / "index")
    features = [base.extractor.extract(q) for q in queries]
    started = time.perf_counter()
    words = base.image_words(features)  # assignment is measured apart
    assign_ms = 1000 * (time.perf_counter() - started) / len(features)
    folder = work / f"index-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    base.save(folder)
    rng = np.random.default_rng(1)
    fingerprint = base.vocabulary.fingerprint
    params = base.extractor.feature_params()
    out = {"n": n, "assign_ms": round(assign_ms, 2)}

    started = time.perf_counter()
    index = add_synthetic(Index.load(folder), folder, rng, frequency, n,
                          args.words_per_image)
    out["build_s"] = round(time.perf_counter() - started, 1)

    # first query of a loaded index computes the idf and norms once
    started = time.perf_counter()
    index = Index.load(folder, verify=False)
    out["load_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    hashed = Index.load(folder, verify=True)
    out["load_verified_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    hashed.check_integrity()  # the keypoint arrays' hashes, owed until first use
    out["check_integrity_s"] = round(time.perf_counter() - started, 2)
    del hashed
    started = time.perf_counter()
    index.query(words[0], k=10)
    out["first_query_s"] = round(time.perf_counter() - started, 2)

    times = []
    for w in words:
        started = time.perf_counter()
        index.query(w, k=10)
        times.append(time.perf_counter() - started)
    out["query_ms"] = median_ms(times)
    times, verify = [], []
    for w in words[:args.rerank_queries]:
        started = time.perf_counter()
        index.query(w, k=10, rerank=50)
        times.append(time.perf_counter() - started)
        _, shortlist = index.query(w, k=50)
        started = time.perf_counter()
        index.inliers(w, shortlist)  # the verification alone
        verify.append(time.perf_counter() - started)
    out["rerank50_ms"] = median_ms(times)
    out["verify50_ms"] = median_ms(verify)

    # grow by 100 and save, ten times: a new segment (merged with the small ones
    # before it one time in ten) and the manifest; the next query computes what
    # the state it finds needs
    adds = []
    for r in range(args.adds):
        items, names = synthetic(rng, frequency, 100, args.words_per_image,
                                 fingerprint, params, n + 100 * r)
        started = time.perf_counter()
        index.add(items, names=names)
        index.save(folder)
        adds.append(time.perf_counter() - started)
    out["add100_save_s"] = round(statistics.median(adds), 2)
    out["add100_save_max_s"] = round(max(adds), 2)
    started = time.perf_counter()
    index.remove(names[:10])
    index.save(folder)
    out["remove10_save_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    index.query(words[0], k=10)
    out["query_after_change_ms"] = round(1000 * (time.perf_counter() - started), 2)

    disk = sum(p.stat().st_size for p in folder.iterdir())
    out["disk_bytes_per_image"] = round(disk / len(index))
    out["searchable_bytes_per_image"] = round(index.searchable_nbytes / len(index))
    out["segments"] = index.n_segments
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder holding caltech101/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--words-per-image", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rerank-queries", type=int, default=20)
    parser.add_argument("--adds", type=int, default=10,
                        help="batches of 100 added and saved, one after another")
    parser.add_argument("--work", default=None, help="scratch folder (default: temp)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:  # one size, in this process: print its JSON
        print(json.dumps(run_size(args, args.one)))
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="cvsearch-scale-")
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--one", str(n), "--work", args.work,
                   "--n-words", str(args.n_words), "--words-per-image",
                   str(args.words_per_image), "--train-images", str(args.train_images),
                   "--queries", str(args.queries), "--rerank-queries",
                   str(args.rerank_queries), "--adds", str(args.adds)]
        command += ["--data", args.data] if args.data else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(rows[-1], flush=True)
    write_results(args, argv, rows)
    return 0


def write_results(args, argv, rows):
    meta = {**run_metadata("scale.py", argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({**meta, "rows": rows}, indent=1)
                                        + "\n")
    columns = [("n", "images"), ("assign_ms", "assign words ms"), ("build_s", "build s"),
               ("load_s", "load s"),
               ("load_verified_s", "load, hashed s"),
               ("check_integrity_s", "check_integrity s"),
               ("first_query_s", "1st query s"),
               ("query_ms", "query ms"), ("verify50_ms", "verify 50 ms"),
               ("rerank50_ms", "query + re-rank 50 ms"),
               ("add100_save_s", "add 100 + save s (median)"),
               ("add100_save_max_s", "add 100 + save s (max)"),
               ("remove10_save_s", "remove 10 + save s"),
               ("query_after_change_ms", "query after change ms"),
               ("segments", "segments"),
               ("searchable_bytes_per_image", "searchable B/image"),
               ("disk_bytes_per_image", "disk B/image"), ("peak_rss_gb", "peak RSS GB")]
    lines = ["# Scale: one machine, up to a million images", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}; code "
             f"{meta['code']}).", "",
             "Synthetic images of 400 words drawn from the word frequencies of real "
             "Caltech-101 SIFT features (20,000 words); queries are real Caltech-101 "
             "images, their words given (assigning them is the column \"assign "
             "words\", apart). Medians over the queries. \"1st query\" includes "
             "computing the idf and the norms of the loaded state, once. The first "
             "query after a change computes what that state needs: bounds on the "
             "norms from those of the state before, the new segments' norms, and "
             "exactly those of the images that can reach its best "
             "(Index.warm_changes is False, the default: \"add 100 + save\" does "
             "not include it, \"query after change\" does; see grow.md). Adding "
             "100 is repeated " + str(args.adds) +
             " times: the "
             "median, and the slowest (which merges small segments). \"load, "
             "hashed\" hashes what scoring reads; \"check_integrity\" then hashes "
             "the keypoint arrays, which a loaded index otherwise hashes segment by "
             "segment when re-ranking first reads them. \"verify 50\" is "
             "Index.inliers on the short-list (every candidate verified in full, "
             "from keypoint shapes, the default); re-ranking refines only the "
             "candidates that can reach min_inliers.", "",
             "| " + " | ".join(c[1] for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c[0]]:,}" if isinstance(row[c[0]], int)
                                       else str(row[c[0]]) for c in columns) + " |")
    lines += ["", "![growth](scale.png)"]
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(7, 4.5))
    ns = [r["n"] for r in rows]
    for key, label in [("query_ms", "query (ms)"), ("verify50_ms", "verify 50 (ms)"),
                       ("add100_save_s", "add 100 + save (s)"), ("load_s", "load (s)"),
                       ("load_verified_s", "load, hashed (s)"),
                       ("first_query_s", "first query (s)"),
                       ("peak_rss_gb", "peak RSS (GB)")]:
        axis.plot(ns, [r[key] for r in rows], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("images in the index")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "scale.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
