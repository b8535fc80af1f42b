"""The test suite's time, on an idle machine and on a busy one (issue 22).

Runs the README's test command (``python -m pytest -q``, with ``-p
no:cacheprovider`` so as to leave no cache in the tree) twice from the repository
root: alone, then beside a load on every core, a loop of quick
Caltech-101 runs (``benchmarks/caltech101.py --quick``, all cores each), as a
user's other work or another CI job would be. Writes the wall and CPU minutes
of each (CPU: the suite's processes, user + system) and its outcome.

    python benchmarks/suite_time.py --data ../shared/data

The load needs the Caltech-101 images; ``--no-busy`` measures the idle run only.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import run_metadata, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TARGET_BUSY_MINUTES = 10.0


class Load:
    """Quick Caltech-101 runs, one after another, until stopped: a shell loop in
    its own process group, so that the runs' CPU time is not counted as the
    suite's (this process waits for the loop only after the suite's count)."""

    def __init__(self, data: Path, scratch: Path):
        run = " ".join(map(shlex.quote, [
            sys.executable, str(ROOT / "benchmarks" / "caltech101.py"), "--data",
            str(data), "--quick", "--output", str(scratch / "results")]))
        self.finished = scratch / "finished"
        self.script = (f"while true; do {run} >/dev/null 2>&1 && "
                       f"echo run >> {shlex.quote(str(self.finished))}; done")
        self.process = None

    @property
    def runs(self) -> int:
        """Quick runs finished so far."""
        return len(self.finished.read_text().split()) if self.finished.exists() else 0

    def __enter__(self):
        self.process = subprocess.Popen(["bash", "-c", self.script],
                                        start_new_session=True)
        return self

    def __exit__(self, *exc):
        os.killpg(self.process.pid, signal.SIGKILL)  # the loop, its run and workers
        self.process.wait()


def run_suite() -> dict:
    """The README's test command (leaving no cache), timed: wall and CPU minutes,
    and its summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {kind: int(n) for n, kind in
              re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    return {"wall_minutes": round(wall / 60, 2), "cpu_minutes": round(cpu / 60, 2),
            "returncode": done.returncode, "summary": summary, **counts,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def markdown(meta: dict, runs: dict) -> str:
    lines = ["# The test suite's time, idle and busy", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
             "The README's test command, `python -m pytest -q` (pytest-xdist on every "
             "core; here with `-p no:cacheprovider`, to leave no cache in the tree), "
             "from the repository root; busy: beside a loop of quick Caltech-101 "
             "runs (`benchmarks/caltech101.py --quick`, every core each), started "
             f"{meta['load_head_start_s']} s before the suite. CPU minutes are the "
             "suite's own processes (user + system).", "",
             "| machine | wall minutes | CPU minutes | outcome | target |",
             "|---|---|---|---|---|"]
    for name, run in runs.items():
        target = (f"< {TARGET_BUSY_MINUTES:g} min: "
                  f"{'met' if run['wall_minutes'] < TARGET_BUSY_MINUTES else '**not met**'}"
                  if name == "busy" else "")
        lines.append(f"| {name} | {run['wall_minutes']} | {run['cpu_minutes']} | "
                     f"{run['summary']} | {target} |")
    if "busy" in runs:
        lines += ["", f"Quick Caltech-101 runs finished during the busy run: "
                      f"{runs['busy']['load_runs']}."]
    lines += ["", "Wall-clock on a shared machine: the two rows are one run's; compare "
                  "them with each other, not with another day's."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding caltech101/101_ObjectCategories (the load)")
    parser.add_argument("--no-busy", action="store_true",
                        help="measure the idle run only")
    parser.add_argument("--head-start", type=float, default=30.0,
                        help="seconds the load runs before the busy suite starts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.no_busy and args.data is None:
        parser.error("the busy run needs --data (or pass --no-busy)")
    meta = {**run_metadata("suite_time.py", argv), "load_head_start_s": args.head_start}
    runs = {"idle": run_suite()}
    print(f"idle: {runs['idle']}", file=sys.stderr)
    if not args.no_busy:
        with tempfile.TemporaryDirectory() as scratch, \
                Load(args.data.resolve(), Path(scratch)) as load:
            time.sleep(args.head_start)
            runs["busy"] = run_suite()
            runs["busy"]["load_runs"] = load.runs
        print(f"busy: {runs['busy']}", file=sys.stderr)
    write_results(args.output, "suite_time", {"meta": meta, "runs": runs},
                  markdown(meta, runs))


if __name__ == "__main__":
    main()
