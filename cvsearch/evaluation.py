"""Retrieval metrics (numpy only)."""

from __future__ import annotations

import numpy as np


def ns_score(ranked_labels: np.ndarray, query_labels: np.ndarray, n: int = 4) -> float:
    """The N-S score of UKBench (Nister & Stewenius 2006).

    The mean number of results among the top ``n`` that show the query's object
    (the query itself included, when it is in the database); 4.0 is perfect.

    Parameters
    ----------
    ranked_labels : ndarray of shape (n_queries, >= n)
        Labels of the ranked results, best first.
    query_labels : ndarray of shape (n_queries,)

    Returns
    -------
    float in [0, n]
    """
    ranked_labels = np.asarray(ranked_labels)
    query_labels = np.asarray(query_labels)
    if ranked_labels.ndim != 2 or ranked_labels.shape[1] < n:
        raise ValueError(f"ranked_labels must have shape (n_queries, >= {n}), got "
                         f"{ranked_labels.shape}")
    if len(query_labels) != len(ranked_labels):
        raise ValueError(f"{len(query_labels)} query labels for "
                         f"{len(ranked_labels)} rankings")
    hits = ranked_labels[:, :n] == query_labels[:, np.newaxis]
    return float(hits.sum(axis=1).mean())
