"""This cvsearch against an earlier revision, at one size, in one run: is any
operation slower than before?

Each revision runs the same job in its own process (a git worktree of the earlier
revision on PYTHONPATH): train a vocabulary on real Caltech-101 images, build an
index of N synthetic images (as benchmarks/scale.py makes them) in batches, saving
after each, then load it, query it with real images (features given, so the
time includes assigning words), re-rank 50, add 100 and save, remove 10 and save,
and query again. The revisions take turns ``--rounds`` times and each figure is
the median over rounds, so a noisy moment of this shared machine hurts both.
Only names that both revisions have are used.

    python benchmarks/scale_compare.py --data ../shared/data --before 58fea34

Writes benchmarks/results/scale_compare.json and scale_compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import run_metadata

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

#: (key, label, unit, lower is better)
MEASURES = [
    ("build_s", "build (batches of 1,000, saved after each)", "s"),
    ("save_s", "save, unchanged index", "s"),
    ("load_s", "load", "s"),
    ("first_query_ms", "first query after load", "ms"),
    ("query_ms", "query, features given (median)", "ms"),
    ("rerank50_ms", "query + re-rank 50 (median)", "ms"),
    ("add100_save_s", "add 100 + save", "s"),
    ("remove10_save_s", "remove 10 + save", "s"),
    ("query_after_change_ms", "first query after the change", "ms"),
    ("disk_bytes_per_image", "disk per image", "B"),
    ("peak_rss_gb", "peak RSS", "GB"),
]


def job(args) -> dict:
    """The measured job, in this process, with whichever cvsearch is imported."""
    import numpy as np

    import cvsearch
    from cvsearch import FeatureExtractor, ImageWords, Index
    from cvsearch.datasets import caltech101

    work = Path(args.work)
    data = caltech101(args.data, download=False)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.paths))
    train = [data.paths[i] for i in order[:args.train_images]]
    extractor = FeatureExtractor("sift", max_keypoints=args.words_per_image)
    model = Index.build(train, extractor, n_words=args.n_words, random_state=0,
                        n_jobs=2, train_images=len(train))
    counts = np.zeros(args.n_words)
    for words in model.image_words(train, n_jobs=2):
        if isinstance(words, ImageWords):
            counts += np.bincount(words.words, minlength=args.n_words)
    frequency = counts / counts.sum()
    queries = [extractor.extract(data.paths[i]) for i in order[-args.queries:]]
    fingerprint = model.vocabulary.fingerprint
    params = extractor.feature_params()

    def synthetic(n, first):
        words = rng.choice(args.n_words, size=(n, args.words_per_image),
                           p=frequency).astype(np.int32)
        xy = rng.random((n, args.words_per_image, 2)) * [640, 480]
        extra = np.tile(np.float32([8.0, 0.0]), (n, args.words_per_image, 1))
        keypoints = np.concatenate([xy, extra], axis=2).astype(np.float32)
        return ([ImageWords(words[i], keypoints[i], (480, 640), fingerprint, params)
                 for i in range(n)], [f"synthetic/{first + i:08d}" for i in range(n)])

    def seconds(function):
        started = time.perf_counter()
        function()
        return time.perf_counter() - started

    folder = work / f"index-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    index = Index(extractor, args.n_words)
    index.vocabulary = model.vocabulary
    out = {"cvsearch": str(Path(cvsearch.__file__).parent.parent)}
    started = time.perf_counter()
    for first in range(0, args.n, 1000):
        items, names = synthetic(min(1000, args.n - first), first)
        index.add(items, names=names)
        index.save(folder)
    out["build_s"] = time.perf_counter() - started
    out["save_s"] = seconds(lambda: index.save(folder))
    loaded = []
    out["load_s"] = seconds(lambda: loaded.append(Index.load(folder)))
    index = loaded[0]
    out["first_query_ms"] = 1000 * seconds(lambda: index.query(queries[0], k=10))
    out["query_ms"] = 1000 * statistics.median(
        seconds(lambda q=q: index.query(q, k=10)) for q in queries)
    out["rerank50_ms"] = 1000 * statistics.median(
        seconds(lambda q=q: index.query(q, k=10, rerank=50))
        for q in queries[:args.rerank_queries])
    items, names = synthetic(100, args.n)

    def add_and_save():
        index.add(items, names=names)
        index.save(folder)

    def remove_and_save():
        index.remove(names[:10])
        index.save(folder)

    out["add100_save_s"] = seconds(add_and_save)
    out["remove10_save_s"] = seconds(remove_and_save)
    out["query_after_change_ms"] = 1000 * seconds(lambda: index.query(queries[1], k=10))
    out["disk_bytes_per_image"] = sum(
        p.stat().st_size for p in folder.iterdir()) / len(index)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding caltech101/")
    parser.add_argument("--before", default="58fea34",
                        help="earlier revision (default: the last before segments)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--words-per-image", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rerank-queries", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=None)
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(job(args)))
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="cvsearch-compare-")
    args.data = str(Path(args.data).resolve())  # the jobs run in the work folder
    tree = Path(args.work) / "before"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                        str(tree), args.before], check=True, capture_output=True)
    revision = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    now = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    runs = {"before": [], "now": []}
    try:
        for round_ in range(args.rounds):
            for which, path in (("before", tree), ("now", ROOT)):
                command = [sys.executable, __file__, "--job", "--data", args.data,
                           "--n", str(args.n), "--n-words", str(args.n_words),
                           "--words-per-image", str(args.words_per_image),
                           "--train-images", str(args.train_images), "--queries",
                           str(args.queries), "--rerank-queries",
                           str(args.rerank_queries), "--work", args.work]
                env = dict(os.environ, PYTHONPATH=str(path))
                done = subprocess.run(command, capture_output=True, text=True, env=env,
                                      cwd=args.work)
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                result = json.loads(done.stdout.splitlines()[-1])
                assert Path(result.pop("cvsearch")) == Path(path).resolve(), result
                runs[which].append(result)
                print(round_, which, result, flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(tree)], capture_output=True)
    write_results(args, argv, revision, now, runs)
    return 0


def write_results(args, argv, revision, now, runs):
    meta = {**run_metadata("scale_compare.py", argv),
        "before": revision, "now": now, "n": args.n, "rounds": args.rounds}
    rows = []
    for key, label, unit in MEASURES:
        before = statistics.median(r[key] for r in runs["before"])
        after = statistics.median(r[key] for r in runs["now"])
        rows.append({"measure": key, "label": label, "unit": unit,
                     "before": before, "now": after,
                     "now_over_before": after / before if before else None})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_compare.json").write_text(json.dumps(
        {**meta, "rows": rows, "runs": runs}, indent=1) + "\n")
    lines = [f"# At {args.n:,} images: now ({now}) against before ({revision})", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
             f"The same job run by both revisions, in turns, {args.rounds} times; "
             "medians over the rounds (see the module docstring for the job). "
             "Lower is better everywhere; the ratio is now / before.", "",
             f"| measure | before ({revision}) | now ({now}) | now / before |",
             "|---|---|---|---|"]
    for row in rows:
        ratio = "" if row["now_over_before"] is None else f"{row['now_over_before']:.2f}"
        digits = 0 if row["unit"] == "B" else 3
        lines.append(f"| {row['label']} | {row['before']:,.{digits}f} {row['unit']} | "
                     f"{row['now']:,.{digits}f} {row['unit']} | {ratio} |")
    (RESULTS / "scale_compare.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
