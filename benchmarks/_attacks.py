"""Copydays-style copies of an image: the edits people make to pictures they copy.

Each attack takes a BGR image (uint8) and a seeded generator and returns the
copy and how it is saved (".jpg" at quality 90 unless the attack says
otherwise). Copydays (Douze et al., CIVR 2009) has JPEG, crops and "strong"
edits (print-and-scan, paint); these are the twelve of issue 21, plus the saving
they imply.
"""

from __future__ import annotations

import cv2
import numpy as np


def jpeg10(image, rng):
    return image, ".jpg", 10


def quarter(image, rng):
    """A quarter of the pixels (half of each side)."""
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, width // 2), max(1, height // 2)),
                      interpolation=cv2.INTER_AREA), ".jpg", 90


def _crop(image, rng, area: float):
    height, width = image.shape[:2]
    side = np.sqrt(area)
    h, w = max(8, round(height * side)), max(8, round(width * side))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return image[top:top + h, left:left + w].copy(), ".jpg", 90


def crop50(image, rng):
    """50% of the area, anywhere."""
    return _crop(image, rng, 0.5)


def crop20(image, rng):
    """20% of the area, anywhere."""
    return _crop(image, rng, 0.2)


def rotate90(image, rng):
    return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), ".jpg", 90


def rotate20(image, rng):
    """20 degrees about the centre, on a canvas large enough for all of it."""
    height, width = image.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), 20.0, 1.0)
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    new_w, new_h = int(height * sin + width * cos), int(height * cos + width * sin)
    turn[0, 2] += new_w / 2 - width / 2
    turn[1, 2] += new_h / 2 - height / 2
    return cv2.warpAffine(image, turn, (new_w, new_h), borderValue=(255, 255, 255)), \
        ".jpg", 90


def mirror(image, rng):
    return image[:, ::-1].copy(), ".jpg", 90


def grey_contrast(image, rng):
    """Grey, contrast raised and a gamma."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    stretched = np.clip((grey - 0.5) * 1.6 + 0.5, 0, 1) ** 0.8
    return (stretched * 255).astype(np.uint8), ".jpg", 90


def overlay(image, rng):
    """A caption banner across the bottom and a logo in a corner."""
    copy = image.copy()
    height, width = copy.shape[:2]
    band = max(12, height // 7)
    copy[height - band:] = (copy[height - band:] * 0.3).astype(np.uint8)
    scale = max(0.4, width / 900)
    cv2.putText(copy, "BREAKING: copied picture 2026", (8, height - band // 3),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, round(2 * scale)))
    radius = max(8, min(height, width) // 10)
    centre = (width - radius - 6, radius + 6)
    cv2.circle(copy, centre, radius, (0, 0, 230), -1)
    cv2.putText(copy, "TV", (centre[0] - radius // 2, centre[1] + radius // 3),
                cv2.FONT_HERSHEY_SIMPLEX, radius / 25, (255, 255, 255), 2)
    return copy, ".jpg", 90


def screenshot(image, rng):
    """Pasted at 70% into a web page with a header, text and a side bar; PNG."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width * 0.7)), max(1, round(height * 0.7))),
                       interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    page_h, page_w = int(height * 1.3) + 80, int(width * 1.3) + 40
    page = np.full((page_h, page_w, 3), 250, np.uint8)
    page[:50] = (120, 60, 20)
    cv2.putText(page, "news.example.org", (10, 33), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2)
    top, left = 70, 20
    page[top:top + small.shape[0], left:left + small.shape[1]] = small
    for line in range(top + small.shape[0] + 20, page_h - 5, 18):
        words = int(rng.integers(3, 9))
        cv2.putText(page, " ".join(["lorem ipsum"] * words)[:page_w // 9], (left, line),
                    cv2.FONT_HERSHEY_PLAIN, 1.0, (40, 40, 40), 1)
    bar = left + small.shape[1] + 10
    for row in range(top, top + small.shape[0], 40):
        cv2.rectangle(page, (bar, row), (page_w - 10, row + 30), (200, 200, 200), -1)
    return page, ".png", None


def perspective(image, rng):
    """Each corner moved inwards by up to 15% of the side: a photo at an angle."""
    height, width = image.shape[:2]
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    shift = rng.uniform(0, 0.15, (4, 2)) * [width, height]
    inwards = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    moved = (corners + inwards * shift).astype(np.float32)
    warp = cv2.getPerspectiveTransform(corners, moved)
    return cv2.warpPerspective(image, warp, (width, height),
                               borderValue=(255, 255, 255)), ".jpg", 90


def blur_noise(image, rng):
    """Gaussian blur (sigma 2) and Gaussian noise (sigma 10 grey levels)."""
    blurred = cv2.GaussianBlur(image, (0, 0), 2.0).astype(np.float32)
    noisy = blurred + rng.normal(0, 10, blurred.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), ".jpg", 90


ATTACKS = {f.__name__: f for f in (jpeg10, quarter, crop50, crop20, rotate90, rotate20,
                                   mirror, grey_contrast, overlay, screenshot,
                                   perspective, blur_noise)}


def make_copy(source, attack: str, target_stem, rng) -> str:
    """Write ``attack`` of the image file ``source`` to ``target_stem`` + its
    extension; returns the path."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{source}: cannot be read")
    copy, extension, quality = ATTACKS[attack](image, rng)
    path = f"{target_stem}{extension}"
    options = [cv2.IMWRITE_JPEG_QUALITY, quality] if extension == ".jpg" else []
    if not cv2.imwrite(path, copy, options):
        raise SystemExit(f"{path}: cannot be written")
    return path
