"""Retrieval metrics (numpy only).

Most functions take a boolean ``relevant`` matrix of shape (n_queries, n_ranked):
``relevant[q, r]`` says whether the result at rank r (0 = best) of query q is
relevant. :func:`relevance` builds it from ranked ids and labels. Where a metric
needs the number of relevant items in the whole database (average precision,
recall), pass ``n_relevant``; it defaults to the relevant items in the ranking,
which is right only when the ranking is complete.
"""

from __future__ import annotations

import numpy as np


def _as_relevant(relevant) -> np.ndarray:
    relevant = np.asarray(relevant)
    if relevant.ndim != 2:
        raise ValueError(f"relevant must have shape (n_queries, n_ranked), got "
                         f"{relevant.shape}")
    return relevant.astype(bool, copy=False)


def _as_n_relevant(n_relevant, relevant: np.ndarray) -> np.ndarray:
    found = relevant.sum(axis=1)
    if n_relevant is None:
        return found
    n_relevant = np.broadcast_to(np.asarray(n_relevant, dtype=np.int64),
                                 (len(relevant),))
    if np.any(n_relevant < found):
        raise ValueError("n_relevant is smaller than the relevant items found in the "
                         "ranking; pass the number of relevant items in the database")
    return n_relevant


def relevance(ranked_ids, query_labels, database_labels) -> np.ndarray:
    """Which ranked results share their query's label.

    Parameters
    ----------
    ranked_ids : ndarray of shape (n_queries, n_ranked), int
        Database ids, best first; -1 marks padding (never relevant).
    query_labels : ndarray of shape (n_queries,)
    database_labels : ndarray of shape (n_database,)

    Returns
    -------
    ndarray of shape (n_queries, n_ranked), bool
    """
    ranked_ids = np.asarray(ranked_ids)
    database_labels = np.asarray(database_labels)
    query_labels = np.asarray(query_labels)
    if ranked_ids.ndim != 2 or len(ranked_ids) != len(query_labels):
        raise ValueError(f"ranked_ids of shape {ranked_ids.shape} do not match "
                         f"{len(query_labels)} query labels")
    valid = ranked_ids >= 0
    labels = database_labels[np.where(valid, ranked_ids, 0)]
    return valid & (labels == query_labels[:, np.newaxis])


def average_precision(relevant, n_relevant=None) -> np.ndarray:
    """Average precision of each query: the mean, over its relevant items, of the
    precision at the rank of each; relevant items missing from the ranking count 0.

    Parameters
    ----------
    relevant : array_like of shape (n_queries, n_ranked), bool
    n_relevant : array_like of shape (n_queries,) or int, optional
        Relevant items in the database per query.

    Returns
    -------
    ndarray of shape (n_queries,), float64; 0 for a query with nothing relevant
    """
    relevant = _as_relevant(relevant)
    n_relevant = _as_n_relevant(n_relevant, relevant)
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision_sum = np.where(relevant, hits / ranks, 0.0).sum(axis=1)
    return np.divide(precision_sum, n_relevant, out=np.zeros(len(relevant)),
                     where=n_relevant > 0)


def mean_average_precision(relevant, n_relevant=None) -> float:
    """Mean of :func:`average_precision` over the queries."""
    return float(average_precision(relevant, n_relevant).mean())


def precision_at_k(relevant, k: int) -> float:
    """Mean fraction of relevant results among the top ``k`` (missing ranks count
    as not relevant)."""
    relevant = _as_relevant(relevant)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(relevant[:, :k].sum(axis=1).mean() / k)


def recall_at_k(relevant, k: int, n_relevant=None) -> float:
    """Mean fraction of each query's relevant items found in the top ``k``
    (queries with nothing relevant are left out)."""
    relevant = _as_relevant(relevant)
    n_relevant = _as_n_relevant(n_relevant, relevant)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    has = n_relevant > 0
    if not has.any():
        return 0.0
    return float((relevant[has, :k].sum(axis=1) / n_relevant[has]).mean())


def top_k_accuracy(relevant, k: int) -> float:
    """Fraction of queries with at least one relevant result in the top ``k``
    (the score of the image-similarity competitions' query/gallery protocol)."""
    relevant = _as_relevant(relevant)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(relevant[:, :k].any(axis=1).mean())


def per_class_map(average_precisions, query_labels) -> dict:
    """Mean average precision of the queries of each class.

    Returns
    -------
    dict mapping each label to a float, in sorted label order
    """
    average_precisions = np.asarray(average_precisions, dtype=np.float64)
    query_labels = np.asarray(query_labels)
    return {label.item() if hasattr(label, "item") else label:
            float(average_precisions[query_labels == label].mean())
            for label in np.unique(query_labels)}


def precision_recall_curve(relevant, n_relevant=None, levels: int = 11):
    """Interpolated precision at evenly spaced recall levels, mean over queries.

    The interpolated precision at recall r is the best precision at any recall
    >= r (as in PASCAL VOC); recall levels the ranking never reaches get 0.

    Returns
    -------
    recall : ndarray of shape (levels,), float64, from 0 to 1
    precision : ndarray of shape (levels,), float64
    """
    relevant = _as_relevant(relevant)
    n_relevant = _as_n_relevant(n_relevant, relevant)
    recall_levels = np.linspace(0.0, 1.0, levels)
    keep = n_relevant > 0
    relevant, n_relevant = relevant[keep], n_relevant[keep]
    if not len(relevant):
        return recall_levels, np.zeros(levels)
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = hits / ranks
    recall = hits / n_relevant[:, np.newaxis]
    # Best precision at this rank or any later one: a reversed running maximum.
    best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    curve = np.zeros((len(relevant), levels))
    for j, level in enumerate(recall_levels):
        reached = recall >= level - 1e-12
        first = reached.argmax(axis=1)
        curve[:, j] = np.where(reached.any(axis=1),
                               best_after[np.arange(len(relevant)), first], 0.0)
    return recall_levels, curve.mean(axis=0)


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
