"""Reading images from disk, defensively (OpenCV fails silently on bad files)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np


def read_image(path: str | os.PathLike, *, grayscale: bool = True) -> np.ndarray:
    """Read an image file.

    The file is decoded from bytes (``cv2.imdecode``) so that non-ASCII paths work on
    every platform; EXIF orientation is applied.

    Parameters
    ----------
    path : str or os.PathLike
        An image file in a format OpenCV reads (JPEG, PNG, TIFF, WebP, BMP, ...).
    grayscale : bool
        Return a grayscale image if True, else a BGR colour image.

    Returns
    -------
    image : ndarray of shape (H, W) if grayscale else (H, W, 3), uint8

    Raises
    ------
    TypeError
        If ``path`` is not a string or path.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a directory, is empty, or cannot be decoded (not an image,
        truncated, or an unsupported format).
    """
    import cv2

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path to an image, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "No such image file", str(path))
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file; pass image files")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-copy or remove the file")
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags)
    if image is None or image.size == 0:
        raise ValueError(
            f"cannot decode {path}: it is not an image, is truncated, or its format "
            "is not supported by OpenCV; re-copy, convert or remove the file"
        )
    return image
