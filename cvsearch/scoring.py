"""Stage 4: cosine scoring over a sparse inverted file, and top-k selection.

Pure array functions, no I/O.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cvsearch._validation import check_int


def cosine_scores(inverted: sp.csr_matrix, queries: sp.csr_matrix) -> np.ndarray:
    """Cosine similarity of L2-normalised queries with every database image.

    Parameters
    ----------
    inverted : csr_matrix of shape (n_words, n_images), float32
        The inverted file: the transposed, L2-normalised database vectors. Row i
        lists the images that contain word i, so the product touches only the
        posting lists of the query's words.
    queries : csr_matrix of shape (n_queries, n_words), float32
        L2-normalised query vectors.

    Returns
    -------
    scores : ndarray of shape (n_queries, n_images), float32, in [0, 1]
    """
    if queries.shape[1] != inverted.shape[0]:
        raise ValueError(f"queries have {queries.shape[1]} words but the index has "
                         f"{inverted.shape[0]}")
    scores = np.asarray((queries @ inverted).toarray(), dtype=np.float32)
    # Rounding can push the cosine of an image with itself just above 1.
    return np.minimum(scores, 1.0, out=scores)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row, best first; ties go to the smaller id.

    Parameters
    ----------
    scores : ndarray of shape (n_images,) or (n_queries, n_images)
    k : int
        Number of results, >= 1. Rows with fewer than k columns are padded with
        id -1 and score -inf (faiss convention).

    Returns
    -------
    top_scores : ndarray of shape (k,) or (n_queries, k), float32
    top_ids : ndarray of shape (k,) or (n_queries, k), int64
    """
    k = check_int(k, "k", minimum=1, hint="ask for at least one result")
    scores = np.asarray(scores, dtype=np.float32)
    single = scores.ndim == 1
    scores = np.atleast_2d(scores)
    n_queries, n_images = scores.shape
    top_scores = np.full((n_queries, k), -np.inf, np.float32)
    top_ids = np.full((n_queries, k), -1, np.int64)
    m = min(k, n_images)
    if m:
        if m < n_images:
            candidates = np.argpartition(-scores, m - 1, axis=1)[:, :m]
            # argpartition breaks ties arbitrarily: take every column tied with the
            # m-th best, then sort by (-score, id) so results are deterministic.
            threshold = np.take_along_axis(scores, candidates, 1).min(1, keepdims=True)
        else:
            threshold = np.full((n_queries, 1), -np.inf, np.float32)
        for row in range(n_queries):
            ids = np.flatnonzero(scores[row] >= threshold[row])
            order = np.lexsort((ids, -scores[row, ids]))[:m]
            top_ids[row, :m] = ids[order]
            top_scores[row, :m] = scores[row, ids[order]]
    if single:
        return top_scores[0], top_ids[0]
    return top_scores, top_ids
