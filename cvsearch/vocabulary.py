"""Stage 2: a visual vocabulary (k-means centres) and fast word assignment.

The vocabulary is learnt with scikit-learn's ``MiniBatchKMeans`` on a random sample of
descriptors (Sivic & Zisserman 2003; Philbin et al. 2007 for large vocabularies).

Word assignment with a large vocabulary would cost more than extracting the features
if every descriptor were compared with every centre. Above ``exact_below`` words it
therefore uses an inverted file over the centres (as faiss ``IndexIVFFlat``; Jegou et
al., "Product quantization for nearest neighbor search", 2011): the centres are
grouped by a second, coarse k-means into about sqrt(n_words) cells, and a descriptor is
compared only with the centres of its nearest cells: at least ``n_probe`` of them,
and every other cell nearly as near as its nearest (``probe_ratio``), so that a
descriptor between cells looks into more of them than one well inside a cell
(the number of cells probed adapts, as in multi-probe searches). Unlike randomised
kd-trees this is deterministic, so a saved and reloaded index answers identically.
With numba (the 'fast' extra) the cells are scanned by one compiled loop
(:mod:`cvsearch._simd`) instead of a few numpy calls per cell, which at one
image's few hundred descriptors cost more than the arithmetic; the words are the
same (near ties are settled in float64 either way). There the descriptors are
compared with the words in 16-bit integers, twice the products per instruction of
float32's: integer descriptors (OpenCV's SIFT gives integers in [0, 255]) as they
are, others (RootSIFT) scaled by a power of two and rounded. The roundings' effect
on a distance is bounded, and the words they could have ordered otherwise are
measured again in float64, so they too are the same.

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
from typing import NamedTuple

import numpy as np

from cvsearch._compiled import compiled
from cvsearch._validation import check_float, check_int

logger = logging.getLogger(__name__)


class _RoundedWords(NamedTuple):
    """The sorted words rounded to int16 for the quantized scan
    (:meth:`Vocabulary._rounded_words`)."""

    group_bounds: np.ndarray  # (n_cells + 1,) int64, as Vocabulary._word_groups's
    groups: np.ndarray  # (n_groups, dim // 2, LANES, 2) int16: words * quantum, rounded
    group_sqnorms: np.ndarray  # (n_groups * LANES,) float32: the words' own |w|^2
    quantum: float  # a power of two, exact in float32
    error: float  # the largest |word - rounded / quantum| of any coordinate
    l1: float  # the largest L1 norm of a rounded word (rounded / quantum)
    sqnorm: float  # the largest sum of a rounded word's squared integers


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
        The fewest cells of the coarse quantiser searched per descriptor (see the
        module docstring), its nearest of those that hold words. Larger is more
        exact and slower.
    probe_ratio : float or None
        Also search every other cell whose squared distance to the descriptor is
        at most ``probe_ratio`` times its nearest cell's, up to ``4 * n_probe``
        cells in all (the nearest); None: exactly ``n_probe`` cells. A
        descriptor between cells then searches more of them than one well inside
        a cell. The defaults, 6 and 1.45, search about as many words as 10 fixed
        cells (the default before 2026-12-06) and give more descriptors their
        exact nearest centre, with SIFT and RootSIFT at 20,000 words
        (``benchmarks/results/assignment*.md``). A saved vocabulary keeps the
        values it was built with (one saved before probe_ratio existed: None).
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
                 batch_size: int = 4096, max_iter: int = 20, n_probe: int = 6,
                 probe_ratio: float | None = 1.45,
                 n_cells: int | None = None, exact_below: int = 2048,
                 random_state: int | None = None):
        self.n_words = check_int(n_words, "n_words", minimum=2)
        self.max_samples = check_int(max_samples, "max_samples", minimum=2)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.n_probe = check_int(n_probe, "n_probe", minimum=1)
        self.probe_ratio = None if probe_ratio is None else check_float(
            probe_ratio, "probe_ratio", minimum=1.0, maximum=1000.0)
        self.n_cells = None if n_cells is None else check_int(n_cells, "n_cells",
                                                               minimum=1)
        self.exact_below = check_int(exact_below, "exact_below", minimum=0)
        if random_state is not None:
            check_int(random_state, "random_state", minimum=0)
        self.random_state = random_state

    _PARAMS = ("n_words", "max_samples", "batch_size", "max_iter", "n_probe",
               "probe_ratio", "n_cells", "exact_below", "random_state")

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
        return (f"Vocabulary(n_words={self.n_words}, n_probe={self.n_probe}, "
                f"probe_ratio={self.probe_ratio})")

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
        # made on first use
        self._groups = self._sorted_centers_times_minus_2 = None
        self._rounded = None  # (_RoundedWords or None,) once made
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
            self._cells_float64 = self._cells.astype(np.float64)  # unsure probes
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

    def _probed_cells(self, data: np.ndarray, row_sqnorms: np.ndarray):
        """The coarse cells each row probes: its ``n_probe`` nearest, and with
        ``probe_ratio`` every other cell within that ratio of its nearest's
        squared distance, up to ``4 * n_probe`` (the nearest).

        Where float32 cannot decide whether a cell is probed (its distance within
        rounding of the ratio's limit, or of the next cell's where the count is
        bounded), the row's cells are chosen in float64 (ties: the smaller cell),
        so that the cells, like the words, are the same on every machine.

        Returns
        -------
        rows, cells : ndarray of shape (m,), int64
            The (row, cell) pairs, sorted by row, then cell.
        """
        cell_d = data @ self._cell_centers_times_minus_2.T
        cell_d += self._cell_sqnorms
        n, n_cells = cell_d.shape
        fewest = min(self.n_probe, n_cells)
        most = fewest if self.probe_ratio is None else min(4 * self.n_probe, n_cells)
        if fewest >= n_cells:
            return np.repeat(np.arange(n), n_cells), np.tile(np.arange(n_cells), n)
        tolerance = self._tolerance(row_sqnorms, self._cell_sqnorms)
        cells = self._cells_float64
        kernel = compiled(_probe_slots) if USE_COMPILED else None
        if kernel is not None:  # numpy's calls cost more at one image's rows
            slot_rows = np.empty(n * most, np.int64)
            slot_cells = np.empty(n * most, np.int64)
            filled = kernel(cell_d, data, cells, row_sqnorms, tolerance,
                            self.probe_ratio or 0.0, fewest, most, slot_rows, slot_cells)
            return slot_rows[:filled], slot_cells[:filled]
        chosen, unsure = self._choose_cells_numpy(cell_d, row_sqnorms, tolerance,
                                                  fewest, most)
        unsure = np.flatnonzero(unsure)
        for start in range(0, len(unsure), 64):  # bounded memory
            rows = unsure[start:start + 64]
            d = ((data[rows].astype(np.float64)[:, None, :] - cells[None]) ** 2).sum(-1)
            order = np.argsort(d, axis=1, kind="stable")
            count = np.full(len(rows), fewest)
            if self.probe_ratio is not None:
                nearest = np.take_along_axis(d, order[:, :1], 1)
                count = np.clip((d <= self.probe_ratio * nearest).sum(1), fewest, most)
            taken = np.zeros(d.shape, bool)
            np.put_along_axis(taken, order, np.arange(n_cells) < count[:, None], axis=1)
            chosen[rows] = taken
        rows, cells = np.nonzero(chosen)
        return rows.astype(np.int64, copy=False), cells.astype(np.int64, copy=False)

    def _choose_cells_numpy(self, cell_d, row_sqnorms, tolerance, fewest: int,
                            most: int):
        """The cells each row probes, by float32 distances, ``chosen`` (n,
        n_cells) bool, and the rows where float32 cannot decide, ``unsure`` (n,)
        bool (see :func:`_probe_slots`)."""
        n = len(cell_d)
        if self.probe_ratio is None:
            chosen = np.zeros(cell_d.shape, bool)
            unsure = np.zeros(n, bool)
            ranked = [(fewest, np.arange(n))]
        else:
            limit = self.probe_ratio * (cell_d.min(1) + row_sqnorms) - row_sqnorms
            chosen = cell_d <= limit[:, None]
            # either side of the limit by less than both roundings (each distance's,
            # and the nearest's times the ratio): float64 decides
            band = (1 + self.probe_ratio) * tolerance
            unsure = (np.abs(cell_d - limit[:, None]) <= band[:, None]).any(1)
            counts = chosen.sum(1)
            ranked = [(fewest, np.flatnonzero(counts < fewest)),
                      (most, np.flatnonzero(counts > most))]
        for k, rows in ranked:
            if not len(rows):
                continue
            parts = np.argpartition(cell_d[rows], (k - 1, k), axis=1)
            unsure[rows[self._ties(row_sqnorms[rows], cell_d[rows, parts[:, k - 1]],
                                   cell_d[rows, parts[:, k]], self._cell_sqnorms)]] = True
            chosen[rows] = False
            chosen[rows[:, None], parts[:, :k]] = True
        return chosen, unsure

    def _predict_ivf(self, data: np.ndarray, with_second: bool, quantized: bool = True,
                     probed=None):
        """The inverted file's words (:meth:`_assign`); ``probed``, where
        known, is the rows' |x|^2 and (row, cell) slots (the 16-bit scan's
        unsure rows, searched again: each row's cells are its own, whatever
        the batch)."""
        if probed is None:
            row_sqnorms, integers, row_l1 = _row_summary(data)
            slot_rows, slot_cells = self._probed_cells(data, row_sqnorms)
        else:
            (row_sqnorms, slot_rows, slot_cells), integers, row_l1 = probed, None, None
        # The (row, cell) slots sorted by cell, so that each cell's words are read
        # once for all the rows probing it; each row keeps the three nearest words
        # of all its probed cells (four in the 16-bit scan with the second word;
        # past the second they only settle near ties: :meth:`_near_words`).
        # numpy sorts 16-bit integers stably by radix (64-bit ones by merging):
        # the same order, for less at one image's few thousand slots
        order = np.argsort(slot_cells.astype(np.int16) if len(self._cells) < 2 ** 15
                           else slot_cells, kind="stable")
        bounds = np.searchsorted(slot_cells[order], np.arange(len(self._cells) + 1))
        rows_of = slot_rows[order]
        scan = _compiled_scan() if data.dtype == np.float32 else None
        if quantized and scan is not None and scan.QUANTIZED:
            rounded = self._as_int16(data, row_sqnorms, integers)
            if rounded is not None:
                return self._predict_quantized(data, rounded, row_sqnorms, rows_of,
                                               bounds, with_second, scan, row_l1,
                                               (slot_rows, slot_cells))
        if scan is not None:
            # without a numpy call per cell (the numpy path's cost at one image's
            # few hundred descriptors). Its float32 sums round otherwise than
            # BLAS's, which the near ties below absorb.
            group_bounds, groups, group_sqnorms = self._word_groups(scan.LANES)
            best = np.full((len(data), scan.KEPT), np.inf, np.float32)
            position = np.full((len(data), scan.KEPT), -1, np.int32)
            scan.scan_cells(np.ascontiguousarray(data), rows_of, bounds.astype(np.int64),
                            self._cell_bounds, group_bounds, groups, group_sqnorms, 0.0,
                            best, position)
            best, position = best[:, :3], position[:, :3]
        else:
            best, position = self._scan_cells_numpy(data, rows_of, bounds)
        first, second = best[:, 0].copy(), best[:, 1].copy()
        word = self._cell_order[np.maximum(position[:, 0], 0)]
        second_word = np.full(len(data), -1, np.int32)
        if with_second:
            found = np.isfinite(second) & (position[:, 1] >= 0)
            second_word[found] = self._cell_order[position[found, 1]]
        self._settle_ties(data, row_sqnorms, word, second_word, first, second,
                          lambda rows: self._near_words(
                              best[rows], positions=position[rows],
                              probed=_pairs_of(rows, slot_rows, slot_cells),
                              row_sqnorms=row_sqnorms[rows]))
        return word, second_word, first, second

    def _as_int16(self, data: np.ndarray, row_sqnorms: np.ndarray, integers=None):
        """``data`` (its rows' ``row_sqnorms``, float64) in 16-bit integers for
        the quantized scan, and the rounded words it is compared with; None
        where the words cannot be rounded (an odd length, all zero).

        Integer values (OpenCV's SIFT descriptors in [0, 255], ORB's unpacked
        bits) are taken as they are; others (RootSIFT, dense SIFT, integers too
        large) are scaled by a power of two and rounded, as finely as int16 and
        the scan's int32 sums allow. No sum can wrap: each partial sum of
        products is at most |X|_2 |W|_2 (Cauchy-Schwarz), kept below 2^31.

        ``integers``, where given, is ``data`` in int16, known to be whole
        numbers within its range (:func:`_row_summary`).

        Returns
        -------
        integers : ndarray of shape (n, dim), int16
            ``rint(data * quantum)``.
        quantum : float
            A power of two (1 for integer data).
        error : float
            The largest ``|data - integers / quantum|`` (0 for integer data).
        words : _RoundedWords
        """
        words = self._rounded_words()
        if words is None:
            return None
        largest = None
        if integers is None:
            largest = float(np.abs(data).max(initial=0))
            integers = data.astype(np.int16) if largest <= 2 ** 15 - 1 else None
            if integers is not None and not np.array_equal(integers, data):
                integers = None
        # the largest |X|^2 a row may have, with room for float64's rounding
        most = (2 ** 31 - 1) ** 2 / max(words.sqnorm, 1.0) * (1 - 2 ** -40)
        # integers' squares sum exactly in float64
        if integers is not None and row_sqnorms.max(initial=0) <= most:
            quantum, error = 1.0, 0.0
        else:
            quantum = 1.0
            if largest is None:
                largest = float(np.abs(data).max(initial=0))
            if largest > 0:
                # |rint(x q)|_2 <= q |x|_2 + sqrt(dim) / 2 <= sqrt(most)
                room = min((2 ** 15 - 1) / largest,
                           (np.sqrt(most) - np.sqrt(data.shape[1]) / 2)
                           / np.sqrt(row_sqnorms.max()))
                if not room > 0:
                    return None
                quantum = 2.0 ** np.floor(np.log2(room))
            rounded = np.rint(data.astype(np.float64) * quantum)
            error = float(np.abs(data - rounded / quantum).max(initial=0))
            integers = rounded.astype(np.int16)
        if not 2.0 ** -60 < words.quantum * quantum < 2.0 ** 60:
            return None  # the scan's scale would leave float32's normal range
        return integers, float(quantum), error, words

    def _in_groups(self, values, group_bounds, lanes: int, padding):
        """``values`` (n_words, ...), one per sorted word, placed where the
        scan's groups of ``lanes`` hold those words (each cell's last group
        filled with ``padding``): shape (n_groups * lanes, ...)."""
        sizes = np.diff(self._cell_bounds)
        cells = np.repeat(np.arange(len(sizes)), sizes)
        slots = (group_bounds[cells] * lanes
                 + np.arange(len(cells)) - self._cell_bounds[cells])
        placed = np.full((group_bounds[-1] * lanes,) + values.shape[1:], padding,
                         values.dtype)
        placed[slots] = values
        return placed

    def _rounded_words(self) -> _RoundedWords | None:
        """The sorted words rounded to int16 for the quantized scan
        (:func:`cvsearch._simd.dot_rows_quantized`), made once: half the bytes
        of the float32 groups (5 MB at 20,000 SIFT words), which the rows the
        float32 scan decides still read. Their largest coordinate is scaled to
        at most 2^15 - 1 by a power of two (1/128 apart for SIFT's words).
        None where the descriptors have an odd length, or the words are all
        zero.
        """
        from cvsearch import _simd

        if self._rounded is None:
            words = self.centers_[self._cell_order].astype(np.float64)
            peak = float(np.abs(words).max(initial=0))
            if words.shape[1] % 2 or peak == 0:
                self._rounded = (None,)
                return None
            quantum = 2.0 ** np.floor(np.log2((2 ** 15 - 1) / peak))
            rounded = np.rint(words * quantum)
            lanes = _simd.LANES
            group_bounds, _, group_sqnorms = self._word_groups(lanes)
            flat = self._in_groups(rounded.astype(np.int16), group_bounds, lanes, 0)
            groups = np.ascontiguousarray(flat.reshape(-1, lanes, words.shape[1] // 2, 2)
                                          .transpose(0, 2, 1, 3))
            # one assignment: threads see all or nothing
            self._rounded = (_RoundedWords(
                group_bounds, groups, group_sqnorms, float(quantum),
                float(np.abs(words - rounded / quantum).max()),
                float(np.abs(rounded / quantum).sum(1).max()),
                float((rounded ** 2).sum(1).max())),)
        return self._rounded[0]

    def _predict_quantized(self, data, rounded, row_sqnorms, rows_of, bounds,
                           with_second: bool, scan, row_l1, slots):
        """:meth:`_predict_ivf` with the scan in 16-bit integers (its results);
        ``rounded`` is :meth:`_as_int16`'s, ``row_l1`` the rows' |x|_1 where
        known (:func:`_row_summary`; else None), ``slots`` the (row, cell)
        slots, sorted by row.

        The scan keeps each row's three nearest rounded words, four with the
        second word (``scan_cells_four``). The roundings move a distance by at
        most ``moved``: 2 (|x|_1 times the words' largest rounding error, plus
        the data's times the largest L1 norm of a rounded word), and the
        tolerance for float32's. Where the nearest kept is nearer than the
        second by more than twice that, it is the row's word (with the second
        word, where the second also leads the third so, they are the row's two
        words, and only their distances are measured again in float64).
        Elsewhere the kept words are measured again in float64 (as
        ``_settle_ties`` does): a word not kept is at least the last kept's
        rounded distance less ``moved`` away, and where that is beyond the
        nearest kept (and the second, for the second word) they are exact;
        otherwise the float32 scan decides, for those rows
        (one-off, Caltech-101 at 20,000 words: SIFT's, 1 row in 80,000 for the
        word and 1 in 17,000 with the second; RootSIFT's, 1 in 450 and 1 in 170).
        So the words are the float64 nearest (equal: the smaller), which the
        float32 scan gives once its near ties are settled.

        The distances are those in float64, rounded to float32, with the second
        word; without it the scan's rounded ones (:meth:`predict` drops them).
        """
        integers, quantum, data_error, table = rounded
        kept = 4 if with_second else 3
        best = np.full((len(data), scan.KEPT), np.inf, np.float32)
        position = np.full((len(data), scan.KEPT), -1, np.int32)
        (scan.scan_cells_four if with_second else scan.scan_cells)(
            integers, rows_of, bounds.astype(np.int64), self._cell_bounds,
            table.group_bounds, table.groups, table.group_sqnorms,
            -2.0 / (table.quantum * quantum), best, position)
        best, position = best[:, :kept], position[:, :kept]
        # x.w - x'.w' = x.(w - w') + (x - x').w': each part at most a norm
        # times the other side's largest rounding error
        if row_l1 is None:
            row_l1 = np.abs(data).sum(1, dtype=np.float64)
        moved = (2.0 * (row_l1 * table.error + data_error * table.l1)
                 + self._tolerance(row_sqnorms, self._center_sqnorms))
        approximate = best.astype(np.float64)
        word = self._cell_order[np.maximum(position[:, 0], 0)]
        second_word = np.full(len(data), -1, np.int32)
        first, second = best[:, 0].copy(), best[:, 1].copy()

        def measured(rows, columns: int):
            """The kept words of ``rows``, their first ``columns``, measured
            again in float64, nearest first (equal: the smaller word; -1 and inf
            where a row probed fewer words); the rows' words and distances
            become theirs."""
            words = np.empty((len(rows), columns), np.int64)
            exact = np.empty((len(rows), columns), np.float64)
            scan.kept_in_float64(data[rows], self.centers_, self._cell_order,
                                 np.ascontiguousarray(position[rows, :columns]),
                                 row_sqnorms[rows], words, exact)
            word[rows] = words[:, 0]
            first[rows], second[rows] = exact[:, 0], exact[:, 1]
            if with_second:
                second_word[rows] = np.where(np.isfinite(exact[:, 1]), words[:, 1], -1)
            return exact

        # a row that probed a single word: its word leads by inf (the next gap,
        # inf - inf, is NaN: not sure, and measured, as the second word needs)
        leads = approximate[:, 1] - approximate[:, 0] > 2 * moved
        if with_second:
            # the two in their order, and the third beyond the second's reach:
            # their distances alone are measured again
            leads &= approximate[:, 2] - approximate[:, 1] > 2 * moved
            if leads.any():
                measured(np.flatnonzero(leads), 2)
            check = np.flatnonzero(~leads)
        else:
            check = np.flatnonzero(~leads & np.isfinite(approximate[:, 1]))
        if not len(check):
            return word, second_word, first, second
        exact = measured(check, kept)
        last = approximate[check, -1]  # inf: every probed word kept
        unsure = check[np.isfinite(last) & ~(last - moved[check]
                                             > exact[:, 1 if with_second else 0])]
        if len(unsure):
            again = self._predict_ivf(data[unsure], with_second, quantized=False,
                                      probed=(row_sqnorms[unsure],
                                              *_pairs_of(unsure, *slots)))
            for values, replaced in zip((word, second_word, first, second), again):
                values[unsure] = replaced
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
            flat = self._in_groups(self.centers_[self._cell_order] * np.float32(-2),
                                   group_bounds, lanes, 0)
            group_sqnorms = self._in_groups(self._sorted_sqnorms, group_bounds, lanes,
                                            np.inf)
            groups = np.ascontiguousarray(
                flat.reshape(-1, lanes, flat.shape[1]).transpose(0, 2, 1))
            cached = (group_bounds.astype(np.int64), groups, group_sqnorms)
            self._groups = cached  # one assignment: threads see all or nothing
        return cached

    def _near_words(self, scanned, positions, probed, row_sqnorms):
        """The words that can be nearest to rows whose two nearest nearly tie,
        from the inverted file's scan (:meth:`_settle_ties`).

        Parameters
        ----------
        scanned : ndarray of shape (k, 3), float32
            Each row's three nearest words' distances (less the row's norm), as
            the scan found them, nearest first.
        positions : ndarray of shape (k, 3), int32
            Their positions in the sorted words (-1: none).
        probed : tuple of two ndarrays of shape (p,), int64
            The rows' probed cells, as (row of the k, cell) pairs.
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
        every = near[probed[0], 2]  # rows whose third is near too: every probed word
        full_rows, cells = probed[0][every], probed[1][every]
        lo = self._cell_bounds[cells]
        counts = self._cell_bounds[cells + 1] - lo
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        found.append(np.repeat(lo, counts) + within)
        rows = np.concatenate([rows, np.repeat(full_rows, counts)]).astype(np.int64)
        words = self._cell_order[np.concatenate(found)].astype(np.int64)
        keys = np.unique(rows * self.n_words + words)
        return keys // self.n_words, keys % self.n_words

    def _scan_cells_numpy(self, data, rows_of, bounds):
        """The compiled scan (:mod:`cvsearch._simd`) in numpy: cell c is probed
        by the rows ``rows_of[bounds[c]:bounds[c + 1]]`` of ``data`` (n, dim).
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
        # each row's slots side by side, (n, 3 * most slots of a row; inf and -1
        # beyond its own), then its three smallest by (distance, position):
        # sorted by position, then stably by distance
        by_row = np.argsort(rows_of, kind="stable")
        counts = np.bincount(rows_of, minlength=len(data))
        width = max(int(counts.max(initial=0)), 1)
        column = np.arange(n_slots) - np.repeat(np.cumsum(counts) - counts, counts)
        side_values = np.full((3, len(data), width), np.inf, np.float32)
        side_found = np.full((3, len(data), width), -1, np.int32)
        side_values[:, rows_of[by_row], column] = values[:, by_row]
        side_found[:, rows_of[by_row], column] = found[:, by_row]
        values = side_values.transpose(1, 0, 2).reshape(len(data), -1)
        found = side_found.transpose(1, 0, 2).reshape(len(data), -1)
        # the padding (-1) sorts first by position, but last by distance (inf)
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
        Parameters saved before ``probe_ratio`` existed leave it out: None, as
        those vocabularies searched.

        Raises
        ------
        ValueError
            If the arrays are inconsistent with each other or with ``params``.
        """
        vocabulary = cls(**saved_params(params))
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


def _pairs_of(rows, slot_rows, slot_cells):
    """The (row, cell) pairs of ``rows`` (m,) among ``slot_rows, slot_cells``
    (sorted by row), as (position in ``rows``, cell), int64."""
    starts = np.searchsorted(slot_rows, rows)
    counts = np.searchsorted(slot_rows, rows, side="right") - starts
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return (np.repeat(np.arange(len(rows)), counts),
            slot_cells[np.repeat(starts, counts) + within])


def saved_params(params: dict) -> dict:
    """Vocabulary parameters as saved, completed with those older files leave
    out: ``probe_ratio`` None (exactly ``n_probe`` cells, as they searched)."""
    return {"probe_ratio": None, **params}


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


def _row_summary(data: np.ndarray):
    """Each row's |x|^2 (float64, as :meth:`Vocabulary._row_sqnorms` sums
    them), and where every value is a whole number within int16's range
    (SIFT's descriptors, ORB's bits) the rows in int16 and each row's |x|_1
    (float64), else None and None.

    With numba, one pass over the rows finds all three: whole numbers' squares
    and absolute values sum exactly in any order (below 2^53), so its sums are
    numpy's (where the values are not whole, numpy sums the squares, in its own
    order). Without numba: numpy's |x|^2, and None, None.
    """
    kernel = (compiled(_whole_rows, fastmath={"reassoc", "contract"})
              if USE_COMPILED and data.dtype == np.float32 and data.ndim == 2 else None)
    if kernel is not None:
        whole, integers, sqnorms, l1 = kernel(data)
        if whole:
            return sqnorms, integers, l1
    return Vocabulary._row_sqnorms(data), None, None


def _whole_rows(data):
    """Whether every value of ``data`` (n, dim) float32 is a whole number in
    [-32767, 32767]; if so also them in int16 (n, dim), and each row's |x|^2
    and |x|_1 (n,) float64 (else what was filled before it gave up). Compiled
    with reassociation: whole numbers sum exactly in any order, and their sums
    are only used then."""
    n, dim = data.shape
    integers = np.empty((n, dim), np.int16)
    sqnorms = np.empty(n, np.float64)
    l1 = np.empty(n, np.float64)
    for i in range(n):
        whole = True  # each value clamped and truncated, compared in bulk
        for k in range(dim):
            v = data[i, k]
            rounded = np.int16(min(max(v, np.float32(-32767)), np.float32(32767)))
            integers[i, k] = rounded
            whole &= rounded == v
        if not whole:  # RootSIFT's: the first row gives up
            return False, integers, sqnorms, l1
        squares = absolutes = 0.0
        for k in range(dim):
            v = np.float64(data[i, k])
            squares += v * v
            absolutes += abs(v)
        sqnorms[i] = squares
        l1[i] = absolutes
    return True, integers, sqnorms, l1


def _probe_slots(cell_d, data, cells, row_sqnorms, tolerance, ratio, fewest, most,
                 slot_rows, slot_cells):
    """:meth:`Vocabulary._probed_cells` in one loop: the (row, cell) pairs into
    ``slot_rows`` and ``slot_cells`` (at least n * most long), sorted by row,
    then cell; returns how many.

    Row i's squared distances to the cells, less its ``row_sqnorms[i]``, are
    ``cell_d[i]`` (m,) float32; ``cells`` (m, dim) float64 are the cells,
    ``data`` (n, dim) float32 the rows. ``ratio`` 0: exactly ``fewest`` cells.
    Where float32 cannot decide (a distance within ``(1 + ratio) *
    tolerance[i]`` of the ratio's limit, or within ``tolerance[i]`` of the next
    cell's at a count bounded by ``fewest`` or ``most``), the row's squared
    distances are computed again in float64, elementwise, and decide.
    """
    n, m = cell_d.shape
    kept = np.empty(most + 1, np.float64)
    where = np.empty(most + 1, np.int64)
    chosen = np.empty(m, np.bool_)
    values = np.empty(m, np.float64)
    filled = 0
    for i in range(n):
        offset = row_sqnorms[i]
        for j in range(m):
            values[j] = cell_d[i, j]
        for attempt in range(2):  # float32's distances, then float64's if unsure
            unsure = False
            k = fewest
            if ratio > 0:
                low = np.inf
                for j in range(m):
                    low = min(low, values[j])
                limit = ratio * (low + offset) - offset
                band = (1 + ratio) * tolerance[i]
                count = 0
                for j in range(m):
                    chosen[j] = values[j] <= limit
                    count += chosen[j]
                    if abs(values[j] - limit) <= band:
                        unsure = True
                k = fewest if count < fewest else (most if count > most else 0)
            if k > 0:  # the k + 1 nearest, in order (ties: the smaller cell)
                for p in range(k + 1):
                    kept[p] = np.inf
                    where[p] = -1
                for j in range(m):
                    v = values[j]
                    if v < kept[k]:
                        p = k
                        while p > 0 and kept[p - 1] > v:
                            kept[p] = kept[p - 1]
                            where[p] = where[p - 1]
                            p -= 1
                        kept[p] = v
                        where[p] = j
                for j in range(m):
                    chosen[j] = False
                for p in range(k):
                    chosen[where[p]] = True
                if kept[k] - kept[k - 1] <= tolerance[i]:
                    unsure = True
            if attempt == 1 or not unsure:
                break
            dim = data.shape[1]
            for j in range(m):
                # eight sums side by side, combined pairwise: one chain of
                # additions waited on each (1.4% of rows come here, one-off)
                r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = 0.0
                for t in range(0, dim - dim % 8, 8):
                    d0 = np.float64(data[i, t]) - cells[j, t]
                    d1 = np.float64(data[i, t + 1]) - cells[j, t + 1]
                    d2 = np.float64(data[i, t + 2]) - cells[j, t + 2]
                    d3 = np.float64(data[i, t + 3]) - cells[j, t + 3]
                    d4 = np.float64(data[i, t + 4]) - cells[j, t + 4]
                    d5 = np.float64(data[i, t + 5]) - cells[j, t + 5]
                    d6 = np.float64(data[i, t + 6]) - cells[j, t + 6]
                    d7 = np.float64(data[i, t + 7]) - cells[j, t + 7]
                    r0 += d0 * d0
                    r1 += d1 * d1
                    r2 += d2 * d2
                    r3 += d3 * d3
                    r4 += d4 * d4
                    r5 += d5 * d5
                    r6 += d6 * d6
                    r7 += d7 * d7
                total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
                for t in range(dim - dim % 8, dim):
                    diff = np.float64(data[i, t]) - cells[j, t]
                    total += diff * diff
                values[j] = total
            offset = 0.0
        for j in range(m):
            if chosen[j]:
                slot_rows[filled] = i
                slot_cells[filled] = j
                filled += 1
    return filled
