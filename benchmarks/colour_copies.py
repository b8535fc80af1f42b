"""Copies whose colours were edited: does the copy decision still hold?

``copies.py``'s twelve attacks change grey levels by one map for the whole picture
(contrast, gamma, grey). Photo filters change them by colour: a hue turned makes
blue areas brighter and yellow ones darker. This indexes the 150 originals of
``copies.py`` (seed 0) alone and queries each with colour edits of it, with the
decisions (``rerank=20``): the share decided "copy", and the share whose pixels
agree (``evidence.agreement >= COPY_AGREEMENT``) among those that are the same
object.

    python benchmarks/colour_copies.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata  # noqa: E402
from copies import choose_images  # noqa: E402

from cvsearch import Index  # noqa: E402
from cvsearch.decision import COPY_AGREEMENT  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def turn_hue(image, degrees: int):
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + degrees // 2) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def saturation(image, factor: float):
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float64)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def sepia(image):
    tone = np.array([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349],
                     [0.189, 0.769, 0.393]])  # BGR rows
    return np.clip(image.astype(np.float64) @ tone.T, 0, 255).astype(np.uint8)


EDITS = {
    "hue +90": lambda image: turn_hue(image, 90),
    "hue +180": lambda image: turn_hue(image, 180),
    "saturation x2": lambda image: saturation(image, 2.0),
    "saturation x0.3": lambda image: saturation(image, 0.3),
    "sepia": sepia,
    "red and blue swapped": lambda image: np.ascontiguousarray(image[..., ::-1]),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--rerank", type=int, default=20)
    args = parser.parse_args(argv)
    meta = run_metadata("colour_copies.py", argv)
    selection = argparse.Namespace(seed=0, originals=150, negatives=0, distractors=0)
    originals, _, _ = choose_images(args.data, selection)
    colourful = [p for p in originals if (image := cv2.imread(p)) is not None
                 and image.ndim == 3 and np.ptp(image.astype(np.int64), axis=2).mean() > 8]
    index = Index.build(originals, n_words=args.n_words, random_state=0)
    rows = []
    for name, edit in EDITS.items():
        copies = objects = agreeing = 0
        for path in colourful:
            original = index.id_of(path)
            _, ids, evidence = index.query(edit(cv2.imread(path)), k=3,
                                           rerank=args.rerank, return_evidence=True)
            at = np.flatnonzero(ids == original)
            if not len(at):
                continue
            copies += bool(evidence.copy[at[0]])
            if evidence.same_object[at[0]]:
                objects += 1
                agreeing += bool(evidence.agreement[at[0]] >= COPY_AGREEMENT)
        rows.append({"edit": name, "copies": len(colourful),
                     "decided_copy": round(copies / len(colourful), 3),
                     "same_object": objects,
                     "pixels_agree": round(agreeing / max(objects, 1), 3)})
        print(json.dumps(rows[-1]), flush=True)
    results = {**meta, "rows": rows, "originals": len(originals),
               "colourful": len(colourful), "args": vars(args) | {"data": str(args.data)}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "colour_copies.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Copies whose colours were edited", "",
             f"`{results['command']}` on {results['date']} ({results['machine']}).", "",
             f"The {len(colourful)} colour photos among the 150 originals of "
             "`copies.py` (seed 0), indexed alone with "
             f"{args.n_words:,} words; each queried with each edit "
             f"(`rerank={args.rerank}`). \"Pixels agree\": among the copies "
             "decided the same object, the share whose aligned thumbnails agree "
             f"(>= {COPY_AGREEMENT:.2f}).", "",
             "| edit | decided copy | same object | pixels agree |",
             "|---|---|---|---|"]
    lines += [f"| {r['edit']} | {r['decided_copy']:.3f} | {r['same_object']} | "
              f"{r['pixels_agree']:.3f} |" for r in rows]
    (RESULTS / "colour_copies.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "colour_copies.md").read_text())


if __name__ == "__main__":
    main()
