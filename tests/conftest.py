"""Shared fixtures: seeded synthetic textured images and their warped copies."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: the same examples on every CI run (a failure there is reproducible);
# fresh random ones on a developer's machine. Neither fails a test for taking
# long, to run or to draw its examples: that depends on how busy the machine is.
_UNTIMED = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, print_blob=True, **_UNTIMED)
settings.register_profile("local", **_UNTIMED)
settings.load_profile("ci" if os.environ.get("CI") else "local")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UKBENCH = SHARED / "ukbench56"
CALTECH = SHARED / "caltech101" / "101_ObjectCategories"


def textured_image(seed: int, size: int = 480) -> np.ndarray:
    """A grayscale uint8 image full of corners and blobs, different for each seed.

    Returns
    -------
    ndarray of shape (size, size), uint8
    """
    rng = np.random.default_rng(seed)
    noise = rng.random((size // 16, size // 16)).astype(np.float32)
    image = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * 120 + 60
    image = image.astype(np.uint8)
    for _ in range(60):
        color = int(rng.integers(0, 256))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(4, size // 10))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(image, (x, y), r, color, -1)
        elif kind == 1:
            cv2.rectangle(image, (x, y), (x + r, y + int(rng.integers(4, 40))), color, -1)
        else:
            points = rng.integers(-r, r, (5, 2)) + [x, y]
            cv2.fillPoly(image, [points.astype(np.int32)], color)
    return cv2.GaussianBlur(image, (3, 3), 0)


def homography(shape, rotation=0.0, scale=1.0, perspective=0.0):
    """A homography about the image centre, and the canvas size that holds the result.

    Returns
    -------
    H : ndarray of shape (3, 3), float64
    size : (width, height) of the warped image
    """
    h, w = shape[:2]
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    rot = cv2.getRotationMatrix2D((0, 0), rotation, scale)
    H = np.vstack([rot, [perspective / w, perspective / h, 1]]) @ centre
    corners = cv2.perspectiveTransform(
        np.float32([[0, 0], [w, 0], [w, h], [0, h]])[None], H)[0]
    lo, hi = corners.min(0), corners.max(0)
    H = np.array([[1, 0, -lo[0]], [0, 1, -lo[1]], [0, 0, 1]]) @ H
    return H, (int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1])))


def warped(image, rotation=0.0, scale=1.0, perspective=0.0):
    """``image`` warped by :func:`homography`; returns (warped image, H)."""
    H, size = homography(image.shape, rotation, scale, perspective)
    return cv2.warpPerspective(image, H, size, borderValue=128), H


@pytest.fixture(scope="session")
def images():
    """Twelve distinct textured images, 480 x 480, uint8."""
    return [textured_image(seed) for seed in range(12)]


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, images):
    """The twelve images written as PNG files; returns their paths (str)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(images):
        path = folder / f"texture_{i:02d}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def trained_index(image_files):
    """An index of the twelve image files with a 400-word vocabulary (shared: do
    not modify it in a test; copy it with save/load or build another)."""
    from cvsearch import FeatureExtractor, Index

    return Index.build(image_files, FeatureExtractor("sift", max_side=1024),
                       n_words=400, random_state=0)


def requires(path: Path):
    return pytest.mark.skipif(
        not path.is_dir(),
        reason=f"real-data test: {path} is absent (it ships in the project's shared "
               "data folder beside the repository)")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux's /proc; a zombie has ended, it only
    waits for its parent to reap it). Any of its threads counts: the main thread
    can be a zombie while another still tears the process down, holding its
    files (a listening socket) for a while yet."""
    from pathlib import Path

    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for thread in threads:
        try:
            if (thread / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            pass  # this thread has ended since
    return False
