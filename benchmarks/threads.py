"""Threads on a shared machine: fitting a vocabulary alone and two at once.

What issue 22 saw: on a busy machine the libraries' thread pools fight each
other. This times ``Vocabulary(1000).fit`` on 100,000 random 128-d descriptors
in separate processes: alone, and two at once, each with two threads and each
with one (``cvsearch.thread_budget``). The library now fits with one thread.

    python benchmarks/threads.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import run_metadata

RESULTS = Path(__file__).parent / "results"

FIT = """
import sys, time, numpy as np
from threadpoolctl import threadpool_limits
from sklearn.cluster import MiniBatchKMeans
X = np.random.default_rng(0).random((100_000, 128), dtype=np.float32)
started = time.perf_counter()
with threadpool_limits(limits=int(sys.argv[1])):
    MiniBatchKMeans(1000, init="k-means++", batch_size=4096, max_iter=20, n_init=1,
                    random_state=0, init_size=12288).fit(X)
print(time.perf_counter() - started)
"""


def fits(threads: int, at_once: int) -> list[float]:
    """Seconds of ``at_once`` fits started together, ``threads`` threads each
    (the k-means that ``Vocabulary.fit`` runs, with the thread count forced)."""
    processes = [subprocess.Popen([sys.executable, "-c", FIT, str(threads)],
                                  stdout=subprocess.PIPE, text=True)
                 for _ in range(at_once)]
    return [float(p.communicate()[0]) for p in processes]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    rows = []
    for threads, at_once in ((2, 1), (1, 1), (2, 2), (1, 2)):
        seconds = fits(threads, at_once)
        rows.append({"threads": threads, "at_once": at_once,
                     "seconds": [round(s, 2) for s in seconds]})
        print(rows[-1], flush=True)
        time.sleep(2)
    meta = run_metadata("threads.py")
    (RESULTS / "threads.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = ["# Threads on a shared machine", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
             "MiniBatchKMeans with 1,000 centres on 100,000 random 128-d descriptors "
             "(what `Vocabulary.fit` runs), in separate processes started together.",
             "", "| threads each | fits at once | seconds each |", "|---|---|---|"]
    lines += [f"| {r['threads']} | {r['at_once']} | "
              f"{' / '.join(f'{s:.1f}' for s in r['seconds'])} |" for r in rows]
    lines += ["", "Two threads gain little alone and lose several times over when "
              "the cores are shared: `Vocabulary.fit` runs with one thread.", ""]
    (RESULTS / "threads.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
