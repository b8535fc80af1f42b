"""Approximate nearest-neighbour search over unit vectors, for ``GlobalIndex``.

Each searcher is built from the stored vectors when a query first needs it and is
never saved: a graph or tree file from a folder would be a binary format read by
C++ code without the checks :mod:`cvsearch.storage` gives the vectors, and
building again from checked vectors costs seconds (measured in
benchmarks/results/learned.md). Positions are rows of the concatenated batches;
the caller maps them to ids, drops removed images and scores the candidates again
exactly.

- ``"hnsw"``: faiss's HNSW graph (Malkov & Yashunin 2018) on inner products;
  images added later join the graph (no rebuild). ``pip install cvsearch[faiss]``.
- ``"ivf"``: faiss's inverted file (k-means cells, ``n_probe`` of them searched);
  later images go to their cell; it is trained again once the collection has grown
  fourfold. ``pip install cvsearch[faiss]``.

OpenCV's Annoy (``cv2.ANNIndex``) is not offered: its build never returned on
some sets of unit vectors, for example the PCA-128 embeddings of the first 159
Caltech-101 images (0.4 ms for the first 157; benchmarks/results/annoy_hang.md),
and a C++ loop cannot be interrupted from Python.
"""

from __future__ import annotations

import math

import numpy as np

#: Searches that need faiss.
FAISS_SEARCHES = ("hnsw", "ivf")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("search='hnsw' and 'ivf' need faiss: pip install "
                          "'cvsearch[faiss]' (faiss-cpu)") from None
    return faiss


class HNSWSearch:
    """faiss ``IndexHNSWFlat`` with inner products.

    Parameters
    ----------
    dim : int
    m : int
        Neighbours per node (faiss's M): more, better recall, more memory.
    ef_search : int
        Breadth of the search (at least the number of candidates asked for).
    """

    incremental = True

    def __init__(self, dim: int, m: int = 32, ef_search: int = 128):
        faiss = _faiss()
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 80
        self.ef_search = ef_search

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (n, dim) float32; their positions follow those added before."""
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, np.float32))

    def search(self, vector: np.ndarray, n: int) -> np.ndarray:
        """Positions (<= n,) int64 of the rows nearest to ``vector`` (dim,)."""
        self.index.hnsw.efSearch = max(self.ef_search, n)
        _, positions = self.index.search(np.ascontiguousarray(vector[None], np.float32),
                                         n)
        return positions[0][positions[0] >= 0]

    def __len__(self) -> int:
        return int(self.index.ntotal)


class IVFSearch:
    """faiss ``IndexIVFFlat`` with inner products, ``n_lists`` k-means cells.

    Parameters
    ----------
    dim : int
    vectors : ndarray of shape (n, dim), float32
        The first vectors: the cells are trained on them.
    n_lists : int or None
        None: ``4 sqrt(n)``, and at most n / 39 (faiss wants 39 points a cell).
    n_probe : int
        Cells searched per query.
    """

    def __init__(self, dim: int, vectors: np.ndarray, n_lists: int | None = None,
                 n_probe: int = 16):
        faiss = _faiss()
        n = len(vectors)
        lists = n_lists or max(1, min(int(4 * math.sqrt(n)), n // 39))
        self.trained_on = n
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, min(lists, n),
                                        faiss.METRIC_INNER_PRODUCT)
        self.index.train(np.ascontiguousarray(vectors, np.float32))
        self.index.nprobe = n_probe
        self.add(vectors)

    @property
    def incremental(self) -> bool:
        # cells trained on a quarter of the collection or less: train again
        return len(self) < 4 * self.trained_on

    add = HNSWSearch.add
    __len__ = HNSWSearch.__len__

    def search(self, vector: np.ndarray, n: int) -> np.ndarray:
        _, positions = self.index.search(np.ascontiguousarray(vector[None], np.float32),
                                         n)
        return positions[0][positions[0] >= 0]


def build_searcher(search: str, vectors: np.ndarray, options: dict):
    """A searcher of kind ``search`` over ``vectors`` (n, dim) float32.

    ``options`` holds the GlobalIndex's ``hnsw_m``, ``ef_search``, ``n_lists`` and
    ``n_probe``.
    """
    dim = vectors.shape[1]
    if search == "hnsw":
        searcher = HNSWSearch(dim, options["hnsw_m"], options["ef_search"])
        searcher.add(vectors)
        return searcher
    if search == "ivf":
        return IVFSearch(dim, vectors, options["n_lists"], options["n_probe"])
    raise ValueError(f"no approximate search {search!r}")
