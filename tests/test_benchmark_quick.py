"""CI smoke test of the Caltech-101 benchmark in quick mode (10 classes).

It runs the rows it checks (SIFT, dense RootSIFT, the CNN): RootSIFT and ORB
go through the same code with another extractor, which other tests cover, and
would double the suite's longest test.
"""

import json
import subprocess
import sys
from pathlib import Path

from conftest import CALTECH, requires

ROOT = Path(__file__).resolve().parents[1]


@requires(CALTECH)
def test_quick_benchmark_runs_and_ranks_the_methods(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "caltech101.py"), "--data",
         str(CALTECH.parent), "--quick", "--features", "sift", "--output",
         str(tmp_path)],
        # a generous bound: it checks what the run produced, not how fast it was
        capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "caltech101_quick.json").read_text())
    results = report["results"]
    assert report["meta"]["n_classes"] == 10
    assert report["meta"]["command"].endswith("--quick --features sift --seed 0")
    assert not any(name.startswith(("rootsift", "orb")) for name in results)
    best_dense = report["meta"]["best_classical"]
    # the levers pay, and the CNN is far ahead on categories
    assert results[best_dense]["mAP"] > results["sift-1000"]["mAP"]
    assert results["cnn-exact"]["mAP"] > results[best_dense]["mAP"]
    assert results["cnn-annoy"]["share_of_exact_mAP"] >= 0.97
    assert len(results["cnn-exact"]["per_class_mAP"]) == 10
    for name in ("caltech101_quick.md", "caltech101_quick_pr.png",
                 "caltech101_quick_tsne.png", "caltech101_quick_per_class.png"):
        assert (tmp_path / name).stat().st_size > 0
