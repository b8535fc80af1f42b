"""Tampering detection of a saved index, measured: flip one byte, or cut the file,
at regular positions of every file of an index folder, load, and count what
happens.

Each mutated folder must either be refused with a ValueError that names one of its
files, or load to the identical index (same bytes when saved again): a mutation
that touched nothing that is read (the whitespace of a JSON file). Anything else
(another exception, or a load that differs) is a failure. The hypothesis tests in
tests/test_properties.py draw random mutations; this script walks the files.

    python benchmarks/tamper.py --step 7

Writes benchmarks/results/tamper.md and tamper.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

from cvsearch import FeatureExtractor, Index

RESULTS = Path(__file__).resolve().parent / "results"


def texture(seed: int, size: int = 128) -> np.ndarray:
    """Blurred noise with blocks: a small image with corners for SIFT."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size // 4, size // 4), dtype=np.uint8)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)


def saved_bytes(index: Index, folder: Path) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    index.save(folder)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if not p.name.startswith(".")}  # the (empty) writer lock file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=7,
                        help="mutate every STEP-th byte of each file")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cvsearch-tamper-"))
    started = time.perf_counter()
    try:
        images = [texture(seed) for seed in range(args.images)]
        index = Index.build(images, FeatureExtractor("sift"), n_words=40,
                            random_state=0,
                            names=[f"image {i}" for i in range(args.images)])
        original = work / "original"
        reference = saved_bytes(index, original)
        files = {p.name: p.read_bytes() for p in sorted(original.iterdir())
                 if not p.name.startswith(".")}
        rows = []
        for name, content in files.items():
            counts = {"refused, file named": 0, "identical": 0, "other": 0}
            failures = []
            for position in range(0, len(content), args.step):
                for action in ("flip", "cut"):
                    if action == "flip":
                        changed = bytearray(content)
                        changed[position] ^= 0xFF
                    else:
                        changed = content[:position]
                    folder = work / "mutated"
                    shutil.rmtree(folder, ignore_errors=True)
                    shutil.copytree(original, folder)
                    (folder / name).write_bytes(bytes(changed))
                    try:
                        loaded = Index.load(folder)
                        loaded.check_integrity()  # the checks load leaves for first use
                    except ValueError as error:
                        if any(f in str(error) for f in files):
                            counts["refused, file named"] += 1
                            continue
                        outcome = f"ValueError naming no file: {error}"
                    except Exception as error:  # noqa: BLE001 - counted as failure
                        outcome = f"{type(error).__name__}: {error}"
                    else:
                        if saved_bytes(loaded, work / "again") == reference:
                            counts["identical"] += 1
                            continue
                        outcome = "loaded a different index"
                    counts["other"] += 1
                    failures.append(f"{action} at {position}: {outcome}"[:300])
            rows.append({"file": name, "bytes": len(content),
                         "mutations": sum(counts.values()), **counts,
                         "failures": failures[:10]})
            print(f"{name}: {counts}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    total = {key: sum(r[key] for r in rows) for key in
             ("mutations", "refused, file named", "identical", "other")}
    meta = {"command": "python benchmarks/tamper.py " + " ".join(argv or sys.argv[1:]),
            "date": date.today().isoformat(), "machine": f"{platform.machine()}, "
            f"{platform.system()}, Python {platform.python_version()}",
            "seconds": round(seconds, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tamper.json").write_text(json.dumps(
        {**meta, "step": args.step, "total": total, "files": rows}, indent=1) + "\n")
    lines = [
        "# Tampering detection of a saved index", "",
        f"`{meta['command']}` on {meta['date']} ({meta['machine']}; "
        f"{meta['seconds']} s).", "",
        f"An index of {args.images} synthetic images (SIFT, 40 words), saved; at "
        f"byte positions 0, {args.step}, {2 * args.step}, ... of each file, one "
        "folder with that byte flipped and one with the file cut there, each "
        "loaded with `Index.load` and checked with `check_integrity()` (the keypoint "
        "arrays' hashes, which a loaded index otherwise checks on first use).", "",
        "| file | bytes | mutations | refused, file named | identical | other |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        name = r["file"].rsplit("-", 1)[0] if "-" in r["file"] else r["file"]
        lines.append(f"| {name} | {r['bytes']:,} | {r['mutations']:,} | "
                     f"{r['refused, file named']:,} | {r['identical']:,} | "
                     f"{r['other']} |")
    lines += [f"| **all** | | {total['mutations']:,} | "
              f"{total['refused, file named']:,} | {total['identical']:,} | "
              f"{total['other']} |", "",
              "\"identical\": the mutation touched nothing that is read (whitespace "
              "of a JSON file), and the index loaded saves to the same bytes. "
              "\"other\" would be a crash, an exception other than ValueError, a "
              "message naming no file, or a different index loaded."]
    (RESULTS / "tamper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if total["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
