"""Edits of pictures that no threshold of the copy decision was chosen on.

``_attacks.py``'s twelve are issue 21's; the decision's round values were chosen
on copies of them (another seed than the benchmark's). These were written after
that, to see whether the decision holds for copies in general: frames, memes,
collages, stretching, watermarks, print and scan. Do not tune on them.
``thumbnail`` came later, with the search of small queries at twice their size
(``Features.finer``), after a one-off look at such thumbnails of another seed's
originals; its value (a quarter of ``max_side``) was not tuned on them.

Each takes a BGR image (uint8), a seeded generator and ``others`` (BGR images
that are not the picture, for collages) and returns the copy and how it is
saved (extension, JPEG quality or None).
"""

from __future__ import annotations

import cv2
import numpy as np


def frame(image, rng, others):
    """A coloured frame a tenth of the long side wide around the picture."""
    border = max(4, int(0.1 * max(image.shape[:2])))
    return cv2.copyMakeBorder(image, border, border, border, border,
                              cv2.BORDER_CONSTANT, value=(30, 120, 200)), ".jpg", 90


def stretch(image, rng, others):
    """Widened by 35% (the aspect ratio changed)."""
    height, width = image.shape[:2]
    return cv2.resize(image, (int(width * 1.35), height),
                      interpolation=cv2.INTER_AREA), ".jpg", 90


def third(image, rng, others):
    """A third of each side (a ninth of the pixels)."""
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, width // 3), max(1, height // 3)),
                      interpolation=cv2.INTER_AREA), ".jpg", 90


def _outlined(image, text, origin, scale):
    for colour, thickness in (((0, 0, 0), 6), ((255, 255, 255), 2)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_DUPLEX, scale, colour,
                    max(1, round(thickness * scale)))


def meme_text(image, rng, others):
    """White outlined captions written over the top and the bottom."""
    copy = image.copy()
    height, width = copy.shape[:2]
    scale = width / 330
    _outlined(copy, "ONE DOES NOT SIMPLY", (6, int(height * 0.14)), scale)
    _outlined(copy, "COPY A PICTURE", (6, int(height * 0.95)), scale)
    return copy, ".jpg", 90


def meme_bands(image, rng, others):
    """Black bands over the top and the bottom sixth, captioned: a third of the
    picture covered."""
    copy = image.copy()
    height, width = copy.shape[:2]
    band = height // 6
    copy[:band] = 0
    copy[-band:] = 0
    for y, text in ((band * 3 // 4, "WHEN YOU SEE IT"), (height - band // 4,
                                                          "NOBODY EXPECTS IT")):
        cv2.putText(copy, text, (5, y), cv2.FONT_HERSHEY_DUPLEX, width / 420,
                    (255, 255, 255), 2)
    return copy, ".jpg", 90


def caption_band(image, rng, others):
    """A white band with a caption added above the picture."""
    height, width = image.shape[:2]
    band = np.full((height // 4, width, 3), 255, np.uint8)
    cv2.putText(band, "me when the copy", (6, height // 6), cv2.FONT_HERSHEY_SIMPLEX,
                width / 400, (0, 0, 0), 2)
    return np.vstack([band, image]), ".jpg", 90


def collage(image, rng, others):
    """One of four tiles of a 2 x 2 collage with three other pictures."""
    height, width = image.shape[:2]
    tiles = [image] + [cv2.resize(other, (width, height)) for other in others[:3]]
    place = int(rng.integers(4))
    tiles[0], tiles[place] = tiles[place], tiles[0]
    return np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]), ".jpg", 90


def crop_rotate(image, rng, others):
    """The middle 60% x 70% turned by 10 degrees, its corners filled by
    reflection."""
    height, width = image.shape[:2]
    crop = image[int(0.2 * height):int(0.8 * height), int(0.15 * width):int(0.85 * width)]
    h, w = crop.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), -10, 1.0)
    return cv2.warpAffine(crop, turn, (w, h), borderMode=cv2.BORDER_REFLECT), ".jpg", 90


def sharpen_q50(image, rng, others):
    """Unsharp-masked, then JPEG quality 50."""
    blurred = cv2.GaussianBlur(image, (0, 0), 2)
    return cv2.addWeighted(image, 1.8, blurred, -0.8, 0), ".jpg", 50


def brighter(image, rng, others):
    """60 grey levels brighter, clipped."""
    return np.clip(image.astype(np.int16) + 60, 0, 255).astype(np.uint8), ".jpg", 90


def print_scan(image, rng, others):
    """Printed and scanned: each corner moved by up to 5% of the side, blurred,
    a colour cast and noise."""
    height, width = image.shape[:2]
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    moved = (corners + rng.uniform(-0.05, 0.05, (4, 2)) * [width, height]
             ).astype(np.float32)
    scanned = cv2.warpPerspective(image, cv2.getPerspectiveTransform(corners, moved),
                                  (width, height), borderValue=(240, 240, 235))
    scanned = (cv2.GaussianBlur(scanned, (0, 0), 1.0).astype(np.float32)
               * [0.9, 1.0, 1.1] + rng.normal(0, 4, scanned.shape))
    return np.clip(scanned, 0, 255).astype(np.uint8), ".jpg", 90


def picture_in_picture(image, rng, others):
    """Pasted whole into another picture twice its size."""
    height, width = image.shape[:2]
    canvas = cv2.resize(others[0], (2 * width, 2 * height))
    top, left = height // 3, width // 2
    canvas[top:top + height, left:left + width] = image
    return canvas, ".jpg", 90


def mirror_crop(image, rng, others):
    """The middle 70% of each side, mirrored."""
    height, width = image.shape[:2]
    crop = image[int(0.15 * height):int(0.85 * height),
                 int(0.15 * width):int(0.85 * width)]
    return np.ascontiguousarray(crop[:, ::-1]), ".jpg", 90


def watermark(image, rng, others):
    """A text watermark tiled over the whole picture at 40% opacity."""
    height, width = image.shape[:2]
    layer = image.copy()
    for y in range(20, height, 45):
        for x in range(-40 + (y % 90), width, 160):
            cv2.putText(layer, "(c) stock", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                        (255, 255, 255), 2)
    return cv2.addWeighted(image, 0.6, layer, 0.4, 0), ".jpg", 90


def thumbnail(image, rng, others):
    """A fifth of each side (a thumbnail), PNG."""
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, width // 5), max(1, height // 5)),
                      interpolation=cv2.INTER_AREA), ".png", None


def half_q30(image, rng, others):
    """Half of each side, JPEG quality 30."""
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, width // 2), max(1, height // 2)),
                      interpolation=cv2.INTER_AREA), ".jpg", 30


MORE_ATTACKS = {f.__name__: f for f in (
    frame, stretch, third, meme_text, meme_bands, caption_band, collage, crop_rotate,
    sharpen_q50, brighter, print_scan, picture_in_picture, mirror_crop, watermark,
    half_q30, thumbnail)}
