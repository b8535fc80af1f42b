"""Stage 5: geometric verification of a short-list (spatial re-ranking).

Query and database keypoints are put in correspondence through shared visual words
(no raw descriptors are kept in the index), a transform is fitted, and the
short-list is re-ordered by inlier count (Philbin et al., "Object retrieval with
large vocabularies and fast spatial matching", CVPR 2007). Images with at least
``min_inliers`` inliers (or fewer, decided the same object by the searcher)
move up, ranked by inliers; the others keep their bag-of-words order below
them, so re-ranking never drops a good bag-of-words answer out of the
short-list.

Two ways to fit, chosen by ``use_shapes``:

- :func:`similarity_inliers` (the default where keypoints have shapes): each
  correspondence proposes a similarity transform from its keypoints' sizes and
  orientations, the best is refined by least squares (affine, then homography).
  No random sampling, so it costs little even when most pairs are wrong, and an
  inlier must agree in scale and rotation with its neighbours, which few chance
  matches do.
- :func:`count_inliers`: a homography by RANSAC on positions alone
  (``cv2.findHomography``), for keypoints without shapes (dense features).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cvsearch._compiled import compiled
from cvsearch._threads import map_in_pool
from cvsearch._validation import check_float, check_int
from cvsearch.store import COMPILED_KEYPOINTS, ShortList

#: A word seen more often than this in either image gives no correspondences: a
#: frequent word (a repeated texture) makes many pairs, nearly all wrong.
MAX_PER_WORD = 3

#: Use the numba loops when numba is installed (False: always numpy; for tests).
USE_COMPILED = True


def _loop(loop, keypoints: int):
    """``loop`` compiled by numba for a short-list of ``keypoints`` database
    keypoints in all, or None: numpy then does it. numba verifies the
    short-lists whose keypoints the store gathers with numba (from
    ``COMPILED_KEYPOINTS``): a smaller one (a match picture, a tiny index) need
    not load numba, which costs about a second once per process. Each loop
    gives the same numbers as its numpy path, to the bit (the same float64
    operations, in the same order)."""
    return (compiled(loop) if USE_COMPILED and keypoints >= COMPILED_KEYPOINTS
            else None)


#: Inliers that make a candidate verified, by default: on the phone photos of
#: benchmarks/results/instance.md, 10 verifies more of the blurred ones than 20
#: (top-1 0.975 against 0.950) and 8 more still (0.985), but the lower the bar,
#: the more chance matches pass it.
DEFAULT_MIN_INLIERS = 10


class QueryWords(NamedTuple):
    """A query's words arranged to be matched with many database images.

    Attributes
    ----------
    order : ndarray of shape (n_query,), int64
        Query keypoints sorted by word (stable).
    start, count : ndarray of shape (max word + 1,), int64
        Where each word's keypoints begin in ``order``, and how many there are.
    """

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, words) -> QueryWords:
        words = np.asarray(words, np.int64).ravel()
        count = np.bincount(words) if len(words) else np.zeros(0, np.int64)
        return cls(np.argsort(words, kind="stable"), np.cumsum(count) - count, count)


def word_correspondences(query_words: np.ndarray, db_words: np.ndarray,
                         max_per_word: int = MAX_PER_WORD, *,
                         query_table: QueryWords | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of keypoints, one in each image, assigned to the same visual word.

    Parameters
    ----------
    query_words : ndarray of shape (n_query,), int
    db_words : ndarray of shape (n_db,), int
    max_per_word : int
        Words occurring more often than this in either image are ignored.
    query_table : QueryWords, optional
        ``QueryWords.of(query_words)``, when one query is matched with many images.

    Returns
    -------
    query_idx, db_idx : ndarray of shape (n_pairs,), int64
        Indices into the two keypoint lists, ordered by query keypoint, then
        database keypoint.
    """
    table = QueryWords.of(query_words) if query_table is None else query_table
    db_words = np.asarray(db_words).ravel()
    query_idx, db_idx = _pairs(table, db_words, np.zeros(len(db_words), np.int64),
                               max_per_word)
    by_query = np.lexsort((db_idx, query_idx))
    return query_idx[by_query], db_idx[by_query]


def _pairs(table: QueryWords, db_words: np.ndarray, labels: np.ndarray,
           max_per_word: int) -> tuple[np.ndarray, np.ndarray]:
    """Word correspondences of a query with several images at once: ``db_words``
    (n,) are their words concatenated, ``labels`` (n,) says whose each is (each
    image's together, in increasing order). Returns ``(query_idx, db_idx)``,
    int64, ordered by ``db_idx``."""
    empty = np.zeros(0, np.int64)
    if len(db_words) == 0 or len(table.count) == 0:
        return empty, empty
    loop = _loop(_pairs_loop, len(db_words))
    if loop is not None:
        return loop(table.count, table.start, table.order, db_words, labels,
                     max_per_word)
    # how often each database keypoint's word occurs in the query: one gather
    known = (db_words >= 0) & (db_words < len(table.count))
    in_query = np.where(known, table.count[np.where(known, db_words, 0)], 0)
    candidates = np.flatnonzero((in_query >= 1) & (in_query <= max_per_word))
    if not len(candidates):
        return empty, empty
    # an image's keypoints of one word are all candidates or none: count them
    key = labels[candidates].astype(np.int64) * len(table.count) + db_words[candidates]
    _, inverse, repeats = np.unique(key, return_inverse=True, return_counts=True)
    keep = candidates[repeats[inverse.ravel()] <= max_per_word]
    n_query = in_query[keep]
    db_idx = np.repeat(keep, n_query).astype(np.int64)
    query_idx = table.order[np.repeat(table.start[db_words[keep]], n_query)
                            + _ranks(n_query)]
    return query_idx.astype(np.int64, copy=False), db_idx


def _pairs_loop(count, start, order, db_words, labels, max_per_word):
    """:func:`_pairs` in loops (``table``'s arrays given apart). One pass finds
    the keypoints whose word the query holds 1..``max_per_word`` times, in a
    byte per word (a table that stays in the first-level cache); then each
    image's are counted by word, in a table cleared after it (numpy sorts them
    all instead)."""
    n, n_words = db_words.shape[0], count.shape[0]
    wanted = np.empty(n_words, np.bool_)  # the query holds it 1..max_per_word times
    for w in range(n_words):
        wanted[w] = 1 <= count[w] <= max_per_word
    candidates = np.empty(n, np.int64)
    m = 0
    for k in range(n):
        w = db_words[k]
        if 0 <= w < n_words and wanted[w]:
            candidates[m] = k
            m += 1
    seen = np.zeros(n_words, np.int64)
    keep = np.zeros(m, np.bool_)
    total = 0
    a = 0
    while a < m:
        b = a + 1
        while b < m and labels[candidates[b]] == labels[candidates[a]]:
            b += 1
        for j in range(a, b):
            seen[db_words[candidates[j]]] += 1
        for j in range(a, b):
            w = db_words[candidates[j]]
            if seen[w] <= max_per_word:
                keep[j] = True
                total += count[w]
        for j in range(a, b):
            seen[db_words[candidates[j]]] = 0
        a = b
    query_idx = np.empty(total, np.int64)
    db_idx = np.empty(total, np.int64)
    at = 0
    for j in range(m):
        if keep[j]:
            w = db_words[candidates[j]]
            for r in range(count[w]):
                query_idx[at] = order[start[w] + r]
                db_idx[at] = candidates[j]
                at += 1
    return query_idx, db_idx


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(n) for n in sizes])``, int64."""
    sizes = np.asarray(sizes, np.int64)
    return np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)


#: Multiple assignment (see :func:`multiple_assignment`): a further word counts
#: when its squared distance is within this factor of the nearest word's.
ASSIGNMENT_RATIO = 1.2


def multiple_assignment(words: np.ndarray, keypoints: np.ndarray,
                        second: np.ndarray, distances: np.ndarray,
                        second_distances: np.ndarray, ratio: float = ASSIGNMENT_RATIO):
    """A query's keypoints for verification with multiple assignment (Jegou et
    al., ECCV 2008; Philbin et al., CVPR 2008): each keypoint with its word, then
    again with its next nearest word where that is nearly as near.

    Parameters
    ----------
    words, second : ndarray of shape (n,), int
        Each keypoint's word and next nearest word (-1: none), as
        :meth:`cvsearch.Vocabulary.predict_two` gives them.
    keypoints : ndarray of shape (n, 4), float32
    distances, second_distances : ndarray of shape (n,), float
        Their squared distances.
    ratio : float

    Returns
    -------
    words : ndarray of shape (m,), int32
    keypoints : ndarray of shape (m, 4), float32
        The n keypoints first, then the repeated ones.
    """
    again = np.flatnonzero((second >= 0) & (second_distances <= ratio * distances))
    return (np.concatenate([np.asarray(words, np.int32), second[again].astype(np.int32)]),
            np.concatenate([keypoints, keypoints[again]]))


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
        Inliers with each keypoint used once on each side (:func:`one_to_one`),
        so one keypoint matched to several cannot inflate the count. 0 when fewer
        than 4 pairs are given or no homography is found.
    mask : ndarray of shape (n_pairs,), bool
        The inliers counted.
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
    mask[mask] = one_to_one(query_xy[mask], db_xy[mask])
    return int(mask.sum()), mask


def one_to_one(query_xy: np.ndarray, db_xy: np.ndarray) -> np.ndarray:
    """Mask of correspondences with each point used once on each side: the first
    pair of each query point, then the first of those per database point.

    With multiple assignment (and repeated words) one keypoint can be paired
    several times; the inliers are these pairs, so the count shown is the number
    of lines a match picture draws.

    Parameters
    ----------
    query_xy, db_xy : ndarray of shape (n, 2), float32

    Returns
    -------
    ndarray of shape (n,), bool
    """
    keep = np.zeros(len(query_xy), bool)
    if not len(query_xy):
        return keep
    # each (x, y) pair of float32 taken as one 64-bit key (positions are never
    # -0.0 or NaN)
    query_keys = np.ascontiguousarray(query_xy, np.float32).view(np.int64).ravel()
    _, first = np.unique(query_keys, return_index=True)
    db_keys = np.ascontiguousarray(db_xy, np.float32).view(np.int64).ravel()[first]
    _, second = np.unique(db_keys, return_index=True)
    keep[first[second]] = True
    return keep


#: Rotation sectors and log2-scale steps of the histogram that finds the dominant
#: change of orientation and scale (weak geometric consistency).
ROTATION_BINS = 16
SCALE_STEP = 0.5
SCALE_BINS = 32  # +-8 octaves
#: One-correspondence hypotheses tried per image, and how much farther than the
#: final threshold their first inliers may lie (a hypothesis from one keypoint's
#: quantised shape is off by a few degrees and percent, more far from it).
HYPOTHESES = 32
LOOSE = 4.0


def similarity_inliers(query_keypoints: np.ndarray, db_keypoints: np.ndarray,
                       query_idx: np.ndarray, db_idx: np.ndarray, *,
                       threshold: float, min_inliers: int | None = None
                       ) -> tuple[int, np.ndarray] | None:
    """Verify correspondences with hypotheses from single keypoints' shapes.

    As in Philbin et al. (CVPR 2007): each correspondence of two keypoints with a
    size and an orientation proposes a similarity transform on its own (the
    scale is the ratio of sizes, the rotation the difference of angles), so no
    random sampling is needed. First the correspondences that agree on the
    change of orientation and scale are found (the peak of a histogram of both,
    as in Jegou et al.'s weak geometric consistency, ECCV 2008); up to
    ``HYPOTHESES`` of them propose transforms, and the one with most
    correspondences within ``LOOSE * threshold`` is refined by local
    optimisation: affine least squares on its inliers, recounted over all
    correspondences with the threshold shrinking to ``threshold``, then a
    homography by least squares (a photo taken at an angle is a perspective
    view, which an affine fits only near its centre).

    Parameters
    ----------
    query_keypoints, db_keypoints : ndarray of shape (n, 4), float32
        ``(x, y, size, angle)``, size 0 where unknown.
    query_idx, db_idx : ndarray of shape (n_pairs,), int
        The correspondences (:func:`word_correspondences`).
    threshold : float
        Largest distance of an inlier from its predicted position, in database
        image pixels.
    min_inliers : int or None
        The inliers that make an image verified: an image that cannot reach
        them (fewer pairs, or its best hypothesis has fewer than half of them
        before refinement) is not refined, and its count (0) is a lower bound.
        None: always refined.

    Returns
    -------
    (n_inliers, mask) or None
        Inliers with each keypoint used once on each side (:func:`one_to_one`),
        and the mask of those pairs; None if there are correspondences but none
        has shapes on both sides (then RANSAC decides).
    """
    db_idx = np.asarray(db_idx, np.int64)
    order = np.argsort(db_idx, kind="stable")  # the batch wants pairs by image
    counts, mask, _ = _similarity_batch(
        query_keypoints, db_keypoints, np.asarray(query_idx, np.int64)[order],
        db_idx[order], np.zeros(len(db_idx), np.int64), np.array([threshold], float),
        min_inliers)
    if counts[0] < 0:
        return None
    unsorted = np.zeros(len(mask), bool)
    unsorted[order] = mask
    return int(counts[0]), unsorted


def _similarity_batch(query_keypoints, db_keypoints, query_idx, db_idx, labels,
                      thresholds, min_inliers):
    """:func:`similarity_inliers` for the pairs of several images at once.

    ``labels`` (n_pairs,) says which image each pair belongs to, in increasing
    order; ``thresholds`` (n_images,) are their thresholds. Returns the inlier
    counts (n_images,), int64, -1 for images with no pair having shapes on both
    sides (0 for images with no pair at all), the mask (n_pairs,) of inlier
    pairs, and whether each image's count is exact (n_images,), bool (False: a
    lower bound, because it could not reach ``min_inliers``). The histogram and the
    hypotheses of all images are computed together (a short-list is mostly
    images that do not match, each with a few dozen pairs: per-image numpy calls
    would cost more than the arithmetic); only the images whose best hypothesis
    can reach ``min_inliers`` are refined, one by one.
    """
    n_images = len(thresholds)
    mask = np.zeros(len(query_idx), bool)
    # float64 arithmetic on the positions as given: float32 ones (the store's,
    # a query's) widen exactly; other inputs are not narrowed to float32
    query_keypoints, db_keypoints = (
        k if k.dtype == np.float32 else k.astype(np.float64)
        for k in (np.asarray(query_keypoints), np.asarray(db_keypoints)))
    least = max(3, min_inliers or 0)
    changes = _loop(_shape_changes_loop, len(db_keypoints))
    per_image, with_shapes, chosen, turn, ratio = (
        _shape_changes if changes is None else changes)(
        query_keypoints, db_keypoints, query_idx, db_idx, labels, n_images, least)
    # no pair at all: 0 inliers, whatever the method; pairs without shapes: -1
    counts = np.where((per_image > 0) & (with_shapes == 0), -1, 0)
    first_pair = np.cumsum(per_image) - per_image
    alive = (counts == 0) & (per_image >= least)
    # exact: no pairs, or too few to reach min_inliers (then nothing verifies)
    exact = (per_image == 0) | ((per_image < 3) & (counts == 0))
    if not len(chosen):
        return counts, mask, exact
    label = labels[chosen]
    rotation = np.deg2rad(np.mod(turn, 360.0))
    log_scale = np.log2(ratio)
    # per image, the densest 2 x 2 cells of (rotation, scale) changes
    sector = np.floor(rotation * (ROTATION_BINS / (2 * np.pi))).astype(np.int64)
    sector %= ROTATION_BINS
    step = np.clip(np.floor(log_scale / SCALE_STEP).astype(np.int64) + SCALE_BINS // 2,
                   0, SCALE_BINS - 1)
    peaks = _loop(_peak_loop, len(db_keypoints))
    peak = (_peak(label, sector, step, n_images) if peaks is None
            else peaks(label, sector, step, ROTATION_BINS, SCALE_BINS))
    members = chosen[peak]  # pair indices, grouped by image
    member_label = label[peak]
    rotation, log_scale = rotation[peak], log_scale[peak]
    grouped = np.bincount(member_label, minlength=n_images)
    member_start = np.cumsum(grouped) - grouped
    n_members = np.where(grouped < 2, 0, grouped)  # one pair cannot confirm itself
    # up to HYPOTHESES members per image, evenly spread, propose transforms
    n_hyp = np.minimum(HYPOTHESES, n_members)
    hyp_label = np.repeat(np.arange(n_images), n_hyp)
    rank = _ranks(n_hyp) * (n_members[hyp_label] - 1) // np.maximum(n_hyp - 1, 1)[hyp_label]
    hyp = member_start[hyp_label] + rank  # positions in members
    # images whose peak had no two members found nothing: exact 0
    exact |= alive & (n_members == 0) & (min_inliers is None)
    if not len(hyp):  # no image had two pairs agreeing on a rotation and scale
        return counts, mask, exact
    scale = np.exp2(log_scale[hyp])
    cos, sin = scale * np.cos(rotation[hyp]), scale * np.sin(rotation[hyp])
    # every hypothesis against every member of its image: how many it brings
    # within LOOSE times the threshold (its support), and each image's best
    # hypothesis (the first of its largest support) with the members it brings
    member_query = query_keypoints[query_idx[members], :2].astype(np.float64)
    member_db = db_keypoints[db_idx[members], :2].astype(np.float64)
    supports = _loop(_support_loop, len(db_keypoints))
    support, firsts, close = (_support if supports is None else supports)(
        member_query, member_db, member_start, n_members, hyp_label, hyp, cos, sin,
        LOOSE * thresholds)
    for best in firsts:
        image = int(hyp_label[best])
        if min_inliers is not None and 2 * support[best] < min_inliers:
            continue  # hopeless: not worth refining; 0 is a lower bound
        exact[image] = True
        own = slice(member_start[image], member_start[image] + n_members[image])
        span = slice(first_pair[image], first_pair[image] + per_image[image])
        inliers = np.zeros(per_image[image], bool)
        inliers[members[own][close[own]] - first_pair[image]] = True
        query_xy = query_keypoints[query_idx[span], :2]
        db_xy = db_keypoints[db_idx[span], :2]
        inliers = _refine(query_xy.astype(np.float64), db_xy.astype(np.float64),
                          inliers, thresholds[image])
        inliers[inliers] = one_to_one(query_xy[inliers], db_xy[inliers])
        mask[span] = inliers
        counts[image] = int(inliers.sum())
    return counts, mask, exact


def _shape_changes(query_keypoints, db_keypoints, query_idx, db_idx, labels,
                   n_images: int, least: int):
    """The pairs that can verify their image, and how their keypoints' shapes
    change (see :func:`_similarity_batch`).

    Parameters
    ----------
    query_keypoints, db_keypoints : ndarray of shape (n, 4), float32
    query_idx, db_idx, labels : ndarray of shape (n_pairs,), int64
        The pairs, ``labels`` in increasing order.
    n_images : int
    least : int
        The pairs an image needs to be verified.

    Returns
    -------
    per_image, with_shapes : ndarray of shape (n_images,), int64
        Each image's pairs, and those whose two keypoints have shapes (size > 0).
    chosen : ndarray of shape (n_chosen,), int64
        The pairs with shapes of the images that have at least ``least`` pairs.
    turn, ratio : ndarray of shape (n_chosen,), float64
        Their change of angle (database less query, in degrees) and of size
        (database over query), computed in float64.
    """
    query_size = query_keypoints[query_idx, 2]
    db_size = db_keypoints[db_idx, 2]
    known = (query_size > 0) & (db_size > 0)
    per_image = np.bincount(labels, minlength=n_images)
    with_shapes = np.bincount(labels[known], minlength=n_images)
    chosen = np.flatnonzero(known & ((with_shapes > 0) & (per_image >= least))[labels])
    query_chosen = query_keypoints[query_idx[chosen]].astype(np.float64)
    db_chosen = db_keypoints[db_idx[chosen]].astype(np.float64)
    return (per_image, with_shapes, chosen, db_chosen[:, 3] - query_chosen[:, 3],
            db_chosen[:, 2] / query_chosen[:, 2])


def _shape_changes_loop(query_keypoints, db_keypoints, query_idx, db_idx, labels,
                        n_images, least):
    """:func:`_shape_changes` in two passes over the pairs, without gathering
    every pair's keypoints."""
    n = query_idx.shape[0]
    per_image = np.zeros(n_images, np.int64)
    with_shapes = np.zeros(n_images, np.int64)
    for p in range(n):
        per_image[labels[p]] += 1
        if query_keypoints[query_idx[p], 2] > 0 and db_keypoints[db_idx[p], 2] > 0:
            with_shapes[labels[p]] += 1
    chosen = np.empty(n, np.int64)
    turn = np.empty(n, np.float64)
    ratio = np.empty(n, np.float64)
    m = 0
    for p in range(n):
        image = labels[p]
        if with_shapes[image] == 0 or per_image[image] < least:
            continue
        q, d = query_idx[p], db_idx[p]
        if query_keypoints[q, 2] > 0 and db_keypoints[d, 2] > 0:
            chosen[m] = p
            turn[m] = np.float64(db_keypoints[d, 3]) - np.float64(query_keypoints[q, 3])
            ratio[m] = np.float64(db_keypoints[d, 2]) / np.float64(query_keypoints[q, 2])
            m += 1
    return per_image, with_shapes, chosen[:m], turn[:m], ratio[:m]


def _support(member_query, member_db, member_start, n_members, hyp_label, hyp,
             cos, sin, radius):
    """Each hypothesis' support, each image's best and the members it brings
    within ``radius`` (see :func:`_similarity_batch`), for all at once.

    Parameters
    ----------
    member_query, member_db : ndarray of shape (n_members, 2), float64
        The positions of the pairs at their image's peak (its members), grouped
        by image: image i's are ``member_start[i]:member_start[i] + n_members[i]``.
    hyp_label, hyp : ndarray of shape (n_hyp,), int64
        Each hypothesis' image and its member, grouped by image.
    cos, sin : ndarray of shape (n_hyp,), float64
        Its scale times the cosine and sine of its rotation.
    radius : ndarray of shape (n_images,), float64

    Returns
    -------
    support : ndarray of shape (n_hyp,)
        Members within ``radius`` of where the hypothesis puts them.
    firsts : ndarray, int64
        Each image's best hypothesis (the first of its largest support), by image.
    close : ndarray of shape (n_members,), bool
        The members each image's best hypothesis brings within ``radius``.
    """
    tests = n_members[hyp_label]
    test_hyp = np.repeat(np.arange(len(hyp)), tests)
    tested = np.repeat(member_start[hyp_label], tests) + _ranks(tests)
    anchor_q, anchor_d = member_query[hyp], member_db[hyp]
    c, s = cos[test_hyp], sin[test_hyp]
    offset = anchor_d[test_hyp] - member_db[tested]
    dx = member_query[tested, 0] - anchor_q[test_hyp, 0]
    dy = member_query[tested, 1] - anchor_q[test_hyp, 1]
    error_x = c * dx - s * dy + offset[:, 0]
    error_y = s * dx + c * dy + offset[:, 1]
    near = error_x ** 2 + error_y ** 2 < radius[hyp_label[test_hyp]] ** 2
    support = np.bincount(test_hyp, weights=near, minlength=len(hyp))
    by_support = np.lexsort((np.arange(len(hyp)), -support, hyp_label))
    firsts = by_support[np.concatenate([[True], np.diff(hyp_label[by_support]) != 0])]
    is_best = np.zeros(len(hyp), bool)
    is_best[firsts] = True
    close = np.zeros(len(member_query), bool)
    close[tested[near & is_best[test_hyp]]] = True
    return support, firsts, close


def _support_loop(member_query, member_db, member_start, n_members, hyp_label, hyp,
                  cos, sin, radius):
    """:func:`_support` in loops, without the arrays of every test: the same
    float64 operations in the same order (numpy's square is a product)."""
    n_hyp = hyp.shape[0]
    support = np.zeros(n_hyp, np.int64)
    close = np.zeros(member_query.shape[0], np.bool_)
    trial = np.zeros(max(n_members.max(), 1), np.bool_)  # the hypothesis tested
    firsts = np.empty(n_hyp, np.int64)
    n_firsts = 0
    h = 0
    while h < n_hyp:
        image = hyp_label[h]
        lo, hi = member_start[image], member_start[image] + n_members[image]
        limit = radius[image] * radius[image]
        best, most = h, -1
        while h < n_hyp and hyp_label[h] == image:
            a = hyp[h]
            c, s = cos[h], sin[h]
            count = 0
            for t in range(lo, hi):
                dx = member_query[t, 0] - member_query[a, 0]
                dy = member_query[t, 1] - member_query[a, 1]
                error_x = c * dx - s * dy + (member_db[a, 0] - member_db[t, 0])
                error_y = s * dx + c * dy + (member_db[a, 1] - member_db[t, 1])
                trial[t - lo] = error_x * error_x + error_y * error_y < limit
                count += trial[t - lo]
            support[h] = count
            if count > most:  # the first of the largest support is the best
                best, most = h, count
                close[lo:hi] = trial[:hi - lo]
            h += 1
        firsts[n_firsts] = best
        n_firsts += 1
    return support, firsts[:n_firsts], close


def _peak(label, sector, step, n_images: int) -> np.ndarray:
    """Which pairs are in their image's densest 2 x 2 cells of changes of
    rotation and scale (the first densest, in row order; rotation circular).

    Parameters
    ----------
    label : ndarray of shape (n,), int64
        Each pair's image, grouped in increasing order.
    sector, step : ndarray of shape (n,), int64
        Its cell: in ``range(ROTATION_BINS)`` and ``range(SCALE_BINS)``.
    n_images : int

    Returns
    -------
    ndarray of shape (n,), bool
    """
    cells = ROTATION_BINS * SCALE_BINS
    histogram = np.bincount(label * cells + sector * SCALE_BINS + step,
                            minlength=n_images * cells
                            ).reshape(n_images, ROTATION_BINS, SCALE_BINS)
    two = histogram + np.roll(histogram, -1, axis=1)  # rotation is circular
    windows = (two[:, :, :-1] + two[:, :, 1:]).reshape(n_images, -1)
    best_sector, best_step = np.divmod(windows.argmax(axis=1), SCALE_BINS - 1)
    return (np.mod(sector - best_sector[label], ROTATION_BINS) <= 1) & (
        (step == best_step[label]) | (step == best_step[label] + 1))


def _peak_loop(label, sector, step, rotation_bins, scale_bins):
    """:func:`_peak` in loops (``ROTATION_BINS`` and ``SCALE_BINS`` given): one
    image's histogram at a time."""
    n = label.shape[0]
    peak = np.zeros(n, np.bool_)
    histogram = np.zeros((rotation_bins, scale_bins), np.int64)
    a = 0
    while a < n:
        b = a + 1
        while b < n and label[b] == label[a]:
            b += 1
        histogram[:, :] = 0
        for k in range(a, b):
            histogram[sector[k], step[k]] += 1
        most, best_sector, best_step = -1, 0, 0
        for r in range(rotation_bins):
            following = (r + 1) % rotation_bins
            for t in range(scale_bins - 1):
                window = (histogram[r, t] + histogram[following, t]
                          + histogram[r, t + 1] + histogram[following, t + 1])
                if window > most:
                    most, best_sector, best_step = window, r, t
        for k in range(a, b):
            peak[k] = ((sector[k] - best_sector) % rotation_bins <= 1 and
                       (step[k] == best_step or step[k] == best_step + 1))
        a = b
    return peak


def _refine(query_xy: np.ndarray, db_xy: np.ndarray, inliers: np.ndarray,
            threshold: float) -> np.ndarray:
    """Local optimisation of a hypothesis' ``inliers`` (mask over all pairs):
    affine least squares with the threshold shrinking from ``LOOSE / 2`` times
    ``threshold``, then homographies by least squares while they gain inliers.
    Returns the final mask (all False if the model falls apart)."""
    import cv2

    # A fit of the same points with the same radius gives the same inliers
    # again: where a step leaves them as they were, the next is skipped.
    source = np.column_stack([query_xy, np.ones(len(query_xy))])
    fitted = None  # the inliers the last fit was made of, and its radius
    for radius in (LOOSE * threshold / 2, threshold, threshold):
        if inliers.sum() < 3:
            return np.zeros(len(query_xy), bool)
        if fitted is not None and fitted[1] == radius and np.array_equal(fitted[0],
                                                                         inliers):
            break
        affine, *_ = np.linalg.lstsq(source[inliers], db_xy[inliers], rcond=None)
        fitted = (inliers, radius)
        inliers = ((source @ affine - db_xy) ** 2).sum(axis=1) < radius ** 2
    for _ in range(2):
        if inliers.sum() < 8:
            break
        homography, _ = cv2.findHomography(query_xy[inliers], db_xy[inliers], 0)
        if homography is None:
            break
        projected = cv2.perspectiveTransform(query_xy[None], homography)[0]
        widened = ((projected - db_xy) ** 2).sum(axis=1) < threshold ** 2
        if widened.sum() < inliers.sum():
            break
        unchanged = np.array_equal(widened, inliers)
        inliers = widened
        if unchanged:
            break
    return inliers


def reorder(inliers: np.ndarray, min_inliers: int,
            decided: np.ndarray | None = None) -> np.ndarray:
    """Order of a short-list after verification.

    Parameters
    ----------
    inliers : ndarray of shape (n,), int
        Inlier counts of the short-list, in bag-of-words order.
    min_inliers : int
        Verified images (at least this many inliers) come first, by decreasing
        inliers (ties keep bag-of-words order); the others follow in bag-of-words
        order.
    decided : ndarray of shape (n,), bool, optional
        Images that count as verified with fewer inliers too (the searcher's:
        those decided the same object beyond chance, ``Evidence.same_object``:
        a small crop's few inliers among few correspondences can be strong
        evidence).

    Returns
    -------
    order : ndarray of shape (n,), int64
        Positions into the short-list.
    """
    inliers = np.asarray(inliers)
    position = np.arange(len(inliers))
    verified = inliers >= min_inliers
    if decided is not None:
        verified |= np.asarray(decided, bool)
    first = position[verified][np.lexsort((position[verified], -inliers[verified]))]
    return np.concatenate([first, position[~verified]]).astype(np.int64)


class Verified(NamedTuple):
    """What verifying a query against candidate images found.

    Attributes
    ----------
    inliers : ndarray of shape (n_candidates,), int32
        Inliers, each keypoint used once on each side (:func:`one_to_one`).
    pairs : ndarray of shape (n_candidates,), int32
        The word correspondences that were tried.
    exact : ndarray of shape (n_candidates,), bool
        Whether the count is exact; False where verification stopped early
        because the candidate could not reach ``min_inliers`` (the count is then
        a lower bound, not a measurement).
    matched : list of (query_idx, db_idx)
        Per candidate, the inlier correspondences: indices (int64) into the
        query's and the candidate's keypoints.
    thresholds : ndarray of shape (n_candidates,), float64
        The inlier tolerance used, in each candidate's pixels.
    """

    inliers: np.ndarray
    pairs: np.ndarray
    exact: np.ndarray
    matched: list
    thresholds: np.ndarray


def verify_candidates(query_words, query_keypoints, candidates, *,
                      max_side: int, reproj_threshold: float = 6.0,
                      max_per_word: int = MAX_PER_WORD,
                      min_inliers: int | None = None,
                      use_shapes: bool = True) -> Verified:
    """Verify a query against candidate database images.

    Parameters
    ----------
    query_words : ndarray of shape (n_query,), int32
    query_keypoints : ndarray of shape (n_query, 4), float32
        ``(x, y, size, angle)``, x the column and y the row.
    candidates : ShortList, or iterable of (words, keypoints, image_shape)
        Each database image's word ids (n_i,), keypoints (n_i, 4) and
        ``(height, width)`` (:meth:`cvsearch.store.Store.images` gives them
        in a ShortList, which is read as it is).
    max_side : int
        The feature extractor's ``max_side``: the threshold is in pixels of images
        downscaled to it, so it is scaled up for larger database images.
    reproj_threshold : float
    max_per_word : int
    min_inliers : int or None
        The inliers that make an image verified: candidates that cannot reach
        them are not refined (RANSAC runs only as long as finding such a model
        needs, :func:`iterations_needed`), and their counts are lower bounds
        (``exact`` False). None: every candidate is verified in full.
    use_shapes : bool
        Verify with :func:`similarity_inliers` where both sides' keypoints have
        shapes (size > 0); RANSAC otherwise.

    Returns
    -------
    Verified
    """
    reproj_threshold = check_float(reproj_threshold, "reproj_threshold",
                                   minimum=0.0)
    check_int(max_per_word, "max_per_word", minimum=1)
    table = QueryWords.of(query_words)  # the query's side, once for all
    candidates = ShortList.of(candidates)  # a store's, as it is
    n = len(candidates)
    query_keypoints = np.asarray(query_keypoints, np.float32).reshape(-1, 4)
    thresholds = reproj_threshold * np.maximum(
        1.0, candidates.shapes.max(axis=1, initial=0) / max_side)
    sizes = candidates.sizes
    labels = np.repeat(np.arange(n), sizes)
    words, keypoints = candidates.words, candidates.keypoints
    # all candidates' pairs at once, ordered by candidate (see _similarity_batch)
    query_idx, db_idx = _pairs(table, words, labels, max_per_word)
    pair_label = labels[db_idx]
    pairs = np.bincount(pair_label, minlength=n).astype(np.int32)
    inliers = np.full(n, -1, np.int64)
    exact = np.zeros(n, bool)
    mask = np.zeros(len(query_idx), bool)
    if use_shapes and n:
        inliers, mask, exact = _similarity_batch(query_keypoints, keypoints, query_idx,
                                                 db_idx, pair_label, thresholds,
                                                 min_inliers)
    first = np.concatenate([[0], np.cumsum(sizes)])
    first_pair = np.concatenate([[0], np.cumsum(pairs)]).astype(np.int64)
    # the others by RANSAC. OpenCV releases the GIL in it, and its generator is
    # seeded per call: they are verified in threads with the same results as in
    # a loop.
    rest = np.flatnonzero(inliers < 0)

    def by_ransac(i):
        span = slice(first_pair[i], first_pair[i + 1])
        max_iters = 2000 if min_inliers is None else iterations_needed(
            int(pairs[i]), min_inliers)
        count, found = count_inliers(query_keypoints[query_idx[span], :2],
                                     keypoints[db_idx[span], :2],
                                     reproj_threshold=thresholds[i],
                                     max_iters=max(max_iters, 1))
        return count, found, (min_inliers is None or count >= min_inliers
                              or max_iters >= 2000 or pairs[i] < 4)

    for i, (count, found, done) in zip(rest, map_in_pool(by_ransac, rest.tolist())):
        inliers[i], exact[i] = count, done
        mask[first_pair[i]:first_pair[i + 1]] = found
    # each candidate's inlier pairs: slices of the inliers of all, gathered once
    inlier = np.flatnonzero(mask)
    ends = np.searchsorted(inlier, first_pair).tolist()
    inlier_query = query_idx[inlier]
    inlier_db = db_idx[inlier] - first[pair_label[inlier]]
    matched = [(inlier_query[a:b], inlier_db[a:b]) for a, b in zip(ends[:-1], ends[1:])]
    return Verified(inliers.astype(np.int32), pairs, exact, matched, thresholds)


def verify_shortlist(query_words, query_keypoints, candidates, **options) -> np.ndarray:
    """Inlier counts of a query against candidate database images: the
    ``inliers`` of :func:`verify_candidates` (same parameters), (n_candidates,)
    int32."""
    return verify_candidates(query_words, query_keypoints, candidates,
                             **options).inliers


def inlier_pairs(query_words, query_keypoints, words, keypoints, image_shape, *,
                 max_side: int, reproj_threshold: float = 6.0,
                 max_per_word: int = MAX_PER_WORD, min_inliers: int | None = None,
                 use_shapes: bool = True):
    """Verify one database image; return its inlier count and inlier points.

    The same computation as :func:`verify_candidates` for one candidate, so a
    match picture shows the count of the search's result.

    Returns
    -------
    n_inliers : int
    query_xy, db_xy : ndarray of shape (n_inliers, 2), float32
        The inlier correspondences, in each image's pixels.
    """
    found = verify_candidates(query_words, query_keypoints,
                              [(words, keypoints, image_shape)], max_side=max_side,
                              reproj_threshold=reproj_threshold,
                              max_per_word=max_per_word, min_inliers=min_inliers,
                              use_shapes=use_shapes)
    query_idx, db_idx = found.matched[0]
    return (int(found.inliers[0]), np.asarray(query_keypoints, np.float32)[query_idx, :2],
            np.asarray(keypoints, np.float32).reshape(-1, 4)[db_idx, :2])
