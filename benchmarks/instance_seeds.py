"""How much one draw of distractors and vocabulary moves instance search: the
phone photos' top-1 over several seeds, with the keypoint budget shared among
4 x 4 cells (``budget_grid=4``, the default) and the strongest anywhere (1).

Each seed draws other Caltech-101 distractors (2,000) and trains its own
20,000-word RootSIFT vocabulary, as ``instance.py`` and ``keypoint_budget.py``
do with seed 0; the search is the library's default (re-rank 100). A top-1 on
200 photos is one such draw: compare settings by their means and spread.

Usage::

    python benchmarks/instance_seeds.py --data ../shared/data --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata, write_results  # noqa: E402
from keypoint_budget import GRIDS, instance_part  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--instance-distractors", type=int, default=2000)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    meta = run_metadata("instance_seeds.py", argv)
    rows = []
    for seed in args.seeds:
        for grid in GRIDS:
            run = argparse.Namespace(**vars(args), seed=seed)
            row = {"seed": seed, "budget_grid": grid, **instance_part(run, grid)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = {**meta, "rows": rows,
               "args": vars(args) | {"data": str(args.data)}}
    write_results(RESULTS, "instance_seeds", results, report(results))


def report(r: dict) -> str:
    lines = ["# Instance search over seeds", "",
             f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| seed | budget_grid | top-1 | top-1 Canon / Droid / E63 / Palm | top-10 "
             "| bag-of-words top-10 |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        phones = " / ".join(f"{v:.2f}" for v in row["top1_per_phone"].values())
        lines.append(f"| {row['seed']} | {row['budget_grid']} | {row['top1']:.3f} | "
                     f"{phones} | {row['top10']:.3f} | {row['bow_top10']:.3f} |")
    lines += ["", "| budget_grid | mean top-1 | lowest | highest |", "|---|---|---|---|"]
    for grid in GRIDS:
        top1 = [row["top1"] for row in r["rows"] if row["budget_grid"] == grid]
        lines.append(f"| {grid} | {np.mean(top1):.3f} | {min(top1):.3f} | "
                     f"{max(top1):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
