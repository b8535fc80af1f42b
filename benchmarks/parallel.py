"""Parallel indexing: images/second and peak memory with 1 and 2 worker processes.

Indexes the full Caltech-101 (8,677 images) with ``Index.build`` once per worker
count, each in a fresh child process, and checks that the indexes are identical.
Peak memory is the largest total resident memory of the child and its worker
processes, sampled every 0.2 s from /proc (Linux).

    python benchmarks/parallel.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack += children.get(p, [])
    return total


def child(args):
    """Build the index and print a JSON line of timings and a digest of it."""

    from cvsearch import FeatureExtractor, Index
    from cvsearch.datasets import caltech101

    paths = caltech101(args.data, download=False).paths
    limiter = None
    if args.one_core:
        import cv2
        from threadpoolctl import threadpool_limits

        cv2.setNumThreads(1)
        limiter = threadpool_limits(1)  # noqa: F841 (kept alive for the build)
    marks = {}

    def progress(stage, done, total):
        marks.setdefault(stage + "_start", time.perf_counter())
        if done == total:
            marks[stage + "_end"] = time.perf_counter()

    start = time.perf_counter()
    index = Index.build(paths, FeatureExtractor(args.method), args.n_words,
                        random_state=0, n_jobs=args.jobs, progress=progress)
    total = time.perf_counter() - start
    # the saved files (named by their content) say whether two runs agree
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        files = sorted(p.name for p in Path(folder).glob("[!.]*-*"))
        for name in files:
            digest.update(name.encode() + (Path(folder) / name).read_bytes())
    print(json.dumps({"images": len(index), "total_s": total,
                      "digest": digest.hexdigest(), "files": files}))


def measure(args, jobs: int, one_core: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", "--jobs", str(jobs),
               "--method", args.method, "--n-words", str(args.n_words)]
    if one_core:
        command.append("--one-core")
    if args.data:
        command += ["--data", str(args.data)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"the child with {jobs} workers failed")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(jobs=jobs, one_core=one_core, peak_mib=peak[0] / 2**20,
                  images_per_s=result["images"] / result["total_s"])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding (caltech101/)101_ObjectCategories")
    parser.add_argument("--method", default="sift")
    parser.add_argument("--n-words", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "parallel.md")
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = [measure(args, 1), measure(args, 1, one_core=True), measure(args, 2)]
    serial, one_core, parallel = rows
    same = len({r["digest"] for r in rows}) == 1
    # the files of a run that no other run wrote (their names hash their content)
    differing = sorted({name.rsplit("-", 1)[0] for r in rows for name in r["files"]
                        if not all(name in other["files"] for other in rows)})
    lines = [
        "# Parallel indexing of Caltech-101",
        "",
        f"Command: `python benchmarks/parallel.py"
        f"{' --data ' + str(args.data) if args.data else ''} --method {args.method} "
        f"--n-words {args.n_words}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, shared with other work; date: {date.today()}",
        "",
        f"`Index.build` of all {rows[0]['images']} images ({args.method}, "
        f"{args.n_words} words, vocabulary trained on 1,000 random images), in a "
        "fresh process per row, one after the other. Peak memory: largest total "
        "resident memory of the process and its workers.",
        "",
        "| run | build s | images/s | peak memory MiB |",
        "|---|---|---|---|",
        f"| n_jobs=1 (OpenCV and BLAS may use both cores inside) | "
        f"{serial['total_s']:.1f} | {serial['images_per_s']:.1f} | "
        f"{serial['peak_mib']:.0f} |",
        f"| n_jobs=1, one core (OpenCV and BLAS held to one thread) | "
        f"{one_core['total_s']:.1f} | {one_core['images_per_s']:.1f} | "
        f"{one_core['peak_mib']:.0f} |",
        f"| n_jobs=2 (two workers of one thread each) | {parallel['total_s']:.1f} | "
        f"{parallel['images_per_s']:.1f} | {parallel['peak_mib']:.0f} |",
        "",
        f"Two workers against one single-threaded worker: "
        f"{one_core['total_s'] / parallel['total_s']:.2f}x faster. Against n_jobs=1 "
        f"with OpenCV's own threads: {serial['total_s'] / parallel['total_s']:.2f}x "
        "(OpenCV's SIFT already spreads part of its work over the second core). "
        f"Identical indexes in all three runs (vocabulary, words, keypoints): "
        f"{'yes' if same else '**no** (differing: ' + ', '.join(differing) + ')'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
