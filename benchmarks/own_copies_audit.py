"""Check the labels of Caltech-101's own copies with their pixels, at full size.

Every pair of Caltech-101 files in a group that ``caltech101_own_copies.json``
looked at, or in a group of different pictures that ``duplicates.py`` found
(results/duplicates*.json), is aligned by a homography fitted to their SIFT
matches (Lowe's ratio test, RANSAC; the first image's mirror tried too), its
colours matched to the second's by one linear map per channel fitted on the
overlap. The measure is the share of the overlap's pixels that still differ by
more than ``DIFFERS`` grey levels. Pairs where that and the labels disagree are
listed for a person to look at: the check is an aid (a caption, a frame or a
recolouring makes pixels differ; two shots a second apart can agree), and the
labels stay a judgement by eye.

    python benchmarks/own_copies_audit.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
from _common import run_metadata, write_results

HERE = Path(__file__).resolve().parent
OWN_COPIES = HERE / "caltech101_own_copies.json"
RESULTS = HERE / "results"
#: A pixel differs where its colour, matched, is further than this from the
#: other image's (mean over the channels, of 255).
DIFFERS = 25.0
#: Flagged: labelled one picture but more than ``LABELLED_DIFFER`` of the
#: overlap differs, or not labelled but at most ``UNLABELLED_AGREE`` differs
#: over an overlap of at least ``MIN_OVERLAP`` of the smaller image, aligned by
#: at least ``MIN_INLIERS`` matches.
LABELLED_DIFFER = 0.3
UNLABELLED_AGREE = 0.1
MIN_OVERLAP = 0.5
MIN_INLIERS = 20


def described(image: np.ndarray):
    """``(keypoints, descriptors)`` of OpenCV's SIFT on a colour image: the check
    is independent of cvsearch's own extraction and verification, so that it
    does not share their blind spots."""
    return cv2.SIFT_create(4000).detectAndCompute(
        cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), None)


def aligned_difference(first, second) -> dict:
    """How two images differ once ``first`` (or its mirror) is warped onto
    ``second``: the inliers, the overlap's share of the smaller image, and the
    share of the overlap's pixels that differ (1.0, with 0 inliers, where no
    homography aligns them).

    Parameters
    ----------
    first, second : (image, plain, mirrored)
        A colour image (h, w, 3) uint8, :func:`described` of it and of its
        mirror image (the second's mirror is not used).
    """
    (first, *views), (second, found, _) = first, second
    best = {"inliers": 0, "overlap": 0.0, "differs": 1.0, "mirrored": False}
    for mirrored, (points, descriptors) in zip((False, True), views):
        image = first[:, ::-1].copy() if mirrored else first
        if descriptors is None or found[1] is None or len(points) < 4 or len(found[0]) < 4:
            continue
        pairs = cv2.BFMatcher().knnMatch(descriptors, found[1], k=2)
        good = [m for m, *rest in pairs if rest and m.distance < 0.8 * rest[0].distance]
        if len(good) < 8:
            continue
        source = np.float32([points[m.queryIdx].pt for m in good])
        target = np.float32([found[0][m.trainIdx].pt for m in good])
        warp, inlying = cv2.findHomography(source, target, cv2.RANSAC, 3.0)
        if warp is None or int(inlying.sum()) <= best["inliers"]:
            continue
        height, width = second.shape[:2]
        warped = cv2.warpPerspective(image, warp, (width, height)).astype(np.float64)
        inside = cv2.warpPerspective(np.ones(image.shape[:2], np.uint8), warp,
                                     (width, height))
        inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
        if inside.sum() < 100:
            continue
        matched = np.empty((int(inside.sum()), 3))
        for channel in range(3):
            x, y = warped[..., channel][inside], second[..., channel][inside].astype(float)
            gain, offset = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, y.mean())
            matched[:, channel] = np.abs(gain * x + offset - y)
        smaller = min(first.shape[0] * first.shape[1], height * width)
        best = {"inliers": int(inlying.sum()),
                "overlap": round(float(min(1.0, inside.sum() / smaller)), 3),
                "differs": round(float((matched.mean(axis=1) > DIFFERS).mean()), 3),
                "mirrored": mirrored}
    return best


def pairs_to_check(results: Path) -> list[tuple[str, str]]:
    """The pairs of Caltech-101 files (class/file) of every group looked at and
    every group of different pictures found."""
    labels = json.loads(OWN_COPIES.read_text())
    groups = [list(g) for g in labels["looked_at"]]
    for name in ("duplicates", "duplicates_clean"):
        path = results / f"{name}.json"
        if path.exists():
            for row in json.loads(path.read_text())["rows"]:
                groups += row.get("different_pictures") or []
    pairs = {tuple(sorted(p)) for g in groups for p in itertools.combinations(set(g), 2)}
    return sorted(pairs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    meta = run_metadata("own_copies_audit.py", argv)
    root = args.data / "caltech101" / "101_ObjectCategories"
    labels = json.loads(OWN_COPIES.read_text())
    same = {}
    for number, labelled in enumerate(labels["copies"]):
        same.update((name, number) for name in labelled)
    seen = {}

    def image_of(name):
        """The file read and described once, however many pairs hold it."""
        if name not in seen:
            image = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"{root / name}: cannot be read as an image")
            seen[name] = (image, described(image), described(image[:, ::-1].copy()))
        return seen[name]

    rows = []
    for first, second in pairs_to_check(RESULTS):
        labelled = first in same and same.get(first) == same.get(second)
        measured = aligned_difference(image_of(first), image_of(second))
        flagged = (measured["differs"] > LABELLED_DIFFER if labelled else
                   measured["inliers"] >= MIN_INLIERS
                   and measured["overlap"] >= MIN_OVERLAP
                   and measured["differs"] <= UNLABELLED_AGREE)
        rows.append({"pair": [first, second], "labelled_one_picture": labelled,
                     **measured, "flagged": bool(flagged)})
    results = {**meta, "pairs": rows, "revised": labels.get("revised"),
               "thresholds": {"differs": DIFFERS, "labelled_differ": LABELLED_DIFFER,
                              "unlabelled_agree": UNLABELLED_AGREE,
                              "min_overlap": MIN_OVERLAP, "min_inliers": MIN_INLIERS}}
    write_results(RESULTS, "own_copies_audit", results, report(results))


def report(r: dict) -> str:
    rows = r["pairs"]
    labelled = [p for p in rows if p["labelled_one_picture"]]
    flagged = [p for p in rows if p["flagged"]]
    lines = ["# Caltech-101's own copies: the labels against their pixels", "",
             f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
             f"{len(rows)} pairs of Caltech-101 files, {len(labelled)} of them labelled "
             "one picture. Each pair aligned at full size (SIFT, RANSAC homography, "
             "mirror tried), colours matched per channel; \"differs\" is the share of "
             f"the overlap's pixels further than {r['thresholds']['differs']:g} grey "
             "levels apart. Flagged for a look: labelled one picture with more than "
             f"{r['thresholds']['labelled_differ']:g} differing, or not labelled with "
             f"at most {r['thresholds']['unlabelled_agree']:g} differing over at least "
             f"{r['thresholds']['min_overlap']:g} of the smaller image "
             f"({r['thresholds']['min_inliers']}+ inliers).", "",
             "| pair | labelled one picture | inliers | overlap | differs | mirrored |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p['pair'][0]}, {p['pair'][1]} | "
              f"{'yes' if p['labelled_one_picture'] else 'no'} | {p['inliers']} | "
              f"{p['overlap']} | {p['differs']} | {'yes' if p['mirrored'] else 'no'} |"
              for p in flagged]
    if r.get("revised"):
        lines += ["", "What was looked at, and decided (`caltech101_own_copies.json`):", "",
                  r["revised"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
