"""Reading images from disk, defensively (OpenCV fails silently on bad files)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from cvsearch._validation import check_color_image


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


def read_color_image(image) -> np.ndarray:
    """A path or an image array as a BGR uint8 image.

    Parameters
    ----------
    image : str, os.PathLike or ndarray
        A file (see :func:`read_image`), or an array of shape (H, W), (H, W, 3)
        BGR or (H, W, 4) BGRA, uint8 or uint16.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    if isinstance(image, np.ndarray):
        return check_color_image(image)
    return read_image(image, grayscale=False)


# Leading bytes of the formats OpenCV decodes: recognising images by content finds
# files with odd or missing extensions (Caltech-101's BACKGROUND_Google/tmp is a
# JPEG named "tmp") and skips non-images cheaply, without decoding them.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF
    b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51",  # JPEG 2000
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # PBM, PGM, PPM
)


def looks_like_image(path: str | os.PathLike) -> bool:
    """Whether a file starts like an image format OpenCV reads (by its bytes, not
    its name). False for unreadable files; a True file may still be truncated."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_SIGNATURES)


def find_images(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Image files under ``folder``, recursively, recognised by content.

    Hidden files and folders (names starting with ".") are left out.

    Returns
    -------
    images : list of str
        Sorted paths (``folder`` joined with the relative path).
    others : list of str
        Sorted paths of the other files, which are not images.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist; NotADirectoryError if it is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(errno.ENOENT, "No such folder", str(folder))
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a folder of images", str(folder))
    images, others = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            (images if looks_like_image(path) else others).append(path)
    return sorted(images), sorted(others)
