"""Stage 3: TF-IDF weighting of bag-of-words histograms (Sivic & Zisserman 2003).

A database image d with word counts n_id gets the vector

    v_d[i] = n_id * idf_i,    idf_i = log(N / N_i),

L2-normalised, where N is the number of images in the database and N_i the number
that contain word i. Words in no database image get idf 0: they cannot match anything.
Queries are weighted with the same idf. The raw term frequency (rather than n_id / n_d)
is used because the L2 normalisation removes the per-image factor anyway.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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


def tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """Weight counts by idf and L2-normalise each row (all-zero rows stay zero).

    Parameters
    ----------
    counts : csr_matrix of shape (n, n_words)
    idf : ndarray of shape (n_words,), float32

    Returns
    -------
    csr_matrix of shape (n, n_words), float32, rows of unit L2 norm or zero
    """
    weighted = counts.multiply(idf[np.newaxis, :]).tocsr().astype(np.float32)
    weighted.eliminate_zeros()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    weighted = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ weighted)
    weighted.sort_indices()
    return weighted
