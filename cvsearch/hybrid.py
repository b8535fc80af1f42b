"""Hybrid search: a global descriptor's short-list, verified with local features.

A CNN descriptor finds images of the same kind of thing (category recall); local
features with geometric verification tell which of them show *this* object
(instance precision). :func:`verified_query` asks a :class:`GlobalIndex` for its
``rerank`` best images and verifies them with an :class:`Index` of local features
holding the same images under the same names; verified images come first, by
inliers, the others follow in the global order. Where it helps and where it does
not is measured in benchmarks/results/instance.md (phone photos of DVD covers)
and benchmarks/results/learned.md (Caltech-101 categories).
"""

from __future__ import annotations

import numpy as np

from cvsearch._validation import check_int
from cvsearch.rerank import DEFAULT_MIN_INLIERS


def verified_query(global_index, local_index, image, k: int = 10, *,
                   rerank: int = 50, min_inliers: int = DEFAULT_MIN_INLIERS,
                   verification: str = "shapes", multiple_assignment: bool = True,
                   descriptor=None, features=None):
    """The ``k`` best images for ``image``: the global index's ``rerank`` nearest,
    verified geometrically by the local index.

    Parameters
    ----------
    global_index : GlobalIndex
    local_index : Index
        Local features of the same images, by name (an image the local index does
        not hold is not verified and keeps its global place).
    image : str, os.PathLike or ndarray
        The query image (a path, or a BGR/grey array): both indexes describe it.
    k : int
    rerank : int
        Size of the global short-list verified (0: the global order alone).
    min_inliers, verification, multiple_assignment
        As in :meth:`cvsearch.Index.query`.
    descriptor : ndarray of shape (d,), optional
        The image's global descriptor, if already computed (by the global
        index's describer).
    features : Features, optional
        The image's local features, if already extracted (by the local index's
        extractor).

    Returns
    -------
    scores : ndarray of shape (min(k, len(global_index)),), float32
        Global cosine similarities (in the verified order, so they need not
        decrease).
    ids : ndarray of the same shape, int64
        Ids of the global index.
    inliers : ndarray of the same shape, int32
        Inlier counts of the short-list (verified where >= ``min_inliers``); -1
        for images outside it or missing from the local index.
    """
    k = check_int(k, "k", minimum=1, hint="ask for at least one result")
    rerank = check_int(rerank, "rerank", minimum=0)
    min_inliers = check_int(min_inliers, "min_inliers", minimum=1)
    scores, ids = global_index.query(image if descriptor is None else descriptor,
                                     k=max(k, rerank))
    inliers = np.full(len(ids), -1, np.int32)
    if rerank:
        names = [global_index.names[i] for i in ids[:rerank]]
        rows, local_ids = [], []
        for row, name in enumerate(names):
            try:
                local_ids.append(local_index.id_of(name))
                rows.append(row)
            except KeyError:
                pass  # not in the local index: not verified
        if local_ids:
            if features is None:
                features = local_index.extractor.extract(image)
            inliers[rows] = local_index.inliers(
                features, local_ids, verification=verification,
                multiple_assignment=multiple_assignment)
    verified = inliers >= min_inliers
    # verified first, most inliers first; then the rest in the global order
    order = np.lexsort((np.arange(len(ids)), -np.where(verified, inliers, -1),
                        ~verified))[:k]
    return scores[order], ids[order], inliers[order]
