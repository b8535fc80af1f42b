"""Stage 1: local features (SIFT, RootSIFT, ORB) with their keypoint geometry."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from cvsearch._validation import check_choice, check_image, check_int
from cvsearch.io import read_image

METHODS = {"sift": 128, "rootsift": 128, "orb": 32}


class Features(NamedTuple):
    """Local features of one image.

    Attributes
    ----------
    keypoints : ndarray of shape (n_keypoints, 4), float32
        ``(x, y, size, angle)`` per keypoint, in OpenCV order: x is the column and y
        the row, in pixels of the original (not downscaled) image; angle in degrees.
    descriptors : ndarray of shape (n_keypoints, dim)
        float32 with dim 128 for SIFT and RootSIFT, uint8 with dim 32 (256 bits)
        for ORB. An image without keypoints gives ``(0, dim)``.
    image_shape : tuple of int
        ``(height, width)`` of the original image, in pixels.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_shape: tuple


def root_sift(descriptors: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """RootSIFT: L1-normalise each SIFT descriptor, then take the square root.

    Comparing RootSIFT vectors with the Euclidean distance is comparing the original
    ones with the Hellinger kernel (Arandjelovic & Zisserman, "Three things everyone
    should know to improve object retrieval", CVPR 2012).

    Parameters
    ----------
    descriptors : ndarray of shape (n, 128), float32
    eps : float
        Added to the L1 norm so an all-zero descriptor stays zero instead of NaN.

    Returns
    -------
    ndarray of shape (n, 128), float32, each row of unit L2 norm (or zero)
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    l1 = np.abs(descriptors).sum(axis=1, keepdims=True) + eps
    return np.sqrt(descriptors / l1).astype(np.float32)


class FeatureExtractor:
    """Detect keypoints and compute local descriptors.

    Parameters
    ----------
    method : {"sift", "rootsift", "orb"}
        SIFT (Lowe 2004), RootSIFT (Arandjelovic & Zisserman 2012) or ORB (Rublee
        et al. 2011, binary).
    max_keypoints : int
        Keep at most this many keypoints per image, the strongest ones.
    max_side : int
        Images whose longer side exceeds this are downscaled first (area
        interpolation), so a 12-megapixel photo costs what a ``max_side`` one does.
        Keypoints are reported in the original image's pixels.

    Examples
    --------
    >>> import numpy as np
    >>> extractor = FeatureExtractor("sift", max_keypoints=500)
    >>> features = extractor.extract(np.zeros((64, 64), np.uint8))
    >>> features.keypoints.shape, features.descriptors.shape
    ((0, 4), (0, 128))
    """

    def __init__(self, method: str = "sift", *, max_keypoints: int = 1500,
                 max_side: int = 640):
        self.method = check_choice(method, "method", METHODS)
        self.max_keypoints = check_int(max_keypoints, "max_keypoints", minimum=1)
        self.max_side = check_int(max_side, "max_side", minimum=16)

    @property
    def dim(self) -> int:
        """Descriptor length: 128 (SIFT, RootSIFT) or 32 bytes (ORB)."""
        return METHODS[self.method]

    @property
    def dtype(self) -> np.dtype:
        """Descriptor dtype: float32 (SIFT, RootSIFT) or uint8 (ORB)."""
        return np.dtype(np.uint8 if self.method == "orb" else np.float32)

    def get_params(self) -> dict:
        """Constructor arguments, as a JSON-serialisable dict."""
        return {"method": self.method, "max_keypoints": self.max_keypoints,
                "max_side": self.max_side}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"FeatureExtractor({args})"

    def _detector(self):
        import cv2

        # A new detector per call: OpenCV's detectors are not documented as safe to
        # share between threads, and creating one costs microseconds.
        if self.method == "orb":
            return cv2.ORB_create(nfeatures=self.max_keypoints)
        return cv2.SIFT_create(nfeatures=self.max_keypoints)

    def extract(self, image: str | os.PathLike | np.ndarray) -> Features:
        """Compute the features of one image.

        Parameters
        ----------
        image : str, os.PathLike or ndarray
            A path, or an array of shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA,
            uint8 or uint16.

        Returns
        -------
        Features
            keypoints of shape (n, 4) float32 ``(x, y, size, angle)`` and descriptors
            of shape (n, dim). A blank image gives n = 0.

        Raises
        ------
        FileNotFoundError, ValueError, TypeError
            See :func:`cvsearch.io.read_image` and the accepted arrays above.
        """
        import cv2

        if isinstance(image, np.ndarray):
            gray = check_image(image)
        else:
            gray = read_image(image)
        image_shape = (int(gray.shape[0]), int(gray.shape[1]))
        scale = self.max_side / max(gray.shape)
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)),
                    max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        else:
            scale = 1.0
        keypoints, descriptors = self._detector().detectAndCompute(gray, None)
        if descriptors is None or len(keypoints) == 0:
            return Features(np.zeros((0, 4), np.float32),
                            np.zeros((0, self.dim), self.dtype), image_shape)
        # SIFT may return a few more than nfeatures when responses tie.
        keypoints = keypoints[: self.max_keypoints]
        descriptors = descriptors[: self.max_keypoints]
        geometry = np.array([(*k.pt, k.size, k.angle) for k in keypoints], np.float32)
        geometry[:, :3] /= scale
        if self.method == "rootsift":
            descriptors = root_sift(descriptors)
        return Features(geometry, np.ascontiguousarray(descriptors, self.dtype),
                        image_shape)
