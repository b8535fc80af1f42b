"""Input checks shared by every public entry point (private)."""

from __future__ import annotations

import numbers

import numpy as np


def check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


#: The largest value OpenCV takes where it takes a C int (a count, a size).
C_INT_MAX = 2**31 - 1


def check_int(value, name: str, *, minimum: int, hint: str = "",
              maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= ``minimum``
    (and <= ``maximum``, if given).

    Raises
    ------
    TypeError
        If ``value`` is not an integer (bools are rejected too).
    ValueError
        If ``value < minimum`` or ``value > maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        message = f"{name}={value} is out of range; it must be {bounds}"
        raise ValueError(f"{message}. {hint}" if hint else message)
    return int(value)


def check_float(value, name: str, *, minimum: float, maximum: float = np.inf) -> float:
    """Return ``value`` as a float in ``[minimum, maximum]``, or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return float(value)


def check_n_jobs(n_jobs) -> int:
    """``n_jobs`` as joblib takes it here: >= 1 workers, or -1 for all cores."""
    n_jobs = check_int(n_jobs, "n_jobs", minimum=-1,
                       hint="use 1 for serial, -1 for all cores")
    if n_jobs == 0:
        raise ValueError("n_jobs must be >= 1 or -1 (all cores), got 0")
    return n_jobs


def check_choice(value, name: str, choices) -> str:
    """Return ``value`` if it is one of ``choices`` (strings), or raise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}")
    return value


def _checked_uint8(image, name: str) -> np.ndarray:
    """A checked image array as uint8, of shape (H, W), (H, W, 3) or (H, W, 4)."""
    import cv2

    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array or a path, got {type(image).__name__}"
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(
            f"{name} has dtype {image.dtype}; cvsearch takes uint8 or uint16 images. "
            "Convert floats in [0, 1] with (image * 255).round().astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(
            f"{name} has shape {image.shape}; expected (H, W) grayscale, "
            "(H, W, 3) BGR or (H, W, 4) BGRA"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    return np.ascontiguousarray(image)


def check_image(image, name: str = "image") -> np.ndarray:
    """Check an image array and return it as a 2-D grayscale uint8 array.

    Parameters
    ----------
    image : ndarray of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 or uint16
        Grayscale, BGR or BGRA (OpenCV channel order). 16-bit images are scaled to
        8 bits (65535 -> 255).
    name : str
        How to call the argument in error messages.

    Returns
    -------
    gray : ndarray of shape (H, W), uint8
    """
    import cv2

    image = _checked_uint8(image, name)
    if image.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        image = cv2.cvtColor(image, code)
    return image


def check_color_image(image, name: str = "image") -> np.ndarray:
    """:func:`check_image`, but return a BGR colour image.

    Returns
    -------
    bgr : ndarray of shape (H, W, 3), uint8
    """
    import cv2

    image = _checked_uint8(image, name)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image
