"""Word assignment compiled for older CPUs: the scan numba compiles for this
machine, for an AVX2 one (Haswell) and for plain x86-64 (SSE2, no FMA), on the
same descriptors, for one or more checkouts of the code.

A 20,000-word vocabulary is learnt on a fixed sample of Caltech-101 images and
the descriptors of other images are assigned (``Vocabulary.predict_two``, as a
query does), one image at a time, in one thread. Each (checkout, CPU) runs in a
process of its own (``NUMBA_CPU_NAME``, a fresh numba cache), in rounds that
take turns, so that a busy moment of the machine falls on all of them; the
figure is the median over rounds of the mean per image. Every run must give
the same words.

    python benchmarks/scan_cpus.py --data ../shared/data --source . --source ../old

``--source`` (repeatable) names checkouts to compare (default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_vocabulary_sample_arguments,
    commit_of,
    run_metadata,
    vocabulary_sample,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"

#: Run in each process: the mean milliseconds per image over ``repeats`` passes
#: (the fastest pass), and a hash of the words.
WORKER = """
import hashlib, json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from cvsearch import Vocabulary
folder, repeats = sys.argv[1], int(sys.argv[2])
params = json.loads(open(folder + "/params.json").read())
state = dict(np.load(folder + "/state.npz"))
vocabulary = Vocabulary.from_state(params, state)
stored = np.load(folder + "/descriptors.npz")
images = [stored[str(i)] for i in range(len(stored.files))]
with threadpool_limits(1):
    vocabulary.predict_two(images[0])  # compiled on first use
    passes = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = [vocabulary.predict_two(d) for d in images]
        passes.append(1000 * (time.perf_counter() - started) / len(images))
digest = hashlib.sha256(np.concatenate([w for w, *_ in found]).tobytes()).hexdigest()
print(json.dumps({"ms_per_image": min(passes), "words": digest[:16]}))
"""


def checkout_name(source: Path) -> str:
    """The checkout's commit, "+changes" where its code differs from it."""
    return commit_of(source) or str(source)


def run_one(folder: Path, source: Path, cpu: str, repeats: int, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source.resolve()),
           "NUMBA_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    if cpu != "host":
        env.update(NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    done = subprocess.run([sys.executable, "-c", WORKER, str(folder), str(repeats)],
                          env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{source} on {cpu}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(meta: dict, table: list[dict]) -> str:
    lines = ["# Word assignment compiled for older CPUs", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; {meta['cpu']}  ",
             f"Code: {meta['code']}; date: {meta['date']}", "",
             f"{meta['queries']} Caltech-101 images, {meta['descriptors_per_image']:.0f} "
             f"SIFT descriptors each, {meta['n_words']} words (n_probe "
             f"{meta['n_probe']}), `predict_two` one image at a time, one thread. Median "
             f"over {meta['rounds']} rounds of the fastest of {meta['repeats']} passes.",
             "", "| checkout | compiled for | ms per image | words |", "|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['checkout']} | {row['cpu']} | {row['ms_per_image']:.2f} | "
                     f"{row['words']} |")
    same = len({row["words"] for row in table}) == 1
    lines += ["", "The same words in every run." if same else
              "**The words differ between runs.**", "",
              "Times are wall-clock on a shared machine: compare rows of one run.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_vocabulary_sample_arguments(parser)
    parser.add_argument("--cpus", nargs="+", default=["host", "haswell", "x86-64"])
    parser.add_argument("--source", type=Path, action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sources = args.source or [Path(__file__).resolve().parent.parent]
    meta = run_metadata("scan_cpus.py", argv)
    vocabulary, images = vocabulary_sample(args)
    runs = {(checkout_name(s), cpu): [] for s in sources for cpu in args.cpus}
    words = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "params.json").write_text(json.dumps(vocabulary.get_params()))
        np.savez(folder / "state.npz", **vocabulary.get_state())
        np.savez(folder / "descriptors.npz", **{str(i): d for i, d in enumerate(images)})
        for round_ in range(args.rounds):
            for n, source in enumerate(sources):
                for cpu in args.cpus:
                    key = (checkout_name(source), cpu)
                    result = run_one(folder, source, cpu, args.repeats,
                                     folder / f"cache-{n}-{cpu}")
                    runs[key].append(result["ms_per_image"])
                    words[key] = result["words"]
                    print(round_, key, result, flush=True)
    table = [{"checkout": checkout, "cpu": cpu,
              "ms_per_image": round(float(np.median(times)), 3),
              "words": words[(checkout, cpu)]}
             for (checkout, cpu), times in runs.items()]
    meta.update(queries=len(images), n_words=vocabulary.n_words,
                n_probe=vocabulary.n_probe, rounds=args.rounds, repeats=args.repeats,
                descriptors_per_image=float(np.mean([len(d) for d in images])))
    write_results(RESULTS, "scan_cpus", {**meta, "runs": table}, report(meta, table))


if __name__ == "__main__":
    main()
