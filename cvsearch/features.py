"""Stage 1: local features (SIFT, RootSIFT, ORB) with their keypoint geometry."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from cvsearch._validation import (
    C_INT_MAX,
    check_choice,
    check_flag,
    check_image,
    check_int,
)
from cvsearch.io import MAX_FILE_BYTES, MAX_PIXELS, read_image_reduced

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
    extractor : dict or None
        What made them: ``FeatureExtractor.feature_params()`` of the extractor. An
        index refuses features whose extractor differs from its own (their words
        would be meaningless); None (features made by hand) is refused too.
    thumbnail : ndarray of shape (THUMBNAIL, THUMBNAIL), uint8, or None
        The image in grey, squeezed to a small square (:func:`thumbnail`): what
        the copy decision compares pixel by pixel once the keypoints have
        aligned two images. None: unknown (no pixel comparison).
    finer : Features or None
        A small image's features at twice its size, in its own pixels (see
        :meth:`FeatureExtractor.extract` with ``finer``): a query's only. A
        thumbnail's detail lies at finer scales in its original than its own
        pixels show. None: not asked for, or not a small image.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_shape: tuple
    extractor: dict | None = None
    thumbnail: np.ndarray | None = None
    finer: Features | None = None


class PreparedImage(NamedTuple):
    """An image read and resized for detection (:meth:`FeatureExtractor.prepare`).

    Attributes
    ----------
    gray : ndarray of shape (h, w), uint8
        The image in grey, its longer side at most ``max_side``.
    scale : float
        ``gray``'s pixels per pixel of the original image (at most 1).
    image_shape : tuple of int
        ``(height, width)`` of the original image.
    thumbnail : ndarray of shape (THUMBNAIL, THUMBNAIL), uint8
        :func:`thumbnail` of ``gray``.
    max_side : int
        The extractor's ``max_side`` it was prepared for.
    """

    gray: np.ndarray
    scale: float
    image_shape: tuple
    thumbnail: np.ndarray
    max_side: int


#: Side of an image's thumbnail, in pixels (1 KiB per image).
THUMBNAIL = 32


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """The grey image area-averaged to ``THUMBNAIL`` x ``THUMBNAIL`` pixels (its
    aspect ratio is not kept: the copy decision maps pixels with each image's own
    width and height).

    Parameters
    ----------
    gray : ndarray of shape (H, W), uint8

    Returns
    -------
    ndarray of shape (THUMBNAIL, THUMBNAIL), uint8
    """
    import cv2

    small = cv2.resize(gray, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small, np.uint8)


def check_geometry(keypoints, n: int, image_shape) -> None:
    """A ValueError unless ``keypoints`` are ``n`` finite ``(x, y, size, angle)``
    rows and ``image_shape`` is ``(height, width)``, each at least a pixel: what
    any image's features have (checked where features or words made elsewhere
    come in)."""
    if np.shape(keypoints) != (n, 4):
        raise ValueError(f"there are {n} descriptors or words but keypoints of shape "
                         f"{np.shape(keypoints)}: each keypoint has one, and "
                         "(x, y, size, angle)")
    if not np.isfinite(np.asarray(keypoints, np.float64)).all():
        raise ValueError("these keypoints are not all finite (NaN or infinity): "
                         "no image has them")
    if np.shape(image_shape) != (2,) or not all(
            isinstance(side, (int, np.integer)) and side >= 1 for side in image_shape):
        raise ValueError(f"the image's shape must be (height, width), each at least "
                         f"a pixel, got {image_shape!r}")


def _fitted(image_shape, max_side: int) -> tuple[float, tuple[int, int]]:
    """``(scale, (height, width))``: an image of ``image_shape`` (height, width)
    resized so that its longer side is at most ``max_side`` (scale 1.0: as it
    is)."""
    height, width = (int(v) for v in image_shape)
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return 1.0, (height, width)
    return scale, (max(1, round(height * scale)), max(1, round(width * scale)))


def check_thumbnail(small) -> np.ndarray | None:
    """``small`` if it is None or a thumbnail (:func:`thumbnail`), else a
    ValueError."""
    if small is not None and (np.shape(small) != (THUMBNAIL, THUMBNAIL)
                              or np.asarray(small).dtype != np.uint8):
        raise ValueError(f"a thumbnail must be ({THUMBNAIL}, {THUMBNAIL}) uint8 "
                         f"(cvsearch.features.thumbnail), got {np.shape(small)} "
                         f"{np.asarray(small).dtype}")
    return small


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


def _mirror_permutation(upright: bool) -> np.ndarray:
    """Where each of SIFT's 128 bins goes when the image is mirrored left-right.

    A SIFT descriptor is 4 x 4 cells (rows, then columns, of the patch turned to
    the keypoint's orientation) of 8 orientation bins, bin ``o`` at ``o * 45``
    degrees. Mirroring the image turns a keypoint's orientation ``a`` into
    ``180 - a``; in the turned patch that is a reflection across its horizontal
    axis: cell row ``r`` becomes ``3 - r`` and bin ``o`` becomes ``-o``. An
    upright (dense) patch is not turned: its columns swap, ``c`` becomes
    ``3 - c``, and bin ``o`` becomes ``180 degrees - o``.
    """
    row, column, bin_ = np.meshgrid(np.arange(4), np.arange(4), np.arange(8),
                                    indexing="ij")
    if upright:
        mirrored = (row * 4 + 3 - column) * 8 + (4 - bin_) % 8
    else:
        mirrored = ((3 - row) * 4 + column) * 8 + (8 - bin_) % 8
    permutation = np.empty(128, np.int64)
    permutation[mirrored.ravel()] = np.arange(128)
    return permutation


#: ``descriptor[MIRROR_PERMUTATION]`` is what SIFT (or RootSIFT) computes at the
#: same keypoint of the mirrored image; ``UPRIGHT_MIRROR_PERMUTATION`` the same
#: for dense SIFT's upright patches (tests/test_features.py checks both against
#: real extractions).
MIRROR_PERMUTATION = _mirror_permutation(upright=False)
UPRIGHT_MIRROR_PERMUTATION = _mirror_permutation(upright=True)


def can_mirror(features) -> bool:
    """Whether :func:`mirror_features` applies: SIFT-layout descriptors (ORB's
    binary tests have no such fixed permutation)."""
    extractor = getattr(features, "extractor", None) or {}
    return extractor.get("method") in ("sift", "rootsift") and \
        features.descriptors.shape[1:] == (128,)


def mirror_keypoints(keypoints: np.ndarray, width: int, upright: bool = False
                     ) -> np.ndarray:
    """Keypoints ``(x, y, size, angle)`` (n, 4) float32 of an image ``width``
    pixels wide, as they are in the image mirrored left-right: x becomes
    ``width - 0.5 - x`` (OpenCV's SIFT finds a keypoint at x of an image at that
    x of the mirrored one: measured in tests/test_decision.py) and the angle
    ``180 - angle`` (modulo 360; kept for ``upright`` patches)."""
    mirrored = np.array(keypoints, np.float32, copy=True).reshape(-1, 4)
    mirrored[:, 0] = width - 0.5 - mirrored[:, 0]
    if not upright:
        mirrored[:, 3] = np.mod(180.0 - mirrored[:, 3], 360.0)
    return mirrored


def mirror_permutation(extractor_params: dict | None) -> np.ndarray | None:
    """The bin permutation that mirrors the descriptors of an extractor
    (``FeatureExtractor.feature_params()``), or None where there is none (ORB)."""
    params = extractor_params or {}
    if params.get("method") not in ("sift", "rootsift"):
        return None
    if params.get("dense_step") is not None:
        return UPRIGHT_MIRROR_PERMUTATION
    return MIRROR_PERMUTATION


def mirror_features(features: Features) -> Features:
    """The features of the image mirrored left-right, without extracting again.

    Parameters
    ----------
    features : Features
        SIFT or RootSIFT features (dense ones too).

    Returns
    -------
    Features
        Keypoints as :func:`mirror_keypoints` mirrors them, and the descriptors
        with their bins permuted (:data:`MIRROR_PERMUTATION`, or
        :data:`UPRIGHT_MIRROR_PERMUTATION` for dense features).

    Raises
    ------
    ValueError
        For descriptors without SIFT's layout (ORB).
    """
    if not can_mirror(features):
        raise ValueError("only SIFT and RootSIFT features can be mirrored without "
                         "extracting them again; ORB's binary descriptors cannot")
    upright = features.extractor.get("dense_step") is not None
    return features._replace(
        keypoints=mirror_keypoints(features.keypoints, features.image_shape[1],
                                   upright),
        descriptors=np.ascontiguousarray(
            features.descriptors[:, mirror_permutation(features.extractor)]),
        thumbnail=(None if features.thumbnail is None else
                   np.ascontiguousarray(features.thumbnail[:, ::-1])),
        finer=None)  # the searcher mirrors the finer features as a view of their own


#: Dense patches whose mean gradient magnitude (intensities in [0, 1]) is below this
#: are dropped: flat background only adds noise words.
DENSE_CONTRAST_THRESHOLD = 0.005


def dense_sift(gray: np.ndarray, step: int, sizes=(16, 24, 32)):
    """SIFT-like descriptors on a regular grid, upright (as VLFeat's dsift).

    Gradient magnitudes are split between 8 orientation channels, each channel is
    pooled over cells of ``size / 4`` pixels with a bilinear (triangular) window,
    and a patch's 4 x 4 cells give its 128 values, normalised as SIFT's are
    (L2, clip at 0.2, L2), scaled to OpenCV's range (norm 512). Computing all
    patches from shared filtered channels costs a few milliseconds, where
    ``cv2.SIFT.compute`` on thousands of given keypoints costs hundreds.

    Parameters
    ----------
    gray : ndarray of shape (H, W), uint8
    step : int
        Grid spacing in pixels.
    sizes : sequence of int
        Patch widths in pixels (4 cells each).

    Returns
    -------
    keypoints : ndarray of shape (n, 4), float32
        ``(x, y, size, angle=0)``.
    descriptors : ndarray of shape (n, 128), float32
    """
    import cv2

    image = gray.astype(np.float32) / 255.0
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=1)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    position = angle * (8 / (2 * np.pi))
    low = np.floor(position).astype(np.int32) % 8
    frac = position - np.floor(position)
    near, far = magnitude * (1 - frac), magnitude * frac
    high = (low + 1) % 8
    channels = [np.where(low == k, near, 0) + np.where(high == k, far, 0)
                for k in range(8)]
    all_geometry, all_descriptors = [], []
    for size in sizes:
        cell = max(1, size // 4)
        half = 2 * cell
        ys = np.arange(half, image.shape[0] - half + 1, step)
        xs = np.arange(half, image.shape[1] - half + 1, step)
        if not len(ys) or not len(xs):
            continue
        kernel = (1 - np.abs(np.arange(1 - cell, cell)) / cell).astype(np.float32)
        kernel /= cell  # mean per pixel of a cell, whatever its size
        pooled = np.stack([cv2.sepFilter2D(c, -1, kernel, kernel,
                                           borderType=cv2.BORDER_CONSTANT)
                           for c in channels])
        # Cell centres relative to the patch centre: -1.5, -0.5, 0.5, 1.5 cells.
        offsets = ((np.arange(4) - 1.5) * cell).round().astype(np.int64)
        cy = np.clip(ys[:, None] + offsets[None, :], 0, image.shape[0] - 1)
        cx = np.clip(xs[:, None] + offsets[None, :], 0, image.shape[1] - 1)
        # (orientation, y, cell row, x, cell col) -> (y, x, cell row, cell col, orient.)
        values = pooled[:, cy[:, :, None, None], cx[None, None, :, :]]
        values = values.transpose(1, 3, 2, 4, 0).reshape(len(ys) * len(xs), 128)
        contrast = values.mean(axis=1) * 8  # mean gradient magnitude per pixel
        keep = contrast >= DENSE_CONTRAST_THRESHOLD
        values = values[keep]
        values /= np.linalg.norm(values, axis=1, keepdims=True) + 1e-12
        np.minimum(values, 0.2, out=values)
        values *= 512 / (np.linalg.norm(values, axis=1, keepdims=True) + 1e-12)
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        geometry = np.stack([grid_x.ravel(), grid_y.ravel(),
                             np.full(grid_x.size, size), np.zeros(grid_x.size)], 1)
        all_geometry.append(geometry[keep].astype(np.float32))
        all_descriptors.append(values.astype(np.float32))
    if not all_descriptors:
        return np.zeros((0, 4), np.float32), np.zeros((0, 128), np.float32)
    return np.concatenate(all_geometry), np.concatenate(all_descriptors)


def keypoint_table(keypoints) -> np.ndarray:
    """OpenCV KeyPoints as one array.

    Returns
    -------
    ndarray of shape (n, 5), float32
        ``(x, y, size, angle, response)`` per keypoint, as OpenCV holds them.
    """
    import cv2

    n = len(keypoints)
    table = np.empty((n, 5), np.float32)
    if n:  # the points in one call; each other attribute read once per keypoint
        table[:, :2] = cv2.KeyPoint_convert(keypoints)
        table[:, 2] = np.fromiter((k.size for k in keypoints), np.float32, n)
        table[:, 3] = np.fromiter((k.angle for k in keypoints), np.float32, n)
        table[:, 4] = np.fromiter((k.response for k in keypoints), np.float32, n)
    return table


def spread_budget(keypoints, shape, budget: int, grid: int) -> np.ndarray:
    """Which of ``keypoints`` (OpenCV KeyPoints, or their :func:`keypoint_table`)
    to keep, at most ``budget``, shared among ``grid`` x ``grid`` cells of an
    image of ``shape`` (height, width): each cell keeps its strongest (by
    response) up to ``budget // grid**2``, and the budget the cells leave goes
    to the strongest of the rest, wherever they are.

    Returns
    -------
    ndarray of shape (min(n, budget),), int64
        Positions in ``keypoints``, strongest first (ties: the earlier).
    """
    table = keypoints if isinstance(keypoints, np.ndarray) else keypoint_table(keypoints)
    order = np.argsort(-table[:, 4], kind="stable").astype(np.int64)
    if len(table) <= budget:
        return order
    height, width = shape
    xy = table[:, :2].astype(np.float64)
    cell = (np.clip((xy[:, 1] * grid / height).astype(np.int64), 0, grid - 1) * grid
            + np.clip((xy[:, 0] * grid / width).astype(np.int64), 0, grid - 1))
    # rank of each keypoint among its cell's, strongest first
    by_cell = order[np.argsort(cell[order], kind="stable")]
    starts = np.searchsorted(cell[by_cell], np.arange(grid * grid))
    rank = np.empty(len(table), np.int64)
    rank[by_cell] = np.arange(len(table)) - starts[cell[by_cell]]
    kept = rank < budget // (grid * grid)
    rest = order[~kept[order]][:budget - int(kept.sum())]
    kept[rest] = True
    return order[kept[order]]


#: Cells per side sharing the keypoint budget of detected SIFT and RootSIFT
#: (benchmarks/keypoint_budget.py: screenshots decided copies 0.920 -> 0.967).
DEFAULT_BUDGET_GRID = 4

#: Detected SIFT and RootSIFT: an image that gives fewer keypoints than this at
#: OpenCV's contrast threshold is detected again at the lower thresholds of
#: ``LOWER_CONTRAST`` until it gives this many. A small picture, a tight crop or
#: a blurred copy otherwise keeps too few for any count of inliers to say it is
#: a copy; a lower threshold finds the same keypoints and more, and costs a
#: second pass only where the first found few (a small image, cheap to detect).
DEFAULT_MIN_KEYPOINTS = 100
#: The contrast thresholds tried in turn after OpenCV's 0.04 (Lowe's).
LOWER_CONTRAST = (0.02, 0.01)

#: A query whose longer side is at most this share of ``max_side`` (a
#: thumbnail) is also described at twice its size (``Features.finer``): the
#: original of a thumbnail, described at up to ``max_side``, shows its detail at
#: scales finer than the thumbnail's pixels (benchmarks/more_attacks.py:
#: thumbnails at a fifth of the side decided copies 0.773 -> 0.953 in one run).
#: It is a view of its own, not merged into the plain keypoints: merged, the
#: plain view's small crops lost matches to the finer keypoints.
FINER_SHARE = 0.25


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
    dense_step : int or None
        SIFT/RootSIFT only. If set, describe patches on a regular grid with this
        spacing (pixels of the downscaled image), at each of ``dense_sizes``,
        upright, instead of detecting keypoints ("dense SIFT": better for
        category search, where the object's whole appearance matters; worse for
        instance search under rotation). Patches with no gradient at all are
        dropped; ``max_keypoints`` does not apply.
    dense_sizes : tuple of int
        Patch sizes (SIFT keypoint diameters, pixels) of the dense grid.
    budget_grid : int or None
        SIFT/RootSIFT: share ``max_keypoints`` among ``budget_grid`` x
        ``budget_grid`` cells of the image, each keeping its strongest keypoints
        up to an equal share, and what the cells leave going to the strongest
        left anywhere (see :func:`spread_budget`). None (the default): 4 for
        detected SIFT and RootSIFT keypoints, 1 for ORB and dense features. At
        1 the strongest are kept wherever they are, as OpenCV keeps them; where
        text or a busy texture covers part of the image (a screenshot's page),
        it then takes most of the budget and the rest of the picture keeps few
        keypoints. Indexes saved before 4 was the default load with 1
        (:meth:`from_params`).
    min_keypoints : int or None
        Detected SIFT/RootSIFT: an image that gives fewer keypoints is detected
        again at lower contrast thresholds (``LOWER_CONTRAST``) until it gives
        this many, so a small, cropped or blurred picture keeps enough to be
        verified. None (the default): ``DEFAULT_MIN_KEYPOINTS`` for detected
        SIFT and RootSIFT, 0 (never) for ORB and dense features. Indexes saved
        before it existed load with 0 (:meth:`from_params`).
    max_pixels, max_file_bytes : int
        Image files whose header declares more pixels, or which are larger, are
        refused before decoding (see :func:`cvsearch.io.read_image`). They bound
        memory; they do not change the features of the images they accept.

    An extractor is immutable: the features of an index must all come from the
    same settings. Create a new one to change a setting.

    Examples
    --------
    >>> import numpy as np
    >>> extractor = FeatureExtractor("sift", max_keypoints=500)
    >>> features = extractor.extract(np.zeros((64, 64), np.uint8))
    >>> features.keypoints.shape, features.descriptors.shape
    ((0, 4), (0, 128))
    """

    def __init__(self, method: str = "sift", *, max_keypoints: int = 1500,
                 max_side: int = 640, dense_step: int | None = None,
                 dense_sizes: tuple = (16, 24, 32), budget_grid: int | None = None,
                 min_keypoints: int | None = None, max_pixels: int = MAX_PIXELS,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.method = check_choice(method, "method", METHODS)
        self.max_keypoints = check_int(max_keypoints, "max_keypoints", minimum=1,
                                       maximum=C_INT_MAX)
        self.max_side = check_int(max_side, "max_side", minimum=16)
        if dense_step is not None:
            dense_step = check_int(dense_step, "dense_step", minimum=1,
                                   maximum=C_INT_MAX)
            if self.method == "orb":
                raise ValueError("dense_step works with sift and rootsift, not orb "
                                 "(ORB needs detected corners)")
        self.dense_step = dense_step
        if not isinstance(dense_sizes, (tuple, list)) or not dense_sizes:
            raise TypeError(f"dense_sizes must be a non-empty tuple of ints, got "
                            f"{dense_sizes!r}")
        self.dense_sizes = tuple(check_int(v, "dense_sizes", minimum=2, maximum=C_INT_MAX)
                                 for v in dense_sizes)
        if budget_grid is None:  # spreading needs detected keypoints' responses
            budget_grid = 1 if self.method == "orb" or dense_step is not None \
                else DEFAULT_BUDGET_GRID
        self.budget_grid = check_int(budget_grid, "budget_grid", minimum=1)
        if self.budget_grid > 1 and (self.method == "orb" or dense_step is not None):
            raise ValueError("budget_grid works with detected sift and rootsift "
                             "keypoints, not orb or dense_step")
        if min_keypoints is None:  # contrast thresholds are SIFT's
            min_keypoints = 0 if self.method == "orb" or dense_step is not None \
                else DEFAULT_MIN_KEYPOINTS
        self.min_keypoints = check_int(min_keypoints, "min_keypoints", minimum=0)
        if self.min_keypoints and (self.method == "orb" or dense_step is not None):
            raise ValueError("min_keypoints works with detected sift and rootsift "
                             "keypoints, not orb or dense_step")
        self.max_pixels = check_int(max_pixels, "max_pixels", minimum=1)
        self.max_file_bytes = check_int(max_file_bytes, "max_file_bytes", minimum=1)
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"FeatureExtractor is immutable (an index's features must all come "
                f"from the same settings); create a new one to change {name}")
        super().__setattr__(name, value)

    def __eq__(self, other) -> bool:
        return (isinstance(other, FeatureExtractor)
                and self.get_params() == other.get_params())

    def __hash__(self) -> int:
        return hash(repr(self))

    @property
    def dim(self) -> int:
        """Descriptor length: 128 (SIFT, RootSIFT) or 32 bytes (ORB)."""
        return METHODS[self.method]

    @property
    def covariant(self) -> bool:
        """Whether keypoints are detected with their own size and orientation
        (SIFT, RootSIFT, ORB), which then say how an object was scaled and turned
        between two images. False for dense features: their sizes and angles are
        the grid's, the same in every image."""
        return self.dense_step is None

    @property
    def dtype(self) -> np.dtype:
        """Descriptor dtype: float32 (SIFT, RootSIFT) or uint8 (ORB)."""
        return np.dtype(np.uint8 if self.method == "orb" else np.float32)

    def get_params(self) -> dict:
        """Constructor arguments, as a JSON-serialisable dict (``budget_grid`` and
        ``min_keypoints`` always named: :meth:`from_params` reads their absence
        as 1 and 0)."""
        return {**self.feature_params(), "budget_grid": self.budget_grid,
                "min_keypoints": self.min_keypoints, "max_pixels": self.max_pixels,
                "max_file_bytes": self.max_file_bytes}

    @classmethod
    def from_params(cls, params: dict) -> FeatureExtractor:
        """The extractor of saved ``get_params()``; without ``budget_grid`` (saved
        before the budget was shared by default), 1, and without
        ``min_keypoints`` (saved before it existed), 0, as those features were
        made."""
        return cls(**{"budget_grid": 1, "min_keypoints": 0, **params})

    def feature_params(self) -> dict:
        """The arguments that shape the features (all but the read limits)."""
        params = {"method": self.method, "max_keypoints": self.max_keypoints,
                  "max_side": self.max_side, "dense_step": self.dense_step,
                  "dense_sizes": list(self.dense_sizes)}
        if self.budget_grid != 1:  # absent at 1: features saved before it match
            params["budget_grid"] = self.budget_grid
        if self.min_keypoints:  # absent at 0, as budget_grid at 1
            params["min_keypoints"] = self.min_keypoints
        return params

    def check_features(self, features) -> Features:
        """``features`` if this extractor made them, else a clear error.

        Raises
        ------
        ValueError
            If they carry another extractor's settings, or none; or if their
            arrays are not what an image's features are (descriptors of this
            extractor's dtype and width, finite; one finite keypoint each; an
            image of at least a pixel: :func:`check_geometry`).
        """
        made_by = features.extractor
        if made_by != self.feature_params():
            if isinstance(made_by, dict):
                args = ", ".join(f"{k}={v!r}" for k, v in made_by.items())
                origin = f"FeatureExtractor({args})"
            else:
                origin = "no extractor (made by hand)" if made_by is None else repr(made_by)
            raise ValueError(
                f"these features come from {origin}, but this index uses {self!r}; "
                "compute them with index.extractor.extract(image)")
        descriptors = np.asarray(features.descriptors)
        if (descriptors.dtype != self.dtype or descriptors.ndim != 2
                or descriptors.shape[1] != self.dim):
            raise ValueError(f"descriptors of dtype {descriptors.dtype} and shape "
                             f"{descriptors.shape}, where {self!r} makes {self.dtype} "
                             f"(n, {self.dim})")
        if descriptors.dtype.kind == "f" and not np.isfinite(descriptors).all():
            raise ValueError("these descriptors are not all finite (NaN or infinity)")
        check_geometry(features.keypoints, len(descriptors), features.image_shape)
        finer = getattr(features, "finer", None)
        if finer is not None:
            self.check_features(finer)
            if tuple(finer.image_shape) != tuple(features.image_shape):
                raise ValueError(f"the finer features are of an image of "
                                 f"{tuple(finer.image_shape)} pixels, the features of "
                                 f"{tuple(features.image_shape)}: compute both with "
                                 "index.extractor.extract(image, finer=True)")
        return features

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"FeatureExtractor({args})"

    def _detect(self, gray, budget: bool):
        """Keypoints and descriptors of ``gray`` (the detector's own budget of
        ``max_keypoints`` if ``budget``), at lower contrast thresholds while
        fewer than ``min_keypoints`` are found (a lower threshold finds the same
        keypoints and more)."""
        if min(gray.shape[:2]) < 2:
            # nothing to detect on a line of pixels, and OpenCV's ORB fails on one
            # (its pyramid shrinks a side to zero)
            return [], None
        keypoints, descriptors = self._detector(budget).detectAndCompute(gray, None)
        # no more than the budget keeps: a budget below the minimum would else
        # detect every image three times for keypoints it then drops
        wanted = min(self.min_keypoints, self.max_keypoints)
        for threshold in LOWER_CONTRAST if wanted else ():
            if len(keypoints) >= wanted:
                break
            keypoints, descriptors = self._detector(budget, threshold).detectAndCompute(
                gray, None)
        return keypoints, descriptors

    def _detector(self, budget: bool = True, contrast: float | None = None):
        import cv2

        # A new detector per call: OpenCV's detectors are not documented as safe to
        # share between threads, and creating one costs microseconds.
        if self.method == "orb":
            return cv2.ORB_create(nfeatures=self.max_keypoints)
        options = {} if contrast is None else {"contrastThreshold": contrast}
        return cv2.SIFT_create(nfeatures=self.max_keypoints if budget else 0, **options)

    def prepare(self, image: str | os.PathLike | np.ndarray) -> PreparedImage:
        """Read (or check) an image and resize it for detection: the first half
        of :meth:`extract`, which takes the result.

        Preparing a batch of images before describing any is faster than
        extracting them one by one (each stage's code and data stay in the
        CPU's caches); ``Index.add`` does so.

        Parameters
        ----------
        image : str, os.PathLike or ndarray
            As :meth:`extract`.

        Returns
        -------
        PreparedImage

        Raises
        ------
        FileNotFoundError, ValueError, TypeError
            As :meth:`extract`.
        """
        import cv2

        if isinstance(image, np.ndarray):
            gray = check_image(image)
            image_shape = (int(gray.shape[0]), int(gray.shape[1]))
        else:
            # A JPEG much larger than max_side (a phone photo) is decoded
            # reduced in libjpeg, at a fraction of the cost of a whole decode;
            # the keypoints are still in the whole image's pixels.
            gray, image_shape = read_image_reduced(
                image, min_side=self.max_side, max_pixels=self.max_pixels,
                max_file_bytes=self.max_file_bytes)
        scale, (height, width) = _fitted(image_shape, self.max_side)
        if scale < 1.0:
            gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
        return PreparedImage(gray, scale, image_shape, thumbnail(gray), self.max_side)

    def _check_prepared(self, image: PreparedImage) -> None:
        """A ValueError (TypeError for a grey image that is not an array) unless
        ``image`` is what :meth:`prepare` makes of an image at this extractor's
        ``max_side``: one made by hand with other values would give keypoints in
        the wrong pixels."""
        gray, scale, image_shape, small, max_side = image
        if max_side != self.max_side:
            raise ValueError(f"this image was prepared for max_side={max_side}, but "
                             f"this extractor's is {self.max_side}: prepare it with "
                             "this extractor")
        if not isinstance(gray, np.ndarray):
            raise TypeError(f"a prepared image's grey image is an array, got "
                            f"{type(gray).__name__}: make it with prepare")
        shape = np.shape(image_shape)
        expected = (None if shape != (2,) or not all(
            isinstance(v, (int, np.integer)) and v >= 1 for v in image_shape)
            else _fitted(image_shape, self.max_side))
        if (expected is None or gray.dtype != np.uint8 or gray.shape != expected[1]
                or scale != expected[0]):
            raise ValueError(f"this prepared image is not what prepare makes: a grey "
                             f"image {gray.shape} {gray.dtype} at scale {scale!r} of "
                             f"an image of {image_shape} pixels (for max_side="
                             f"{self.max_side}: {expected}); make it with prepare")
        try:
            check_thumbnail(small)
        except ValueError as error:
            raise ValueError(f"{error}; make it with prepare") from None

    def extract(self, image: str | os.PathLike | np.ndarray | PreparedImage,
                finer: bool = False) -> Features:
        """Compute the features of one image.

        Parameters
        ----------
        image : str, os.PathLike, ndarray or PreparedImage
            A path; an array of shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA,
            uint8 or uint16; or what :meth:`prepare` made of either (by an
            extractor of the same ``max_side``).
        finer : bool
            For a query: where the image is small (its longer side at most
            ``FINER_SHARE`` of ``max_side``) and keypoints are detected (not
            ``dense_step``), also describe it at twice its size (bicubic), its
            keypoints in its own pixels (``Features.finer``): a search looks at
            both, as at a mirror image.

        Returns
        -------
        Features
            keypoints of shape (n, 4) float32 ``(x, y, size, angle)`` and descriptors
            of shape (n, dim). A blank image gives n = 0.

        Raises
        ------
        FileNotFoundError, ValueError, TypeError
            See :func:`cvsearch.io.read_image` and the accepted arrays above; a
            ValueError for an image prepared at another ``max_side``.
        """
        import cv2

        finer = check_flag(finer, "finer")  # before any decoding
        if not isinstance(image, PreparedImage):
            image = self.prepare(image)
        else:
            self._check_prepared(image)
        gray, scale, image_shape, small = image[:4]
        features = self._describe(gray, scale, image_shape, small)
        if (finer and self.dense_step is None
                and max(image_shape) <= FINER_SHARE * self.max_side):
            twice = cv2.resize(gray, (2 * gray.shape[1], 2 * gray.shape[0]),
                               interpolation=cv2.INTER_CUBIC)
            features = features._replace(
                finer=self._describe(twice, 2.0, image_shape, small))
        return features

    def _describe(self, gray, scale: float, image_shape, small) -> Features:
        """The features of ``gray``, the image of ``image_shape`` resized by
        ``scale``, their keypoints in the image's pixels; ``small`` its
        thumbnail."""
        if self.dense_step is None:
            # detected and described in one pass (detecting and describing apart
            # builds the scale space twice): with budget_grid > 1 every keypoint,
            # the budget chosen here; else OpenCV keeps its strongest
            keypoints, descriptors = self._detect(gray, budget=self.budget_grid == 1)
            table = keypoint_table(keypoints)
            if self.budget_grid > 1 and descriptors is not None and len(descriptors):
                kept = spread_budget(table, gray.shape, self.max_keypoints,
                                     self.budget_grid)
                table, descriptors = table[kept], descriptors[kept]
            # SIFT may return a few more than nfeatures when responses tie.
            geometry = table[: self.max_keypoints, :4]
        else:
            geometry, descriptors = dense_sift(gray, self.dense_step, self.dense_sizes)
        if descriptors is None or len(descriptors) == 0:
            return Features(np.zeros((0, 4), np.float32),
                            np.zeros((0, self.dim), self.dtype), image_shape,
                            self.feature_params(), small)
        descriptors = descriptors[: len(geometry)]
        geometry = np.array(geometry, np.float32)  # a copy: scaled below
        geometry[:, :3] /= scale
        if self.method == "rootsift":
            descriptors = root_sift(descriptors)
        return Features(geometry, np.ascontiguousarray(descriptors, self.dtype),
                        image_shape, self.feature_params(), small)
