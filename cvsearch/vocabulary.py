"""Stage 2: a visual vocabulary (k-means centres) and fast word assignment.

The vocabulary is learnt with scikit-learn's ``MiniBatchKMeans`` on a random sample of
descriptors (Sivic & Zisserman 2003; Philbin et al. 2007 for large vocabularies).

Word assignment with a large vocabulary would cost more than extracting the features
if every descriptor were compared with every centre. Above ``exact_below`` words it
therefore uses an inverted file over the centres (as faiss ``IndexIVFFlat``; Jegou et
al., "Product quantization for nearest neighbor search", 2011): the centres are
grouped by a second, coarse k-means into about sqrt(n_words) cells, and a descriptor is
compared only with the centres of its ``n_probe`` nearest cells. Unlike randomised
kd-trees this is deterministic, so a saved and reloaded index answers identically.
With numba (the 'fast' extra) the cells are scanned by one compiled loop
(:mod:`cvsearch._simd`) instead of a few numpy calls per cell, which at one
image's few hundred descriptors cost more than the arithmetic; the words are the
same (near ties are settled in float64 either way).

ORB descriptors are 256-bit strings. They are unpacked to 256 values in {0, 1} and
clustered like real vectors: for binary vectors the squared Euclidean distance is
the Hamming distance, and a centre (the mean of its members, each coordinate the
fraction of members with that bit set) is closest to the strings its members agree
on. Word assignment then uses the squared Euclidean distance to these real-valued
centres, which for a binary descriptor is its expected Hamming distance to a random
member of the cluster, plus a constant per centre. This keeps one k-means for all
methods, at 8x the memory of packed bits during assignment.
"""

from __future__ import annotations

import logging

import numpy as np

from cvsearch._compiled import compiled
from cvsearch._validation import check_int

logger = logging.getLogger(__name__)


def sample_rows(arrays, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Draw at most ``max_rows`` rows uniformly at random from a list of arrays.

    Parameters
    ----------
    arrays : list of ndarray of shape (n_i, dim)
    max_rows : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (min(max_rows, sum n_i), dim), the dtype of the arrays
    """
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    total = int(sizes.sum())
    if total <= max_rows:
        return np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)
    chosen = np.sort(rng.choice(total, size=max_rows, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    owner = np.searchsorted(starts, chosen, side="right") - 1
    return np.concatenate(
        [arrays[i][chosen[owner == i] - starts[i]] for i in np.unique(owner)]
    )


def coarse_cells(centers: np.ndarray, n_cells: int | None = None, seed=None):
    """The coarse quantiser of an inverted file over ``centers`` (n_words, dim):
    k-means of the centres into ``n_cells`` cells (None: about sqrt(n_words)).

    Returns
    -------
    cell_centers : ndarray of shape (n_cells, dim), float32
    word_cells : ndarray of shape (n_words,), int32
        Each centre's cell.
    """
    from sklearn.cluster import KMeans

    n_cells = (int(round(np.sqrt(len(centers)))) if n_cells is None
               else check_int(n_cells, "n_cells", minimum=1))
    coarse = KMeans(n_clusters=min(n_cells, len(centers)), n_init=1,
                    random_state=seed, max_iter=50).fit(centers)
    return (coarse.cluster_centers_.astype(np.float32),
            coarse.labels_.astype(np.int32))


class Vocabulary:
    """Visual vocabulary: k-means centres and nearest-centre word assignment.

    Parameters
    ----------
    n_words : int
        Number of visual words (k-means centres), >= 2.
    max_samples : int
        ``fit`` clusters at most this many descriptors, drawn at random.
    batch_size : int
        Mini-batch size of ``MiniBatchKMeans``.
    max_iter : int
        Maximum passes over the sample (``MiniBatchKMeans`` stops early too).
    n_probe : int
        Cells of the coarse quantiser searched per descriptor (see module docstring),
        the nearest of those that hold words.
        Larger is more exact and slower. The default, 10, gives each descriptor its
        exact nearest centre 97.5% of the time at 20,000 words (8, the default
        before 2026-12-03: 96.0%, in 0.89x the time; benchmarks/assignment.py).
        A saved vocabulary keeps the value it was built with.
    n_cells : int or None
        Cells of the coarse quantiser; None: about sqrt(n_words). More cells
        hold fewer words each, so more of them can be probed for the same
        number of centres compared; at 20,000 words that was no faster for the
        same agreement (benchmarks/assignment.py), as each probed cell costs a
        pass of its own.
    exact_below : int
        Vocabularies with fewer words than this are searched exactly.
    random_state : int or None
        Seed for sampling and clustering; an int makes ``fit`` reproducible.

    Attributes
    ----------
    centers_ : ndarray of shape (n_words, dim), float32
        The visual words. dim is 128 for SIFT/RootSIFT and 256 (unpacked bits) for ORB.
    binary_ : bool
        True if the vocabulary was learnt from binary (ORB) descriptors.
    cell_centers_ : ndarray of shape (n_cells, dim), float32
        Coarse quantiser, empty if the search is exact.
    word_cells_ : ndarray of shape (n_words,), int32
        Coarse cell of each word, empty if the search is exact.
    """

    def __init__(self, n_words: int = 20_000, *, max_samples: int = 250_000,
                 batch_size: int = 4096, max_iter: int = 20, n_probe: int = 10,
                 n_cells: int | None = None, exact_below: int = 2048,
                 random_state: int | None = None):
        self.n_words = check_int(n_words, "n_words", minimum=2)
        self.max_samples = check_int(max_samples, "max_samples", minimum=2)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.n_probe = check_int(n_probe, "n_probe", minimum=1)
        self.n_cells = None if n_cells is None else check_int(n_cells, "n_cells",
                                                               minimum=1)
        self.exact_below = check_int(exact_below, "exact_below", minimum=0)
        if random_state is not None:
            check_int(random_state, "random_state", minimum=0)
        self.random_state = random_state

    _PARAMS = ("n_words", "max_samples", "batch_size", "max_iter", "n_probe",
               "n_cells", "exact_below", "random_state")

    def __setattr__(self, name, value):
        # Once fitted, the words of every image indexed depend on these settings.
        if name in self._PARAMS and self.is_fitted:
            raise AttributeError(
                f"this vocabulary is fitted; {name} cannot change under the words it "
                "assigned. Make a copy: Vocabulary.from_state({**v.get_params(), "
                f"{name!r}: value}}, v.get_state())")
        super().__setattr__(name, value)

    def get_params(self) -> dict:
        """Constructor arguments, as a JSON-serialisable dict."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def __repr__(self) -> str:
        return f"Vocabulary(n_words={self.n_words}, n_probe={self.n_probe})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "centers_")

    def _check_fitted(self):
        if not self.is_fitted:
            # imported only to raise: scikit-learn takes a second to import, and
            # this check runs on every load and search
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "this vocabulary is not trained yet; call fit (or Index.train) first")

    def _as_float(self, descriptors: np.ndarray, binary: bool) -> np.ndarray:
        """Descriptors as float32 rows; binary ones unpacked to one value per bit."""
        if binary:
            return np.unpackbits(descriptors, axis=1).astype(np.float32)
        return np.ascontiguousarray(descriptors, dtype=np.float32)

    def fit(self, descriptors: np.ndarray) -> Vocabulary:
        """Learn the vocabulary.

        Parameters
        ----------
        descriptors : ndarray of shape (n, dim)
            float32 (SIFT, RootSIFT) or uint8 (ORB, packed bits). At most
            ``max_samples`` rows, drawn at random, are clustered.

        Returns
        -------
        self
        """
        from threadpoolctl import threadpool_limits

        if self.is_fitted:
            raise ValueError("this vocabulary is already fitted, and indexes may hold "
                             "words it assigned; fit a new Vocabulary instead")
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] == 0:
            raise ValueError(
                f"descriptors must have shape (n, dim), got {descriptors.shape}")
        if len(descriptors) < self.n_words:
            raise ValueError(
                f"got {len(descriptors)} training descriptors, need >= "
                f"n_words={self.n_words}; add images or lower n_words")
        binary = descriptors.dtype == np.uint8
        rng = np.random.default_rng(self.random_state)
        sample = sample_rows([descriptors], self.max_samples, rng)
        data = self._as_float(sample, binary)
        # k-means++ seeding costs O(n * k^2 * dim): fine for small vocabularies,
        # hours for 20,000 words, where random seeding is the usual choice (Philbin
        # et al. 2007).
        init = "k-means++" if self.n_words <= 4096 else "random"
        seed = None if self.random_state is None else int(self.random_state)
        # One thread, always: MiniBatchKMeans runs a short OpenMP region per
        # mini-batch, and when the cores are shared those regions wait on
        # descheduled threads. Fitting 1,000 words took 9.6 s with two threads
        # alone and 10.5 s with one, but two fits at once took 34 s each with
        # two threads and 10.5 s with one (benchmarks/threads.py).
        with threadpool_limits(limits=1):
            centers, cell_centers, word_cells = self._cluster(data, init, seed)
        self._set_state(centers, cell_centers, word_cells, binary)
        return self

    def _cluster(self, data, init, seed):
        """The centres, and the coarse cells over them (see the module docstring)."""
        from sklearn.cluster import MiniBatchKMeans

        kmeans = MiniBatchKMeans(
            n_clusters=self.n_words, init=init, batch_size=self.batch_size,
            max_iter=self.max_iter, n_init=1, random_state=seed,
            init_size=min(len(data), max(3 * self.batch_size, 3 * self.n_words)),
        ).fit(data)
        centers = kmeans.cluster_centers_.astype(np.float32)
        if self.n_words >= max(self.exact_below, 4):
            cell_centers, word_cells = coarse_cells(centers, self.n_cells, seed)
        else:
            cell_centers = np.zeros((0, centers.shape[1]), np.float32)
            word_cells = np.zeros(0, np.int32)
        return centers, cell_centers, word_cells

    def _set_state(self, centers, cell_centers, word_cells, binary):
        import hashlib

        digest = hashlib.sha256()
        for array in (centers, cell_centers, word_cells, np.array(bool(binary))):
            digest.update(np.ascontiguousarray(array).tobytes())
        self._fingerprint = digest.hexdigest()[:32]
        self.centers_ = centers
        self.binary_ = bool(binary)
        self._groups = self._sorted_centers_times_minus_2 = None  # made on first use
        self.cell_centers_ = cell_centers
        self.word_cells_ = word_cells
        self._center_sqnorms = (centers.astype(np.float64) ** 2).sum(1).astype(
            np.float32)
        self._centers_times_minus_2 = centers * np.float32(-2)
        if len(word_cells):
            # Only the cells that hold words are probed (a coarse k-means over
            # repeated centres, or arrays given to from_state, can leave some
            # without): "cells" below are those, in order, numbered from 0.
            held = np.bincount(word_cells, minlength=len(cell_centers)) > 0
            numbers = np.cumsum(held) - 1  # a cell's number among those held
            self._cells = np.ascontiguousarray(cell_centers[held])
            order = np.argsort(word_cells, kind="stable").astype(np.int32)
            self._cell_order = order
            self._cell_bounds = np.searchsorted(
                numbers[word_cells[order]], np.arange(len(self._cells) + 1)
            ).astype(np.int64)
            self._sorted_sqnorms = self._center_sqnorms[order]
            self._cell_sqnorms = (self._cells.astype(np.float64) ** 2).sum(1).astype(
                np.float32)
            self._cell_centers_times_minus_2 = self._cells * np.float32(-2)

    @property
    def fingerprint(self) -> str:
        """A hash of the learnt arrays: two vocabularies with the same fingerprint
        assign the same words (words carry it, see ``cvsearch.parallel``)."""
        self._check_fitted()
        return self._fingerprint

    @property
    def descriptor_dim(self) -> int:
        """Length of the descriptors this vocabulary takes: 128 or 32 (ORB bytes)."""
        self._check_fitted()
        dim = self.centers_.shape[1]
        return dim // 8 if self.binary_ else dim

    def _check_descriptors(self, descriptors) -> np.ndarray:
        self._check_fitted()
        descriptors = np.asarray(descriptors)
        kind = "ORB, binary" if self.binary_ else "SIFT/RootSIFT"
        if descriptors.ndim != 2 or descriptors.shape[1] != self.descriptor_dim:
            raise ValueError(
                f"descriptors have shape {descriptors.shape} but the vocabulary takes "
                f"dim {self.descriptor_dim} ({kind}); use the feature method the "
                "vocabulary was trained with")
        if self.binary_ != (descriptors.dtype == np.uint8):
            raise ValueError(
                f"descriptors have dtype {descriptors.dtype} but the vocabulary was "
                f"trained on {kind} descriptors")
        with np.errstate(over="ignore"):  # beyond float32: refused just below
            data = self._as_float(descriptors, self.binary_)
        if not self.binary_ and not np.isfinite(data).all():
            # no distance orders them: each would silently get some word
            raise ValueError("descriptors hold NaN or infinity (as float32); no "
                             "extractor makes them")
        return data

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """Assign each descriptor to a visual word (approximate for large vocabularies).

        Parameters
        ----------
        descriptors : ndarray of shape (n, dim), float32 or uint8 (ORB)

        Returns
        -------
        words : ndarray of shape (n,), int32, in [0, n_words)
        """
        data = self._check_descriptors(descriptors)
        if len(data) == 0:
            return np.zeros(0, np.int32)
        return self._assign(data, with_second=False)[0]

    def predict_two(self, descriptors: np.ndarray):
        """Each descriptor's word (:meth:`predict`) and its next nearest word, for
        multiple assignment: a descriptor blurred or seen at an angle often lands
        beside its word rather than in it. One search gives both.

        Returns
        -------
        words, second : ndarray of shape (n,), int32
            ``second`` is -1 with a single word (searched).
        distances, second_distances : ndarray of shape (n,), float32
            Squared distances (float32 arithmetic; inf where ``second`` is -1).
        """
        data = self._check_descriptors(descriptors)
        if len(data) == 0:
            empty = np.zeros(0, np.int32)
            return empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32)
        words, second, best, second_d = self._assign(data, with_second=True)
        row_sqnorms = (data.astype(np.float32) ** 2).sum(1)
        return (words, second, np.maximum(best + row_sqnorms, 0),
                np.maximum(second_d + row_sqnorms, 0))

    def _assign(self, data, with_second: bool):
        if len(self.word_cells_) == 0:
            return self._nearest(data, with_second)
        return self._predict_ivf(data, with_second)

    def predict_exact(self, descriptors: np.ndarray) -> np.ndarray:
        """Assign each descriptor to its exact nearest centre (brute force).

        Parameters
        ----------
        descriptors : ndarray of shape (n, dim), float32 or uint8 (ORB)

        Returns
        -------
        words : ndarray of shape (n,), int32
        """
        data = self._check_descriptors(descriptors)
        return self._nearest(data, with_second=False)[0]

    @staticmethod
    def _two_nearest(data, centers_times_minus_2, sqnorms, chunk: int = 2048,
                     with_second: bool = True):
        """Nearest and second-nearest centre by float32 distances.

        Returns (index int32, second index int32, best, second), the distances
        being squared distance minus |x|^2, float32; second is inf (index -1)
        with a single centre. Without ``with_second`` the second index is -1
        (the distance is still computed: ties need it).
        """
        index = np.empty(len(data), np.int32)
        second_index = np.full(len(data), -1, np.int32)
        best = np.empty(len(data), np.float32)
        second = np.full(len(data), np.inf, np.float32)
        for start in range(0, len(data), chunk):
            stop = min(start + chunk, len(data))
            # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin.
            # The centres come scaled by -2 (exact in floating point), which saves
            # a pass over the distance matrix.
            d = data[start:stop] @ centers_times_minus_2.T
            d += sqnorms
            rows = np.arange(len(d))
            j = d.argmin(axis=1)
            index[start:stop] = j
            best[start:stop] = d[rows, j]
            if d.shape[1] > 1:
                d[rows, j] = np.inf
                if with_second:
                    j2 = d.argmin(axis=1)
                    second_index[start:stop] = j2
                    second[start:stop] = d[rows, j2]
                else:
                    second[start:stop] = d.min(axis=1)
        return index, second_index, best, second

    @staticmethod
    def _tolerance(row_sqnorms, center_sqnorms) -> np.ndarray:
        """How far apart two float32 distances of each row must be to be ordered
        reliably, shape (n,), float64; ``row_sqnorms`` are the rows' |x|^2.

        The rounding of a float32 matrix product depends on how BLAS splits it
        (its thread count), so a descriptor almost equally far from two centres
        could get different words in a serial and a parallel build. 2^-16 of
        |x|^2 + max |c|^2 bounds the difference of two roundings of a 128-term
        product with a wide margin (``tests/test_vocabulary.py`` checks it on
        SIFT-like and RootSIFT-like descriptors).
        """
        return (row_sqnorms + float(center_sqnorms.max())) * 2.0 ** -16

    def _ties(self, row_sqnorms, best, second, center_sqnorms) -> np.ndarray:
        """Rows whose two smallest float32 distances are too close to order."""
        return np.flatnonzero(second.astype(np.float64) - best
                              <= self._tolerance(row_sqnorms, center_sqnorms))

    @staticmethod
    def _row_sqnorms(data) -> np.ndarray:
        return (data.astype(np.float64) ** 2).sum(1)

    def _nearest(self, data, with_second: bool):
        """``(words, second words, best, second)`` as :meth:`_two_nearest`, near
        ties settled (:meth:`_settle_ties`)."""
        words, seconds, best, second = self._two_nearest(
            data, self._centers_times_minus_2, self._center_sqnorms,
            with_second=with_second)
        row_sqnorms = self._row_sqnorms(data)
        self._settle_ties(data, row_sqnorms, words, seconds, best, second,
                          lambda rows: self._close_words(data[rows], row_sqnorms[rows]))
        return words, seconds, best, second

    def _close_words(self, rows, row_sqnorms):
        """:meth:`_near_words` of the exact search: for each of ``rows`` (k, dim),
        every word whose float32 distance is within twice the tolerance of its
        nearest (sorted ``(row, word)`` pairs, int64)."""
        pair_rows, pair_words = [], []
        for start in range(0, len(rows), 64):  # bounded memory: 64 x n_words
            d32 = rows[start:start + 64] @ self._centers_times_minus_2.T
            d32 += self._center_sqnorms
            limit = d32.min(1) + 2.0 * self._tolerance(
                row_sqnorms[start:start + 64], self._center_sqnorms)
            r, w = np.nonzero(d32 <= limit[:, None])
            pair_rows.append(r + start)
            pair_words.append(w)
        return (np.concatenate(pair_rows).astype(np.int64),
                np.concatenate(pair_words).astype(np.int64))

    def _settle_ties(self, data, row_sqnorms, words, seconds, best, second,
                     near_words):
        """Settle, in place, the rows whose two nearest words float32 cannot
        order: each gets the float64 nearest of the words that can be nearest,
        ``near_words(rows)`` (sorted ``(position in rows, word)`` pairs), the
        smaller id where two are equally near; where the word changes, the two
        words swap. float64 in elementwise arithmetic (no BLAS), so the words
        are the same everywhere."""
        ties = self._ties(row_sqnorms, best, second, self._center_sqnorms)
        if not len(ties):
            return
        # Ties come from repeated descriptors (text, patterns), the same row many
        # times over: each distinct one is settled once (same row, same scan).
        # Rows compared as bytes: np.unique(axis=0) builds a structured view
        # whose overhead outweighs the few dozen rows tied in one image (two
        # zeros of opposite sign, if any, are settled apart, to the same word).
        tied = np.ascontiguousarray(data[ties])
        rows = tied.view(np.dtype((np.void, tied.dtype.itemsize * tied.shape[1])))
        _, first_of, inverse = np.unique(rows.ravel(), return_index=True,
                                         return_inverse=True)
        distinct = ties[first_of]
        pair_rows, pair_words = near_words(distinct)
        d = np.empty(len(pair_rows))
        for start in range(0, len(pair_rows), 4096):  # bounded memory
            part = slice(start, start + 4096)
            d[part] = ((self.centers_[pair_words[part]].astype(np.float64)
                        - data[distinct[pair_rows[part]]].astype(np.float64)) ** 2
                       ).sum(1)
        order = np.lexsort((pair_words, d, pair_rows))
        nearest = order[np.r_[True, pair_rows[order][1:] != pair_rows[order][:-1]]]
        # one per distinct row, in order; then back to every tie
        settled = pair_words[nearest].astype(np.int32)[inverse.reshape(-1)]
        moved = settled != words[ties]
        changed = ties[moved]
        seconds[changed] = words[changed]
        words[changed] = settled[moved]

    def _probed_cells(self, data: np.ndarray, n_probe: int,
                      row_sqnorms: np.ndarray) -> np.ndarray:
        """The ``n_probe`` nearest coarse cells of each row, shape (n, n_probe);
        where float32 cannot tell the last probed cell from the next, the cells
        are chosen in float64 (ties: the smaller cell)."""
        cell_d = data @ self._cell_centers_times_minus_2.T
        cell_d += self._cell_sqnorms
        n_cells = cell_d.shape[1]
        if n_probe >= n_cells:
            return np.broadcast_to(np.arange(n_cells), cell_d.shape)
        kernel = compiled(_smallest) if USE_COMPILED else None
        if kernel is not None:  # argpartition costs more at these sizes
            parts = np.empty((len(data), n_probe + 1), np.int64)
            kernel(cell_d, parts)
        else:
            parts = np.argpartition(cell_d, (n_probe - 1, n_probe), axis=1)
        rows = np.arange(len(data))
        unsure = self._ties(row_sqnorms, cell_d[rows, parts[:, n_probe - 1]],
                            cell_d[rows, parts[:, n_probe]], self._cell_sqnorms)
        probes = np.array(parts[:, :n_probe])
        cells = self._cells.astype(np.float64)
        for start in range(0, len(unsure), 64):  # bounded memory
            chosen = unsure[start:start + 64]
            d = ((data[chosen].astype(np.float64)[:, None, :] - cells[None]) ** 2
                 ).sum(-1)
            probes[chosen] = np.argsort(d, axis=1, kind="stable")[:, :n_probe]
        return probes

    def _predict_ivf(self, data: np.ndarray, with_second: bool):
        n_probe = min(self.n_probe, len(self._cells))
        row_sqnorms = self._row_sqnorms(data)
        probes = self._probed_cells(data, n_probe, row_sqnorms)
        # The (row, probe) pairs sorted by cell, so that each cell's words are read
        # once for all the rows probing it; each row keeps the three nearest words
        # of all its probed cells (the third only settles near ties:
        # :meth:`_near_words`).
        pairs = probes.ravel()
        # numpy sorts 16-bit integers stably by radix (64-bit ones by merging):
        # the same order, for less at one image's few thousand pairs
        order = np.argsort(pairs.astype(np.int16) if len(self._cells) < 2 ** 15
                           else pairs, kind="stable")
        bounds = np.searchsorted(pairs[order], np.arange(len(self._cells) + 1))
        rows_of = order // n_probe
        scan = _compiled_scan() if data.dtype == np.float32 else None
        if scan is not None:
            # without a numpy call per cell (the numpy path's cost at one image's
            # few hundred descriptors). Its float32 sums round otherwise than
            # BLAS's, which the near ties below absorb.
            group_bounds, groups, group_sqnorms = self._word_groups(scan.LANES)
            best = np.full((len(data), 3), np.inf, np.float32)
            position = np.full((len(data), 3), -1, np.int32)
            scan.scan_cells(np.ascontiguousarray(data), rows_of, bounds.astype(np.int64),
                            self._cell_bounds, group_bounds, groups, group_sqnorms, best,
                            position)
        else:
            best, position = self._scan_cells_numpy(data, rows_of, bounds, n_probe)
        first, second = best[:, 0].copy(), best[:, 1].copy()
        word = self._cell_order[np.maximum(position[:, 0], 0)]
        second_word = np.full(len(data), -1, np.int32)
        if with_second:
            found = np.isfinite(second) & (position[:, 1] >= 0)
            second_word[found] = self._cell_order[position[found, 1]]
        self._settle_ties(data, row_sqnorms, word, second_word, first, second,
                          lambda rows: self._near_words(
                              best[rows], positions=position[rows],
                              probes=probes[rows], row_sqnorms=row_sqnorms[rows]))
        return word, second_word, first, second

    def _word_groups(self, lanes: int):
        """The sorted words in groups of ``lanes``, coordinate by coordinate, as
        the compiled scan reads them (:mod:`cvsearch._simd`); made once.

        Returns
        -------
        group_bounds : ndarray of shape (n_cells + 1,), int64
            Cell c's groups are ``group_bounds[c]:group_bounds[c + 1]``.
        groups : ndarray of shape (n_groups, dim, lanes), float32
            The words scaled by -2; each cell's last group padded with zeros.
        group_sqnorms : ndarray of shape (n_groups * lanes,), float32
            Their squared norms; inf for the padding, which is never nearest.
        """
        cached = getattr(self, "_groups", None)
        if cached is None or cached[1].shape[2] != lanes:
            sizes = np.diff(self._cell_bounds)
            group_bounds = np.concatenate([[0], np.cumsum(-(-sizes // lanes))])
            cells = np.repeat(np.arange(len(sizes)), sizes)
            slots = (group_bounds[cells] * lanes
                     + np.arange(len(cells)) - self._cell_bounds[cells])
            flat = np.zeros((group_bounds[-1] * lanes, self.centers_.shape[1]), np.float32)
            flat[slots] = self.centers_[self._cell_order] * np.float32(-2)
            group_sqnorms = np.full(len(flat), np.inf, np.float32)
            group_sqnorms[slots] = self._sorted_sqnorms
            groups = np.ascontiguousarray(
                flat.reshape(-1, lanes, flat.shape[1]).transpose(0, 2, 1))
            cached = (group_bounds.astype(np.int64), groups, group_sqnorms)
            self._groups = cached  # one assignment: threads see all or nothing
        return cached

    def _near_words(self, scanned, positions, probes, row_sqnorms):
        """The words that can be nearest to rows whose two nearest nearly tie,
        from the inverted file's scan (:meth:`_settle_ties`).

        Parameters
        ----------
        scanned : ndarray of shape (k, 3), float32
            Each row's three nearest words' distances (less the row's norm), as
            the scan found them, nearest first.
        positions : ndarray of shape (k, 3), int32
            Their positions in the sorted words (-1: none).
        probes : ndarray of shape (k, n_probe)
            The rows' probed cells.
        row_sqnorms : ndarray of shape (k,), float64

        Returns
        -------
        rows, words : ndarray of shape (m,), int64
            Pairs (row of the k, word id), sorted, each once: the three nearest
            words within the tolerance of the row's best, and every word of its
            probed cells where the third is within it too (k-means leaves several
            nearly identical centres where its training held repeated descriptors,
            such as text or screenshots: descriptors there tie between all of
            them). A word farther than the tolerance is farther in float64 too, so
            these few words settle a tie as all the probed words would.
        """
        limit = scanned.min(1) + 4.0 * self._tolerance(row_sqnorms, self._center_sqnorms)
        near = scanned <= limit[:, None]
        rows, columns = np.nonzero(near)
        found = [positions[rows, columns]]
        full_rows = np.repeat(np.flatnonzero(near[:, 2]), probes.shape[1])
        cells = probes[near[:, 2]].ravel()
        lo = self._cell_bounds[cells]
        counts = self._cell_bounds[cells + 1] - lo
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        found.append(np.repeat(lo, counts) + within)
        rows = np.concatenate([rows, np.repeat(full_rows, counts)]).astype(np.int64)
        words = self._cell_order[np.concatenate(found)].astype(np.int64)
        keys = np.unique(rows * self.n_words + words)
        return keys // self.n_words, keys % self.n_words

    def _scan_cells_numpy(self, data, rows_of, bounds, n_probe: int):
        """The compiled scan (:mod:`cvsearch._simd`) in numpy: cell c is probed
        by the rows ``rows_of[bounds[c]:bounds[c + 1]]`` of ``data`` (n, dim),
        each row by ``n_probe`` cells.
        Returns each row's three nearest words' distances ``best`` (n, 3) float32
        and their positions in the sorted words ``position`` (n, 3) int32, nearest
        first (equal distances: the smaller position; inf and -1 where fewer)."""
        n_slots = len(rows_of)
        # each slot's (row, probed cell) three nearest: best, second, third
        values = np.full((3, n_slots), np.inf, np.float32)
        found = np.full((3, n_slots), -1, np.int32)
        words = getattr(self, "_sorted_centers_times_minus_2", None)
        if words is None:  # made on first use: the compiled scan has its own copy
            words = self.centers_[self._cell_order] * np.float32(-2)
            self._sorted_centers_times_minus_2 = words
        gathered = data[rows_of]
        # Cell by cell: the rows that probe a cell are compared with its words in
        # one matrix product. (Per-cell work is a product and argmins:
        # argpartition costs 100x an argmin on these small matrices.)
        for cell in np.flatnonzero(np.diff(bounds)):
            lo, hi = self._cell_bounds[cell], self._cell_bounds[cell + 1]
            a, b = bounds[cell], bounds[cell + 1]
            d = gathered[a:b] @ words[lo:hi].T
            d += self._sorted_sqnorms[lo:hi]
            slots = np.arange(b - a)
            for rank in range(min(3, hi - lo)):
                j = d.argmin(axis=1)
                values[rank, a:b] = d[slots, j]
                found[rank, a:b] = j + lo
                d[slots, j] = np.inf
        # each row's slots side by side, (n, 3 * n_probe), then its three
        # smallest by (distance, position): sorted by position, then stably by
        # distance
        by_row = np.argsort(rows_of, kind="stable")
        values = values[:, by_row].reshape(3, len(data), n_probe).transpose(1, 0, 2)
        found = found[:, by_row].reshape(3, len(data), n_probe).transpose(1, 0, 2)
        values, found = values.reshape(len(data), -1), found.reshape(len(data), -1)
        order = np.argsort(found, axis=1, kind="stable")
        order = np.take_along_axis(order, np.argsort(
            np.take_along_axis(values, order, 1), axis=1, kind="stable"), 1)[:, :3]
        return (np.take_along_axis(values, order, 1),
                np.take_along_axis(found, order, 1))

    def get_state(self) -> dict:
        """Learnt arrays, for saving: centers, cell_centers, word_cells, binary."""
        self._check_fitted()
        return {"centers": self.centers_, "cell_centers": self.cell_centers_,
                "word_cells": self.word_cells_,
                "binary": np.array(self.binary_)}

    @classmethod
    def from_state(cls, params: dict, state: dict) -> Vocabulary:
        """Rebuild a fitted vocabulary from ``get_params()`` and ``get_state()``.

        Raises
        ------
        ValueError
            If the arrays are inconsistent with each other or with ``params``.
        """
        vocabulary = cls(**params)
        centers = np.asarray(state["centers"])
        cell_centers = np.asarray(state["cell_centers"])
        word_cells = np.asarray(state["word_cells"])
        binary = np.asarray(state["binary"])
        problems = []
        if centers.dtype != np.float32 or centers.shape != (
                vocabulary.n_words, centers.shape[1] if centers.ndim == 2 else -1):
            problems.append(f"centers {centers.dtype} {centers.shape}, expected float32 "
                            f"({vocabulary.n_words}, dim)")
        elif not np.isfinite(centers).all():
            problems.append("centers hold NaN or infinity")
        elif binary.shape != () or binary.dtype != np.bool_:
            problems.append("binary flag is not a boolean")
        elif centers.shape[1] not in ((256,) if binary else (128,)):
            problems.append(f"centers have dim {centers.shape[1]}")
        elif (cell_centers.dtype != np.float32 or cell_centers.ndim != 2
              or cell_centers.shape[1] != centers.shape[1]
              or not np.isfinite(cell_centers).all()):
            problems.append(f"cell_centers {cell_centers.dtype} {cell_centers.shape}")
        elif word_cells.dtype != np.int32 or word_cells.shape not in (
                (0,), (vocabulary.n_words,)) or (len(word_cells) == 0) != (
                len(cell_centers) == 0):
            problems.append(f"word_cells {word_cells.dtype} {word_cells.shape}")
        elif len(word_cells) and (word_cells.min() < 0
                                  or word_cells.max() >= len(cell_centers)):
            problems.append("word_cells out of range")
        if problems:
            raise ValueError("inconsistent vocabulary: " + "; ".join(problems))
        vocabulary._set_state(centers, cell_centers, word_cells, bool(binary))
        return vocabulary


#: Use the compiled scan of the inverted file when numba is installed (False:
#: always numpy; tests compare the two).
USE_COMPILED = True


def _compiled_scan():
    """:mod:`cvsearch._simd` (the compiled scan of the inverted file), or None
    without numba, with ``USE_COMPILED`` off, or with numba's JIT off
    (``NUMBA_DISABLE_JIT``: its LLVM products cannot run as Python)."""
    if not USE_COMPILED:
        return None
    try:
        from cvsearch import _simd
    except ImportError:  # numba: the 'fast' extra
        return None
    return None if _simd.numba.config.DISABLE_JIT else _simd


def _smallest(values, out):
    """Per row of ``values`` (n, m), the columns of its ``k = out.shape[1]``
    smallest, in increasing order (ties: the smaller column), into ``out`` (n, k)
    int64: what ``argpartition`` gives at positions k - 2 and k - 1, in order."""
    n, m = values.shape
    k = out.shape[1]
    kept = np.empty(k, values.dtype)
    for i in range(n):
        kept[:] = np.inf
        out[i, :] = -1
        for j in range(m):
            v = values[i, j]
            if v < kept[k - 1]:
                p = k - 1
                while p > 0 and kept[p - 1] > v:
                    kept[p] = kept[p - 1]
                    out[i, p] = out[i, p - 1]
                    p -= 1
                kept[p] = v
                out[i, p] = j
