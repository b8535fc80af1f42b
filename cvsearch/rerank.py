"""Stage 5: geometric verification of a short-list (spatial re-ranking).

Query and database keypoints are put in correspondence through shared visual words
(no raw descriptors are kept in the index), a homography is fitted with RANSAC
(``cv2.findHomography``), and the short-list is re-ordered by inlier count (Philbin
et al., "Object retrieval with large vocabularies and fast spatial matching", CVPR
2007). Images with at least ``min_inliers`` inliers move up, ranked by inliers; the
others keep their bag-of-words order below them, so re-ranking never drops a good
bag-of-words answer out of the short-list.
"""

from __future__ import annotations

import numpy as np

from cvsearch._threads import map_in_pool
from cvsearch._validation import check_float, check_int

#: A word seen more often than this in either image gives no correspondences: a
#: frequent word (a repeated texture) makes many pairs, nearly all wrong.
MAX_PER_WORD = 3


def word_repeats(words: np.ndarray) -> np.ndarray:
    """How often each keypoint's word occurs in its image.

    Parameters
    ----------
    words : ndarray of shape (n,), int

    Returns
    -------
    ndarray of shape (n,), int64
    """
    _, inverse, counts = np.unique(np.asarray(words), return_inverse=True,
                                   return_counts=True)
    return counts[inverse.ravel()]


def word_correspondences(query_words: np.ndarray, db_words: np.ndarray,
                         max_per_word: int = MAX_PER_WORD, *,
                         query_repeats: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of keypoints, one in each image, assigned to the same visual word.

    Parameters
    ----------
    query_words : ndarray of shape (n_query,), int
    db_words : ndarray of shape (n_db,), int
    max_per_word : int
        Words occurring more often than this in either image are ignored.
    query_repeats : ndarray of shape (n_query,), optional
        ``word_repeats(query_words)``, when one query is matched with many images.

    Returns
    -------
    query_idx, db_idx : ndarray of shape (n_pairs,), int64
        Indices into the two keypoint lists.
    """
    query_words = np.asarray(query_words)
    db_words = np.asarray(db_words)
    if len(query_words) == 0 or len(db_words) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    db_order = np.argsort(db_words, kind="stable")
    db_sorted = db_words[db_order]
    lo = np.searchsorted(db_sorted, query_words, side="left")
    hi = np.searchsorted(db_sorted, query_words, side="right")
    n_db = hi - lo
    n_query = word_repeats(query_words) if query_repeats is None else query_repeats
    keep = (n_db >= 1) & (n_db <= max_per_word) & (n_query <= max_per_word)
    query_idx = np.repeat(np.flatnonzero(keep), n_db[keep])
    # Position of each pair within its query keypoint's run of equal db words.
    starts = np.repeat(lo[keep], n_db[keep])
    within = np.arange(len(query_idx)) - np.repeat(
        np.cumsum(n_db[keep]) - n_db[keep], n_db[keep])
    db_idx = db_order[starts + within]
    return query_idx.astype(np.int64), db_idx.astype(np.int64)


def iterations_needed(n_pairs: int, min_inliers: int, *, confidence: float = 0.995,
                      max_iters: int = 2000) -> int:
    """RANSAC iterations that find, with ``confidence``, a homography that has
    ``min_inliers`` inliers among ``n_pairs`` correspondences, if there is one
    (4-point samples; at most ``max_iters``).

    A short-list is mostly images that do not match, on whose pairs RANSAC finds
    no model and runs to its cap: capping it at what the smallest model worth
    keeping needs makes those cheap (20 inliers among 60 pairs: 427 iterations,
    not 2,000), and changes nothing for the images that match. The inliers of the
    others are then a lower bound.
    """
    if n_pairs < 4:
        return 0
    ratio = min(1.0, min_inliers / n_pairs)
    miss = 1.0 - ratio ** 4
    if miss <= 0.0:
        return 1
    needed = np.log(1.0 - confidence) / np.log(miss)
    return int(min(max_iters, max(1, np.ceil(needed))))


def count_inliers(query_xy: np.ndarray, db_xy: np.ndarray, *,
                  reproj_threshold: float = 6.0, max_iters: int = 2000,
                  confidence: float = 0.995) -> tuple[int, np.ndarray]:
    """Fit a homography from query to database points with RANSAC.

    Uses OpenCV's USAC with MAGSAC++ scoring (``cv2.USAC_MAGSAC``): on the mostly
    wrong correspondences of a non-matching image it stops ~20x sooner than
    ``cv2.RANSAC`` with the same inliers on true matches. Its random generator has a
    fixed seed per call, so results are deterministic and thread-safe.

    Parameters
    ----------
    query_xy, db_xy : ndarray of shape (n_pairs, 2), float32
        Corresponding points ``(x, y)``, in OpenCV order.
    reproj_threshold : float
        Maximum reprojection error of an inlier, in database-image pixels.
    max_iters : int
    confidence : float

    Returns
    -------
    n_inliers : int
        Inliers counted once per distinct keypoint on each side (the smaller of the
        two counts), so one keypoint matched to several cannot inflate the count.
        0 when fewer than 4 pairs are given or no homography is found.
    mask : ndarray of shape (n_pairs,), bool
    """
    import cv2

    n_pairs = len(query_xy)
    mask = np.zeros(n_pairs, bool)
    if n_pairs < 4:
        return 0, mask
    homography, inliers = cv2.findHomography(
        np.ascontiguousarray(query_xy, np.float32), np.ascontiguousarray(db_xy, np.float32),
        cv2.USAC_MAGSAC, reproj_threshold, maxIters=max_iters, confidence=confidence)
    if homography is None or inliers is None:
        return 0, mask
    mask = inliers.ravel().astype(bool)
    return int(min(_distinct_points(query_xy[mask]), _distinct_points(db_xy[mask]))), mask


def _distinct_points(xy: np.ndarray) -> int:
    """Distinct (x, y) rows, each pair of float32 taken as one 64-bit key (as fast
    as a 1-D unique; positions are never -0.0 or NaN)."""
    keys = np.ascontiguousarray(xy, np.float32).view(np.int64).ravel()
    return len(np.unique(keys))


def reorder(inliers: np.ndarray, min_inliers: int) -> np.ndarray:
    """Order of a short-list after verification.

    Parameters
    ----------
    inliers : ndarray of shape (n,), int
        Inlier counts of the short-list, in bag-of-words order.
    min_inliers : int
        Verified images (at least this many inliers) come first, by decreasing
        inliers (ties keep bag-of-words order); the others follow in bag-of-words
        order.

    Returns
    -------
    order : ndarray of shape (n,), int64
        Positions into the short-list.
    """
    inliers = np.asarray(inliers)
    position = np.arange(len(inliers))
    verified = inliers >= min_inliers
    first = position[verified][np.lexsort((position[verified], -inliers[verified]))]
    return np.concatenate([first, position[~verified]]).astype(np.int64)


def verify_shortlist(query_words, query_keypoints, candidates, *,
                     max_side: int, reproj_threshold: float = 6.0,
                     max_per_word: int = MAX_PER_WORD,
                     min_inliers: int | None = None) -> np.ndarray:
    """Inlier counts of a query against candidate database images.

    Parameters
    ----------
    query_words : ndarray of shape (n_query,), int32
    query_keypoints : ndarray of shape (n_query, 4), float32
        ``(x, y, size, angle)``, x the column and y the row.
    candidates : iterable of (words, keypoints, image_shape)
        Each database image's word ids (n_i,), keypoints (n_i, 4) and
        ``(height, width)``.
    max_side : int
        The feature extractor's ``max_side``: the threshold is in pixels of images
        downscaled to it, so it is scaled up for larger database images.
    reproj_threshold : float
    max_per_word : int
    min_inliers : int or None
        The inliers that make an image verified: RANSAC runs only as long as
        finding such a model needs (:func:`iterations_needed`), so counts below
        it are lower bounds. None: the full 2,000 iterations for every image.

    Returns
    -------
    inliers : ndarray of shape (n_candidates,), int32
    """
    reproj_threshold = check_float(reproj_threshold, "reproj_threshold",
                                   minimum=0.0)
    check_int(max_per_word, "max_per_word", minimum=1)
    repeats = word_repeats(query_words)  # the query's side, once for all
    # OpenCV releases the GIL in RANSAC, and its generator is seeded per call:
    # the candidates are verified in threads with the same results as in a loop.
    return np.asarray(map_in_pool(
        lambda candidate: inlier_pairs(
            query_words, query_keypoints, *candidate, max_side=max_side,
            reproj_threshold=reproj_threshold, max_per_word=max_per_word,
            min_inliers=min_inliers, query_repeats=repeats)[0],
        list(candidates)), np.int32)


def inlier_pairs(query_words, query_keypoints, words, keypoints, image_shape, *,
                 max_side: int, reproj_threshold: float = 6.0,
                 max_per_word: int = MAX_PER_WORD, min_inliers: int | None = None,
                 query_repeats: np.ndarray | None = None):
    """Verify one database image; return its inlier count and inlier points.

    Parameters are those of :func:`verify_shortlist` for one candidate.

    Returns
    -------
    n_inliers : int
    query_xy, db_xy : ndarray of shape (n_pairs, 2), float32
        The RANSAC inlier correspondences, in each image's pixels.
    """
    query_idx, db_idx = word_correspondences(query_words, words, max_per_word,
                                             query_repeats=query_repeats)
    scale = max(1.0, max(image_shape) / max_side)
    query_xy = query_keypoints[query_idx, :2]
    db_xy = keypoints[db_idx, :2]
    max_iters = 2000 if min_inliers is None else iterations_needed(len(query_idx),
                                                                   min_inliers)
    n, mask = count_inliers(query_xy, db_xy, reproj_threshold=reproj_threshold * scale,
                            max_iters=max(max_iters, 1))
    return n, query_xy[mask], db_xy[mask]
