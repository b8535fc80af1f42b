"""Stage 3: TF-IDF weighting of bag-of-words histograms (Sivic & Zisserman 2003).

A database image d with word counts n_id gets the vector

    v_d[i] = (n_id ** a * idf_i) ** p,    idf_i = log(N / N_i),

L2-normalised, where N is the number of images in the database and N_i the number
that contain word i. ``a`` (``tf_power``) damps words repeated within an image
before the idf weighting ("burstiness", Jegou et al., CVPR 2009); ``p`` (``power``)
is the power-law normalisation of the whole vector (Perronnin et al., ECCV 2010).
Words in no database image get idf 0: they cannot match anything.
Queries are weighted with the same idf. The raw term frequency (rather than n_id / n_d)
is used because the L2 normalisation removes the per-image factor anyway.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: ``tf_power`` of an index by default: what finds photographed objects best
#: (see ``benchmarks/results/instance.md``).
DEFAULT_TF_POWER = 0.2


def bag_of_words(words: np.ndarray, offsets: np.ndarray, n_words: int) -> sp.csr_matrix:
    """Word-count histograms of several images.

    Parameters
    ----------
    words : ndarray of shape (n_keypoints_total,), int32
        Word ids of all images, concatenated.
    offsets : ndarray of shape (n_images + 1,), int64
        Image i owns ``words[offsets[i]:offsets[i + 1]]``.
    n_words : int

    Returns
    -------
    counts : csr_matrix of shape (n_images, n_words), float32, sorted indices
    """
    n_images = len(offsets) - 1
    rows = np.repeat(np.arange(n_images, dtype=np.int32), np.diff(offsets))
    counts = sp.csr_matrix(
        (np.ones(len(words), np.float32), (rows, words)), shape=(n_images, n_words))
    counts.sum_duplicates()
    return counts


def inverse_document_frequency(counts: sp.csr_matrix) -> np.ndarray:
    """idf_i = log(N / N_i), and 0 for words no image contains.

    Parameters
    ----------
    counts : csr_matrix of shape (n_images, n_words)

    Returns
    -------
    idf : ndarray of shape (n_words,), float32
    """
    n_images = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.zeros(counts.shape[1], np.float64)
    present = df > 0
    idf[present] = np.log(n_images / df[present])
    return idf.astype(np.float32)


def tfidf(counts: sp.csr_matrix, idf: np.ndarray, power: float = 1.0,
          tf_power: float = 1.0) -> sp.csr_matrix:
    """Raise counts to ``tf_power``, weight them by idf, raise to ``power`` and
    L2-normalise each row (all-zero rows stay zero).

    Parameters
    ----------
    counts : csr_matrix of shape (n, n_words)
    idf : ndarray of shape (n_words,), float32
    power : float in (0, 1]
        Power-law normalisation of the weighted vector, idf included (Perronnin
        et al., ECCV 2010); 1 is plain tf-idf.
    tf_power : float in (0, 1]
        Exponent of the counts before the idf weighting: below 1 damps words
        repeated within an image (Jegou et al., CVPR 2009) without damping the
        idf; 1 keeps the counts.

    Returns
    -------
    csr_matrix of shape (n, n_words), float32, rows of unit L2 norm or zero
    """
    counts = counts.astype(np.float32)  # a copy
    if tf_power != 1.0:
        np.power(counts.data, tf_power, out=counts.data)
    weighted = counts.multiply(idf[np.newaxis, :]).tocsr().astype(np.float32)
    weighted.eliminate_zeros()
    if power != 1.0:
        np.power(weighted.data, power, out=weighted.data)
    rows = np.repeat(np.arange(weighted.shape[0]), np.diff(weighted.indptr))
    weighted.data *= inverse_norms(weighted.data, rows, weighted.shape[0])[rows]
    weighted.sort_indices()
    return weighted


def inverse_norms(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """1 / the L2 norm of each row's values (0 for an all-zero row).

    One definition for the matrix path and the query path, so both give the same
    float32 numbers: squares summed in float64, in the order given.

    Parameters
    ----------
    values : ndarray of shape (m,), float32
    rows : ndarray of shape (m,), int
        The row of each value.
    n_rows : int

    Returns
    -------
    ndarray of shape (n_rows,), float32
    """
    return inverse_of_squares(norm_squares(values, rows, n_rows))


def norm_squares(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Each row's sum of its values squared, in float64, in the order given
    (float64 (n_rows,)): what :func:`inverse_norms` inverts."""
    return np.bincount(rows, weights=np.asarray(values, np.float64) ** 2,
                       minlength=n_rows)


def inverse_of_squares(squares: np.ndarray) -> np.ndarray:
    """1 / sqrt of each sum of squares, float32 (0 where it is 0): the last step
    of :func:`inverse_norms`, shared by every path that computes norms.

    Parameters
    ----------
    squares : ndarray of shape (n,), float64

    Returns
    -------
    ndarray of shape (n,), float32
    """
    norms = np.sqrt(squares)
    return np.divide(1.0, norms, out=np.zeros_like(norms),
                     where=norms > 0).astype(np.float32)


def pyramid_size(levels: int) -> int:
    """Cells of a spatial pyramid with ``levels`` levels above the whole image:
    1 + 4 + ... + 4**levels."""
    return sum(4 ** level for level in range(levels + 1))


def spatial_bag_of_words(words: np.ndarray, keypoints: np.ndarray, shapes: np.ndarray,
                         offsets: np.ndarray, n_words: int, levels: int) -> sp.csr_matrix:
    """Word counts per cell of a spatial pyramid (Lazebnik et al., CVPR 2006).

    Level l splits the image into a 2**l x 2**l grid; each cell has its own copy
    of the vocabulary. Level 0 is the plain bag of words, so ``levels=0`` gives
    exactly :func:`bag_of_words`. The histograms of all cells are concatenated:
    cell c of level l holds columns ``n_words * (first cell of l + c) + word``.
    It helps category search (objects roughly in place), and costs invariance
    to large translations and rotations.

    Parameters
    ----------
    words : ndarray of shape (n_keypoints_total,), int32
    keypoints : ndarray of shape (n_keypoints_total, >= 2), float32
        ``x, y`` in pixels of the image.
    shapes : ndarray of shape (n_images, 2), int
        ``(height, width)`` of each image.
    offsets : ndarray of shape (n_images + 1,), int64
    n_words : int
    levels : int
        0 for no pyramid.

    Returns
    -------
    counts : csr_matrix of shape (n_images, n_words * pyramid_size(levels)), float32
    """
    if levels == 0:
        return bag_of_words(words, offsets, n_words)
    sizes = np.diff(offsets)
    height_width = np.repeat(np.asarray(shapes, np.float64).reshape(-1, 2), sizes, axis=0)
    x = keypoints[:, 0] / height_width[:, 1]
    y = keypoints[:, 1] / height_width[:, 0]
    blocks = []
    for level in range(levels + 1):
        grid = 2 ** level
        cx = np.clip((x * grid).astype(np.int64), 0, grid - 1)
        cy = np.clip((y * grid).astype(np.int64), 0, grid - 1)
        cell = cy * grid + cx
        blocks.append(bag_of_words(words + n_words * cell, offsets, n_words * grid * grid))
    return sp.hstack(blocks, format="csr")


def query_tfidf(words: np.ndarray, keypoints: np.ndarray, image_shape, n_words: int,
                levels: int, idf: np.ndarray, power: float = 1.0,
                tf_power: float = 1.0):
    """The weighted vector of one query image, without sparse matrices.

    The same numbers, to the bit, as ``tfidf(spatial_bag_of_words(...), idf,
    power, tf_power)`` for one image (the same operations in the same order), at a
    fraction of the cost: a query pays no scipy overhead.

    Parameters
    ----------
    words : ndarray of shape (n,), int
    keypoints : ndarray of shape (n, >= 2), float32
    image_shape : (height, width)
    n_words, levels : int
    idf : ndarray of shape (n_words * pyramid_size(levels),), float32
    power, tf_power : float

    Returns
    -------
    columns : ndarray of shape (m,), int64, increasing
    values : ndarray of shape (m,), float32, of unit L2 norm (or empty)
    """
    words = np.asarray(words, np.int64)
    if levels == 0:
        all_columns = words
    else:
        height, width = (float(v) for v in image_shape)
        x = np.asarray(keypoints[:, 0], np.float64) / width  # as the matrix path
        y = np.asarray(keypoints[:, 1], np.float64) / height
        parts, first = [], 0
        for level in range(levels + 1):
            grid = 2 ** level
            cx = np.clip((x * grid).astype(np.int64), 0, grid - 1)
            cy = np.clip((y * grid).astype(np.int64), 0, grid - 1)
            parts.append(first + words + n_words * (cy * grid + cx))
            first += n_words * grid * grid
        all_columns = np.concatenate(parts)
    columns, counts = np.unique(all_columns, return_counts=True)
    values = counts.astype(np.float32)
    if tf_power != 1.0:
        np.power(values, tf_power, out=values)
    values = values * idf[columns]
    keep = values != 0
    columns, values = columns[keep], values[keep]
    if power != 1.0:
        np.power(values, power, out=values)
    values *= inverse_norms(values, np.zeros(len(values), np.int64), 1)[0]
    return columns, values


def average_vectors(vectors) -> tuple[np.ndarray, np.ndarray]:
    """The L2-normalised sum of unit sparse vectors: the query of average query
    expansion (Chum et al., ICCV 2007), a query averaged with verified results.

    Parameters
    ----------
    vectors : sequence of (columns, values)
        As :func:`query_tfidf` returns them: columns int, values float32.

    Returns
    -------
    columns : ndarray of shape (m,), int64, increasing
    values : ndarray of shape (m,), float32, of unit L2 norm (or empty)
    """
    columns = np.concatenate([np.asarray(c, np.int64) for c, _ in vectors])
    values = np.concatenate([np.asarray(v, np.float64) for _, v in vectors])
    unique, inverse = np.unique(columns, return_inverse=True)
    summed = np.bincount(inverse, weights=values, minlength=len(unique))
    norm = np.linalg.norm(summed)
    if norm == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return unique, (summed / norm).astype(np.float32)

