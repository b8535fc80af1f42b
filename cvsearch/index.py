"""The index: train a vocabulary, add and remove images, query, save and load.

This module ties the stages together; the work of each stage lives in its own
module (features, vocabulary, weighting, scoring, rerank, storage).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from cvsearch import _threads, index_folder, storage
from cvsearch._validation import check_choice, check_float, check_int, check_n_jobs
from cvsearch.features import FeatureExtractor, Features, can_mirror, mirror_permutation
from cvsearch.parallel import CHUNK, ImageWords, SkippedImage, check_words, extract_many
from cvsearch.rerank import DEFAULT_MIN_INLIERS
from cvsearch.searcher import (
    VERIFICATIONS,
    Searcher,
    check_assignment,
    check_flag,
    check_ranking,
)
from cvsearch.store import Segment, Store
from cvsearch.vocabulary import Vocabulary, sample_rows
from cvsearch.weighting import DEFAULT_TF_POWER, pyramid_size

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = index_folder.FORMAT, index_folder.FORMAT_VERSION


class _Snapshot(NamedTuple):
    """One consistent state for a query (safe across threads): the store's value
    never changes, and the vocabulary is the one that assigned its words."""

    store: Store
    vocabulary: Vocabulary


class Names(Mapping):
    """The names of an index's images, by id (a read-only view of one state).

    ``names[id]`` is an image's name; iterating gives the ids in order, and
    :meth:`values` the names in id order. Ids are stable: removing images does
    not change the others'.
    """

    def __init__(self, store: Store):
        self._store = store

    def __getitem__(self, id_) -> str:
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
            raise TypeError(f"names are looked up by integer image id, got "
                            f"{type(id_).__name__} {id_!r}")
        if not 0 <= int(id_) < 2**63:  # ids are int64: no image has another
            raise KeyError(f"no image with id {id_} in this index")
        try:
            return self._store.name_of(int(id_))
        except KeyError:
            raise KeyError(f"no image with id {id_} in this index") from None

    def __iter__(self):
        return iter(self._store.ids().tolist())

    def __len__(self) -> int:
        return len(self._store)

    def values(self) -> tuple:
        """The names, in id order."""
        return self._store.names_in_order()

    def __repr__(self) -> str:
        shown = ", ".join(f"{i}: {n!r}" for i, n in zip(self, self.values()[:3]))
        more = ", ..." if len(self) > 3 else ""
        return f"Names({{{shown}{more}}})"


class Index:
    """Bag-of-visual-words image index with optional geometric re-ranking.

    Images get integer ids in insertion order, for life: ``remove`` never
    renumbers the others (ids are not reused). ``names[id]`` is an image's name.
    The images are stored in immutable segments, one per added batch, with
    removed images marked deleted (see :mod:`cvsearch.store`); ``compact`` drops
    them and merges segments.

    Weights: the idf is recomputed from the images in the index whenever images are
    added or removed (it is not frozen at ``train``), so an index that was trained,
    then given A and then B, answers exactly like one given A and B at once, and
    removing an image answers exactly as if it had never been added.

    Blank images (no keypoints) are added, with a warning: they match nothing and
    score 0 against every query. A blank query scores 0 against every image, and its
    results are then in id order.

    Queries may run from several threads at once; ``add`` and ``remove`` may run
    while they do (each query sees the index as it was when it started).

    What shapes the stored data cannot drift from it: setting ``power``,
    ``tf_power`` or ``pyramid_levels`` re-weights the stored words (nothing is
    extracted again); ``extractor`` and ``vocabulary`` can be set only while the
    index is empty, and an extractor or a fitted vocabulary is immutable. Features
    passed in must come from ``index.extractor`` (they say what made them).

    Parameters
    ----------
    extractor : FeatureExtractor, optional
        Defaults to ``FeatureExtractor("sift")``.
    n_words : int
        Vocabulary size, >= 2.
    random_state : int or None
        Seed for the vocabulary (sampling and k-means).
    power : float in (0, 1]
        Power-law normalisation of the tf-idf vectors (Perronnin et al., ECCV
        2010): below 1 flattens the whole vector, idf included; 1 is plain tf-idf.
    tf_power : float in (0, 1]
        Exponent of each word's count in an image before the idf weighting: below
        1 damps words repeated within an image ("burstiness", Jegou et al., CVPR
        2009) and keeps the idf. Small values suit instance search, where a
        repeated texture should not outvote the distinct details of an object
        (see ``benchmarks/results/instance.md``); 1 keeps the counts.
    pyramid_levels : int
        Spatial pyramid levels above the whole image (0: none; 2: 1x1 + 2x2 + 4x4
        cells). Helps category search, hurts instance search under large
        translation or rotation. See ``benchmarks/results/caltech101.md``.
    **vocabulary_params
        Further arguments of :class:`cvsearch.vocabulary.Vocabulary`
        (``max_samples``, ``batch_size``, ``max_iter``, ``n_probe``,
        ``probe_ratio``, ``n_cells``, ``exact_below``).

    Attributes
    ----------
    extractor : FeatureExtractor
    vocabulary : Vocabulary
    warm_changes : bool
        Whether what a changed state's queries need (its idf and norms, or
        bounds on the norms from the state before: see
        :meth:`cvsearch.store.Store.prepare`) is computed before it becomes
        visible (by ``add``, ``remove``, ``compact``), or by its first query
        (False, the default). Not saved: set it again after ``load``.

    Examples
    --------
    >>> from cvsearch import FeatureExtractor, Index
    >>> index = Index(FeatureExtractor("sift"), n_words=1000, random_state=0)
    >>> # index.train(paths).add(paths)
    >>> # scores, ids = index.query("query.jpg", k=10, rerank=50)
    """

    def __init__(self, extractor: FeatureExtractor | None = None,
                 n_words: int = 20_000, *, random_state: int | None = None,
                 power: float = 1.0, pyramid_levels: int = 0,
                 tf_power: float = DEFAULT_TF_POWER, **vocabulary_params):
        self._lock = threading.RLock()
        self.warm_changes = False  # see the class docstring; cvsearch serve sets it
        self._origin = None  # storage.Origin this index was loaded from or saved to
        self._saved_store = None  # the state that _origin's folder holds
        self.lineage = storage.new_lineage()  # kept by every save of this index
        #: The folder that relative image names are relative to (saved with the
        #: index; ``cvsearch index`` sets it to where it ran), or None.
        self.images_root: str | None = None
        self._store = None
        self._name_to_id = {}
        self._saved_segments = {}  # id(segment) -> (segment, its manifest entry)
        self._saved_vocabulary = None  # (vocabulary, its manifest entry), as saved
        self._checked = True  # made here, or every file hashed when loaded
        self.extractor = FeatureExtractor() if extractor is None else extractor
        self.vocabulary = Vocabulary(n_words, random_state=random_state,
                                     **vocabulary_params)
        self.power = power
        self.tf_power = tf_power
        self.pyramid_levels = pyramid_levels

    # ------------------------------------------------- what shapes the data
    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor; settable only while the index is empty."""
        return self._extractor

    @extractor.setter
    def extractor(self, extractor: FeatureExtractor):
        self._replace_part("extractor", extractor, FeatureExtractor)

    @property
    def vocabulary(self) -> Vocabulary:
        """The visual vocabulary; settable only while the index is empty (to share
        a trained vocabulary between indexes)."""
        return self._vocabulary

    @vocabulary.setter
    def vocabulary(self, vocabulary: Vocabulary):
        self._replace_part("vocabulary", vocabulary, Vocabulary)

    def _replace_part(self, what: str, part, kind: type):
        if not isinstance(part, kind):
            raise TypeError(f"{what} must be a {kind.__name__}, got "
                            f"{type(part).__name__}")
        with self._lock:
            self._refuse_if_filled(what)
            setattr(self, f"_{what}", part)
            self._reset_store()

    def _reset_store(self):
        """An empty store for the current vocabulary and weighting (while empty)."""
        if hasattr(self, "_vocabulary") and hasattr(self, "_pyramid_levels"):
            self._store = Store(self._vocabulary.n_words, self._pyramid_levels,
                                self._power, tf_power=self._tf_power)

    def _refuse_if_filled(self, what: str):
        if len(self):
            raise ValueError(f"this index holds {len(self)} images made with its "
                             f"{what}; changing it would make them meaningless. "
                             "Create a new Index (or Index.build) instead")

    @property
    def power(self) -> float:
        """Power-law exponent of the weights; setting it re-weights the index."""
        return self._power

    @power.setter
    def power(self, power: float):
        self._set_exponent("power", power)

    @property
    def tf_power(self) -> float:
        """Exponent of the term counts; setting it re-weights the index."""
        return self._tf_power

    @tf_power.setter
    def tf_power(self, tf_power: float):
        self._set_exponent("tf_power", tf_power)

    def _set_exponent(self, name: str, value: float):
        value = check_float(value, name, minimum=0.01, maximum=1.0)
        with self._lock:
            setattr(self, f"_{name}", value)
            self._reweight()

    @property
    def pyramid_levels(self) -> int:
        """Spatial pyramid levels; setting it re-weights the index."""
        return self._pyramid_levels

    @pyramid_levels.setter
    def pyramid_levels(self, levels: int):
        levels = check_int(levels, "pyramid_levels", minimum=0,
                           hint="0 for none, 1 or 2 for category search")
        if levels > 4:  # (the cells of many levels would take forever to count)
            raise ValueError(f"pyramid_levels={levels}: use at most 4 (4 levels make "
                             f"{pyramid_size(4)} cells per word)")
        with self._lock:
            self._pyramid_levels = levels
            self._reweight()

    def _reweight(self):
        if self._store is None:
            self._reset_store()
        elif hasattr(self, "_pyramid_levels"):
            self._publish(self._store.reweighted(self._pyramid_levels, self._power,
                                                 self._tf_power))

    # ------------------------------------------------------------------ state
    def _current(self) -> _Snapshot:
        # No lock: writers publish a new store in one assignment, so readers never
        # wait for a writer (only, without warm_changes, for the first reader of a
        # changed state computing its norms).
        return _Snapshot(self._store, self._vocabulary)

    def _publish(self, store: Store) -> None:
        """Make ``store`` the current state (under ``_lock``). What its queries
        need (:meth:`Store.prepare`) is computed first only if ``warm_changes``;
        else by its first query, so changes in a row cost their own images, not
        the index's."""
        if self.warm_changes and len(store):
            store.prepare()
        self._store = store

    @property
    def n_words(self) -> int:
        return self.vocabulary.n_words

    @property
    def names(self) -> Names:
        """Names of the images, by id: ``names[id]`` (see :class:`Names`)."""
        return Names(self._store)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the images, increasing. ndarray of shape (len(index),), int64."""
        return self._store.ids()

    @property
    def is_trained(self) -> bool:
        return self.vocabulary.is_fitted

    def __len__(self) -> int:
        store = getattr(self, "_store", None)
        return 0 if store is None else len(store)

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return (f"Index({self.extractor!r}, n_words={self.n_words}, {state}, "
                f"{len(self)} images)")

    def _check_trained(self):
        if not self.is_trained:
            from sklearn.exceptions import NotFittedError  # only to raise (see Vocabulary)

            raise NotFittedError("this index has no vocabulary yet; call "
                                 "index.train(paths) first, or use Index.build(paths)")

    # ------------------------------------------------------------ extraction
    @staticmethod
    def _as_list(images, what: str, ids: bool = False) -> list:
        if ids and isinstance(images, np.ndarray) and images.ndim == 1:
            return images.tolist()
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            raise TypeError(f"{what} takes a list of images; wrap a single image "
                            f"in a list: [{images!r:.40}]")
        try:
            return list(images)
        except TypeError:
            raise TypeError(f"{what} takes a list of paths or arrays, got "
                            f"{type(images).__name__}") from None

    @staticmethod
    def _default_names(images: list, names, what: str) -> list[str]:
        if names is None:
            result = []
            for position, image in enumerate(images):
                if isinstance(image, np.ndarray):
                    raise ValueError(f"{what}: image {position} is an array; give "
                                     "names=[...] to name array images")
                if not isinstance(image, (str, os.PathLike)):
                    raise TypeError(f"{what}: image {position} is a "
                                    f"{type(image).__name__}, not a path or array")
                result.append(os.fspath(image))
            return result
        names = list(names)
        if len(names) != len(images):
            raise ValueError(f"{what}: got {len(names)} names for {len(images)} images")
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{what}: names must be strings, got "
                                f"{type(name).__name__} {name!r}")
        return names

    def _features_of(self, image, finer: bool = True) -> Features | ImageWords:
        """Features of a query: computed (a small image's at twice its size too,
        with ``finer``), or given precomputed by the caller (and then checked to
        come from this index's extractor), or its words given (checked to come
        from this index's vocabulary)."""
        if isinstance(image, Features):
            return self.extractor.check_features(image)
        if isinstance(image, ImageWords):
            return check_words(image, self.extractor, self.vocabulary)
        # a small query is searched at twice its size too (Features.finer)
        return self.extractor.extract(image, finer=finer)

    def _extract_many(self, images: list, names: list[str], *, assign: bool,
                      n_jobs: int, progress, stage: str, scheduler=None):
        """Yield ``(name, item)`` per image, in order: a SkippedImage if a file
        cannot be read, else ImageWords (``assign``) or Features; in this
        process, joblib workers or on Dask (see :mod:`cvsearch.parallel`)."""
        return extract_many(self.extractor, self.vocabulary if assign else None,
                            images, names, n_jobs=n_jobs, scheduler=scheduler,
                            progress=progress, stage=stage)

    # --------------------------------------------------------------- training
    def train(self, images: Sequence, *, n_jobs: int = 1, progress=None,
              scheduler=None) -> Index:
        """Learn the visual vocabulary from the features of ``images``.

        Unreadable files are skipped with a warning.

        Parameters
        ----------
        images : sequence of str, os.PathLike or ndarray
        n_jobs : int
            Worker processes for feature extraction (-1: all cores).
        progress : callable, optional
            ``progress(stage, done, total)`` after each chunk of images, with
            stage ``"train"``.
        scheduler : distributed.Client or str, optional
            Extract on this Dask cluster (a client, or a scheduler address such as
            ``"tcp://host:8786"``) instead of local processes; the results are the
            same. Needs ``pip install 'cvsearch[dask]'``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If the index already holds images (their words would be meaningless
            under a new vocabulary), or there are fewer descriptors than ``n_words``.
        """
        images = self._as_list(images, "train")
        n_jobs = check_n_jobs(n_jobs)
        names = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else f"array {n}"
                 for n, i in enumerate(images)]
        if len(self):
            raise ValueError(f"this index already holds {len(self)} images; retraining "
                             "would invalidate them. Create a new Index to retrain")
        rng = np.random.default_rng(self.vocabulary.random_state)
        per_image = self._sample_per_image(len(images))
        samples = []
        for name, features in self._extract_many(images, names, assign=False,
                                                 n_jobs=n_jobs, progress=progress,
                                                 stage="train", scheduler=scheduler):
            if isinstance(features, SkippedImage):
                logger.warning("skipped %s: %s", name, features.reason)
                continue
            samples.append(_sample_features(features.descriptors, per_image, rng))
        with _threads.budget(n_jobs):
            self._fit_vocabulary(samples, rng)
        return self

    def _sample_per_image(self, n_images: int) -> int:
        # Keep a bounded random share of each image's descriptors, so memory stays
        # near 2 * max_samples however many images there are.
        return max(1, math.ceil(2 * self.vocabulary.max_samples / max(1, n_images)))

    def _fit_vocabulary(self, samples: list, rng: np.random.Generator):
        samples = [s for s in samples if len(s)]
        if not samples:
            raise ValueError(f"got 0 training descriptors, need >= n_words="
                             f"{self.n_words}; train on readable images with texture")
        sample = sample_rows(samples, self.vocabulary.max_samples, rng)
        if len(sample) < self.n_words:
            raise ValueError(f"got {len(sample)} training descriptors, need >= "
                             f"n_words={self.n_words}; add images or lower n_words")
        # A new Vocabulary, never a refit of the current one: that one may be
        # shared with other indexes whose words it made.
        vocabulary = Vocabulary(**self.vocabulary.get_params()).fit(sample)
        with self._lock:
            self._refuse_if_filled("vocabulary")
            self._vocabulary = vocabulary
            self._reset_store()

    @classmethod
    def build(cls, images: Sequence, extractor: FeatureExtractor | None = None,
              n_words: int = 20_000, *, names: Sequence[str] | None = None,
              random_state: int | None = None, n_jobs: int = 1, progress=None,
              train_images: int = 1000, power: float = 1.0, pyramid_levels: int = 0,
              tf_power: float = DEFAULT_TF_POWER, scheduler=None,
              **vocabulary_params) -> Index:
        """Train on (a random subset of) ``images`` and add them all.

        The vocabulary learns from at most ``train_images`` images drawn at random
        (seeded by ``random_state``); their features are computed once and reused
        when they are added, so every image is read once. Memory stays bounded:
        only the training images' features are held at once, and an added image
        keeps its words and keypoints, not its descriptors.

        Parameters are those of :class:`Index`, :meth:`train` and :meth:`add`, and

        train_images : int
            Images the vocabulary is trained on, >= 1.

        Unreadable files are skipped with a warning; the list is in
        ``index.skipped_``.

        Returns
        -------
        Index
        """
        index = cls(extractor, n_words, random_state=random_state, power=power,
                    pyramid_levels=pyramid_levels, tf_power=tf_power,
                    **vocabulary_params)
        images = index._as_list(images, "build")
        names = index._default_names(images, names, "build")
        n_jobs = check_n_jobs(n_jobs)
        train_images = check_int(train_images, "train_images", minimum=1)
        rng = np.random.default_rng(random_state)
        if len(images) <= train_images:
            chosen = np.arange(len(images))
        else:
            chosen = np.sort(rng.choice(len(images), train_images, replace=False))
        per_image = index._sample_per_image(len(chosen))
        with _threads.budget(n_jobs):
            return index._build(images, names, chosen, per_image, rng, n_jobs, progress,
                                scheduler)

    def _build(self, images, names, chosen, per_image, rng, n_jobs, progress,
               scheduler) -> Index:
        """:meth:`build`'s work on this new index, within its thread budget."""
        training = dict(zip(chosen.tolist(), (item for _, item in self._extract_many(
            [images[i] for i in chosen], [names[i] for i in chosen], assign=False,
            n_jobs=n_jobs, progress=progress, stage="train", scheduler=scheduler))))
        self._fit_vocabulary(
            [_sample_features(f.descriptors, per_image, rng)
             for f in training.values() if isinstance(f, Features)], rng)
        # keep words, drop descriptors; a chunk of images per call is cheaper
        extracted = [i for i, item in training.items() if isinstance(item, Features)]
        for start in range(0, len(extracted), CHUNK):
            chunk = extracted[start:start + CHUNK]
            for i, words in zip(chunk, ImageWords.of_many([training[i] for i in chunk],
                                                          self.vocabulary)):
                training[i] = words
        rest = [i for i in range(len(images)) if i not in training]
        extracted = self._extract_many(
            [images[i] for i in rest], [names[i] for i in rest], assign=True,
            n_jobs=n_jobs, progress=None, stage="add", scheduler=scheduler)

        def in_order():
            for i in range(len(images)):
                if i in training:
                    yield names[i], training.pop(i)
                else:
                    yield next(extracted)
                if progress is not None:
                    progress("add", i + 1, len(images))

        self.skipped_ = self._add_extracted(in_order())
        return self

    # ------------------------------------------------------------ add, remove
    def add(self, images: Sequence, names: Sequence[str] | None = None, *,
            n_jobs: int = 1, progress=None, scheduler=None) -> list[SkippedImage]:
        """Add images to the index.

        Files that cannot be read (missing, empty, truncated, not an image, a
        directory) and names already in the index are skipped, logged as warnings
        and returned; the other images are added. The index changes only once all
        features are computed, so an error leaves it as it was.

        Parameters
        ----------
        images : sequence of str, os.PathLike, ndarray, Features or ImageWords
            Paths, arrays of shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA, uint8
            or uint16, features computed beforehand with ``index.extractor``, or
            words assigned beforehand (:meth:`image_words`, by this index or any
            that shares its vocabulary, on any machine).
        names : sequence of str, optional
            One per image; defaults to the paths as given. Required for arrays,
            Features and ImageWords.
        n_jobs : int
            Worker processes for feature extraction and word assignment (-1: all
            cores); the result is the same as with 1.
        progress : callable, optional
            ``progress(stage, done, total)`` after each chunk, stage ``"add"``.
        scheduler : distributed.Client or str, optional
            Extract on this Dask cluster (see :meth:`train`).

        Returns
        -------
        skipped : list of SkippedImage
            ``(name, reason)`` for each image not added.
        """
        self._check_trained()
        images = self._as_list(images, "add")
        names = self._default_names(images, names, "add")
        n_jobs = check_n_jobs(n_jobs)
        with _threads.budget(n_jobs):
            return self._add_extracted(self._extract_many(
                images, names, assign=True, n_jobs=n_jobs, progress=progress,
                stage="add", scheduler=scheduler))

    def image_words(self, images: Sequence, *, n_jobs: int = 1,
                    scheduler=None) -> list:
        """The words this index would store for ``images``, without adding them:
        what a worker computes for another machine's index.

        Returns
        -------
        list of ImageWords or SkippedImage, one per image; ``add`` takes the
        ImageWords (with names) on any index that shares this vocabulary.
        """
        self._check_trained()
        images = self._as_list(images, "image_words")
        names = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else f"image {n}"
                 for n, i in enumerate(images)]
        n_jobs = check_n_jobs(n_jobs)
        with _threads.budget(n_jobs):
            return [item for _, item in self._extract_many(
                images, names, assign=True, n_jobs=n_jobs, progress=None,
                stage="add", scheduler=scheduler)]

    @classmethod
    def merge(cls, indexes: Sequence[Index]) -> Index:
        """One index holding the images of ``indexes``, in order: the same as adding
        all their images to one index (shards built apart, joined).

        Raises
        ------
        ValueError
            If they do not share a vocabulary, an extractor and a weighting, or
            an image name appears twice.
        """
        indexes = list(indexes)
        if not indexes or not all(isinstance(i, Index) for i in indexes):
            raise TypeError("merge takes a non-empty list of Index")
        first = indexes[0]
        first._check_trained()
        for other in indexes[1:]:
            other._check_trained()
            if other.vocabulary.fingerprint != first.vocabulary.fingerprint:
                raise ValueError("merge needs indexes that share one vocabulary; "
                                 "build the shards with the same trained vocabulary")
            if other.extractor != first.extractor or other.weighting != (
                    first.weighting):
                raise ValueError("merge needs indexes with the same extractor, power, "
                                 "tf_power and pyramid_levels")
        merged = Index(first.extractor, first.n_words, **first.weighting)
        merged.vocabulary = first.vocabulary
        entries = []
        for index in indexes:
            store = index._current().store
            fingerprint = index.vocabulary.fingerprint
            params = index.extractor.feature_params()
            for id_, name in zip(store.ids().tolist(), store.names_in_order()):
                entries.append((name, ImageWords(*store.image(id_), fingerprint, params,
                                                 store.thumbnail(id_))))
        skipped = merged._add_extracted(iter(entries))
        if skipped:
            raise ValueError(f"merge: the image name {skipped[0].name!r} appears in "
                             "more than one index")
        return merged

    def _add_extracted(self, extracted) -> list[SkippedImage]:
        """Add ``(name, ImageWords or SkippedImage)`` pairs as one new segment;
        the index changes once, after the last."""
        skipped, kept, seen = [], [], set()
        for name, entry in extracted:
            if isinstance(entry, SkippedImage):
                skipped.append(entry)
            elif name in self._name_to_id or name in seen:
                skipped.append(SkippedImage(name, "an image of this name is already "
                                            "in the index; remove it first"))
            else:
                seen.add(name)
                kept.append((name, entry))
                if len(entry.keypoints) == 0:
                    logger.warning("%s has no keypoints (blank or tiny image); it is "
                                   "added but will match nothing", name)
        for item in skipped:
            logger.warning("skipped %s: %s", item.name, item.reason)
        if not kept:
            return skipped
        names = [name for name, _ in kept]
        with self._lock:
            duplicates = [name for name in names if name in self._name_to_id]
            if duplicates:  # another thread added them meanwhile
                raise ValueError(f"images named {sorted(duplicates)[:5]} were added "
                                 "concurrently; nothing was added")
            # only detected keypoints keep their size and orientation (a grid's
            # are the same in every image and would mislead verification)
            width = 4 if self.extractor.covariant else 2
            store, ids = self._store.add(
                names, [e.words for _, e in kept],
                [np.asarray(e.keypoints)[:, :width] for _, e in kept],
                [e.image_shape for _, e in kept],
                [e.thumbnail for _, e in kept])
            self._publish(store.merge_tail())
            self._name_to_id.update(zip(names, ids.tolist()))
        return skipped

    def id_of(self, name: str) -> int:
        """The id of the image called ``name``.

        Raises
        ------
        KeyError
            If no image has that name.
        """
        try:
            return int(self._name_to_id[name])
        except KeyError:
            raise KeyError(f"no image named {name!r} in this index") from None

    def remove(self, ids: Sequence) -> Index:
        """Remove images by id or by name. The other images keep their ids.

        The images are marked deleted (their segments are not rewritten, so this
        costs as much as the batch); :meth:`compact` reclaims their space.

        Parameters
        ----------
        ids : sequence of int or str
            Ids (as returned by ``query``) or names. All are resolved before
            anything is removed: an unknown id or name raises and leaves the index
            unchanged.

        Returns
        -------
        self
        """
        ids = self._as_list(ids, "remove", ids=True)
        with self._lock:
            live = self._store
            drop = resolve_ids(ids, self._name_to_id, live.locate)
            names = [live.name_of(i) for i in drop]
            self._publish(live.remove(drop))
            for name in names:
                del self._name_to_id[name]
        return self

    def compact(self) -> Index:
        """Drop the removed images from storage and merge the segments into one
        (answers do not change). Returns self."""
        with self._lock:
            self._publish(self._store.compact(max_segments=1))
        return self

    # ------------------------------------------------------------------ query
    def query(self, image, k: int = 10, *, rerank: int = 0,
              min_inliers: int = DEFAULT_MIN_INLIERS, verification: str = "shapes",
              multiple_assignment: bool = True, expand: int = 0,
              mirror: bool = False, return_inliers: bool = False,
              return_evidence: bool = False):
        """The ``k`` most similar images to ``image``.

        Parameters
        ----------
        image : str, os.PathLike, ndarray, Features or ImageWords
            A path, or an array of shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA,
            uint8 or uint16, or features already computed by ``index.extractor``,
            or words already assigned (:meth:`image_words`). A small image (its
            longer side at most a quarter of the extractor's ``max_side``: a
            thumbnail) is also searched at twice its size, as one more view (see
            ``Features.finer``; features given keep theirs if computed with
            ``extract(image, finer=True)``): where that view matched a result
            best, ``evidence.finer`` says so.
        k : int
            Number of results, >= 1.
        rerank : int
            If > 0, verify the top ``rerank`` bag-of-words results geometrically
            and move those with at least ``min_inliers`` inliers up, by inliers.
        min_inliers : int
            Inliers needed to count as geometrically verified (default 10);
            a result decided the same object beyond chance (``evidence.kind``
            "object" or "copy") with fewer counts as verified too.
        verification : {"shapes", "ransac"}
            How: "shapes" proposes a transform from each correspondence's
            keypoint sizes and orientations and refines the best one (fast, and
            strict: an inlier must agree in position, scale and rotation); where
            keypoints have no shapes (dense features, indexes saved before
            shapes were kept) it uses RANSAC. "ransac": a homography fitted by RANSAC
            to the positions alone (see :mod:`cvsearch.rerank`).
        multiple_assignment : bool
            For verification, each query keypoint also matches through its next
            nearest word where that is nearly as near as its own (squared
            distance within ``ASSIGNMENT_RATIO`` = 1.2 times): a blurred or
            slanted view of a patch often lands beside its word. Needs the
            query's descriptors (not with :meth:`similar`, nor with words given
            as ``ImageWords``).
        expand : int
            Average query expansion (Chum et al., ICCV 2007), with ``rerank``:
            the query's vector is averaged with those of its best ``expand``
            verified results and searched again; the verified results stay
            first, the others follow in the expanded query's order, with its
            scores. It finds more views of an object that the first search
            verified, not a better first answer (0, the default: off; see
            benchmarks/results/instance.md).
        mirror : bool
            Also search for the image mirrored left-right (its SIFT descriptors
            permuted, not extracted again: see
            :func:`cvsearch.features.mirror_features`); each of the two verifies
            its own ``rerank`` best, and each result keeps the better of the
            two. SIFT and RootSIFT only (ORB is searched as given).
        return_inliers : bool
            Also return the inlier counts.
        return_evidence : bool
            Also return the :class:`~cvsearch.decision.Evidence` of each result:
            inliers, the a-contrario ``log_nfa``, coverage, and the decision
            ``kind`` ("copy", "object", "none", "unverified"); it replaces the
            inliers (``evidence.inliers``).

        Returns
        -------
        scores : ndarray of shape (min(k, len(index)),), float32
            Bag-of-words cosine similarity in [0, 1]. Without re-ranking they
            decrease; with it the results are in the re-ranked order (verified
            images first, by inliers) and each keeps its bag-of-words score, so
            the scores need not decrease.
        ids : ndarray of shape (min(k, len(index)),), int64
            Best first; ``index.names[ids[i]]`` is the name.
        inliers : ndarray of shape (min(k, len(index)),), int32
            Only with ``return_inliers``: RANSAC inliers, -1 where not verified.
            RANSAC runs as long as finding ``min_inliers`` inliers needs, so
            counts below ``min_inliers`` are lower bounds (:meth:`inliers`
            gives full counts).
        evidence : Evidence of min(k, len(index)) results
            Only with ``return_evidence``.

        Raises
        ------
        NotFittedError
            If the index is not trained.
        ValueError
            If the index is empty, or the image cannot be read.
        FileNotFoundError
            If the image path does not exist.
        """
        ranking = check_ranking(k, rerank, min_inliers, verification,
                                multiple_assignment, expand, mirror)
        searcher = self.searcher()
        # coverage (the copy decision) costs a transform fit per result: only
        # for callers who ask for the decisions
        scores, ids, evidence = searcher.search(self._features_of(image), ranking,
                                                coverage=return_evidence)
        if return_evidence:
            return scores, ids, evidence
        return (scores, ids, evidence.inliers) if return_inliers else (scores, ids)

    def query_batch(self, images: Sequence, k: int = 10, *, rerank: int = 0,
                    min_inliers: int = DEFAULT_MIN_INLIERS,
                    verification: str = "shapes", multiple_assignment: bool = True,
                    expand: int = 0, mirror: bool = False,
                    return_inliers: bool = False, n_jobs: int = 1):
        """:meth:`query` for several images, padded to ``k`` columns.

        ``n_jobs`` images are searched at once (-1: all cores), in threads: the
        extraction, products and verification release the GIL. The answers are
        those of one at a time.

        Returns
        -------
        scores : ndarray of shape (n_images, k), float32, -inf where padded
        ids : ndarray of shape (n_images, k), int64, -1 where padded
        inliers : ndarray of shape (n_images, k), int32, with ``return_inliers``
        """
        images = self._as_list(images, "query_batch")
        ranking = check_ranking(k, rerank, min_inliers, verification,
                                multiple_assignment, expand, mirror)
        k = ranking.k
        searcher = self.searcher()  # one state for the whole batch
        all_scores = np.full((len(images), k), -np.inf, np.float32)
        all_ids = np.full((len(images), k), -1, np.int64)
        all_inliers = np.full((len(images), k), -1, np.int32)
        cores = _threads.cores_of(check_n_jobs(n_jobs))

        def search(image):
            return searcher.search(self._features_of(image), ranking, coverage=False)

        _weigh(searcher, cores)
        # one thread per image searched at once; the libraries' pools under them
        # keep to the cores given
        with _threads.budget(1), ThreadPoolExecutor(cores) as threads:
            for row, (scores, ids, evidence) in enumerate(threads.map(search, images)):
                all_scores[row, :len(ids)] = scores
                all_ids[row, :len(ids)] = ids
                all_inliers[row, :len(ids)] = evidence.inliers
        if return_inliers:
            return all_scores, all_ids, all_inliers
        return all_scores, all_ids

    def searcher(self) -> Searcher:
        """A :class:`~cvsearch.searcher.Searcher` of the current state: it keeps
        answering from that state whatever is added, removed or saved meanwhile
        (each call of :meth:`query` uses a new one).

        Raises
        ------
        NotFittedError
            If the index is not trained.
        ValueError
            If it holds no images.
        """
        self._check_trained()
        snapshot = self._current()
        params = self.extractor.feature_params()
        return Searcher(snapshot.store, snapshot.vocabulary, self.extractor.max_side,
                        mirror_permutation(params),
                        upright=params.get("dense_step") is not None)

    def similar(self, id: int, k: int = 10, *, rerank: int = 0,
                min_inliers: int = DEFAULT_MIN_INLIERS, verification: str = "shapes",
                mirror: bool = False, return_inliers: bool = False,
                return_evidence: bool = False):
        """The ``k`` images most similar to image ``id`` of the index, itself left
        out: "more like this", or near-duplicates, without reading the image again.

        Parameters and returns are those of :meth:`query`, with ``id`` an image id
        (its words only are kept: no multiple assignment; ``mirror`` maps them
        through the mirrored vocabulary, see
        :meth:`~cvsearch.searcher.Searcher.mirrored_words`).
        """
        searcher = self.searcher()
        ranking = check_ranking(k, rerank, min_inliers, verification, False, 0, mirror)
        scores, ids, evidence = searcher.similar(id, ranking, coverage=return_evidence)
        if return_evidence:
            return scores, ids, evidence
        return (scores, ids, evidence.inliers) if return_inliers else (scores, ids)

    def inliers(self, image, ids: Sequence[int], *, verification: str = "shapes",
                multiple_assignment: bool = True) -> np.ndarray:
        """Inlier counts of ``image`` against the images ``ids`` (``verification``
        and ``multiple_assignment`` as in :meth:`query`).

        Returns
        -------
        ndarray of shape (len(ids),), int32
        """
        searcher = self.searcher()
        ids = self._as_list(ids, "inliers", ids=True)
        if not all(isinstance(i, (int, np.integer)) for i in ids):
            raise TypeError("inliers takes a list of integer ids")
        searcher.check_ids(ids, "inliers")  # before anything is extracted
        check_choice(verification, "verification", VERIFICATIONS)
        multiple = check_assignment(multiple_assignment)
        return searcher.inliers(self._features_of(image, finer=False), ids,
                                verification, multiple)

    def matches(self, image, id: int, *, verification: str = "shapes",
                multiple_assignment: bool = True, mirrored: bool = False,
                finer: bool = False):
        """The inlier correspondences between ``image`` and image ``id``
        (``verification`` and ``multiple_assignment`` as in :meth:`query`), the
        same verification as :meth:`query`'s, so its count is the result's.

        Parameters
        ----------
        mirrored : bool
            Match the image mirrored left-right (as ``query(mirror=True)`` did
            where ``evidence.mirrored``); the points are still in ``image``'s own
            pixels.
        finer : bool
            Match the small image's features at twice its size (as ``query`` did
            where ``evidence.finer``; ``Features.finer``), the points in its own
            pixels.

        Returns
        -------
        query_xy : ndarray of shape (n_inliers, 2), float32
            Points ``(x, y)`` in the query image's pixels.
        db_xy : ndarray of shape (n_inliers, 2), float32
            The matching points in image ``id``.
        """
        searcher = self.searcher()
        searcher.check_id(id, "matches")
        check_choice(verification, "verification", VERIFICATIONS)
        multiple = check_assignment(multiple_assignment)
        finer = check_flag(finer, "finer")
        features = self._features_of(image, finer=finer)
        if finer and getattr(features, "finer", None) is None:
            raise ValueError("finer matches need a small image (or its features "
                             "from index.extractor.extract(image, finer=True)): "
                             "only those are searched at twice their size")
        if mirrored and not (isinstance(features, Features) and can_mirror(features)):
            raise ValueError("mirrored matches need SIFT or RootSIFT features of "
                             "the query (not words, not ORB)")
        return searcher.matches(features, id, verification, multiple,
                                mirrored=bool(mirrored), finer=finer)

    def matches_between(self, a: int, b: int, *, verification: str = "shapes",
                        mirrored: bool = False):
        """The inlier correspondences of two images of the index (image ``a``'s
        stored words, or its mirror image's with ``mirrored``, against image
        ``b``, as :meth:`similar` verifies them, and :meth:`duplicates` with
        stored words).

        Returns
        -------
        a_xy, b_xy : ndarray of shape (n_inliers, 2), float32
            Points ``(x, y)`` in each image's pixels.
        """
        check_choice(verification, "verification", VERIFICATIONS)
        return self.searcher().matches_between(a, b, verification,
                                               check_flag(mirrored, "mirrored"))

    def duplicates(self, *, kind: str = "copy", rerank: int = 50, mirror: bool = True,
                   reread: bool = True, n_jobs: int = 1,
                   checkpoint: str | os.PathLike | None = None, progress=None):
        """Groups of copies (or of the same object) in the whole index.

        Every image is searched as a query of its file (with ``reread``, where
        the file is still the image indexed) or with its own stored words (as
        :meth:`similar`), with ``rerank``, and each result decided
        (:class:`~cvsearch.decision.Evidence`); groups are formed around anchors
        so they do not chain, and each names the copy to keep (see
        :mod:`cvsearch.duplicates`).

        Parameters
        ----------
        kind : {"copy", "object"}
            Group the same pictures (copies), or the same objects.
        rerank : int
            Results verified per image, >= 1.
        mirror : bool
            Also find mirrored copies (SIFT and RootSIFT; the mirror image's
            words come from the mirrored vocabulary, as
            :meth:`~cvsearch.searcher.Searcher.similar` explains).
        reread : bool
            Read each image's file again (its name, under ``images_root`` unless
            absolute) and search with its features: multiple assignment and the
            mirror image's own descriptors verify more of its copies than its
            stored words do, for one extraction more per image. An image whose
            file is gone or changed (another size or keypoint count) is searched
            with its stored words. False: stored words only.
        n_jobs : int
            Images searched at once (-1: all cores): in worker processes that
            memory-map the index folder when this index is exactly what its
            folder holds (loaded or saved, unchanged since), else in threads
            (which numpy's and OpenCV's locks let overlap only in part).
        checkpoint : path, optional
            A file the edges are appended to as images are searched; a run given
            the same file later resumes where this one stopped (it is refused if
            the index or the settings changed).
        progress : callable, optional
            ``progress("duplicates", done, total)`` as images are searched.

        Returns
        -------
        list of DuplicateGroup
            Largest first; each with its ``ids`` (the copy to keep first),
            ``best``, ``anchor`` and ``weakest`` edge.
        """
        import hashlib

        from cvsearch import duplicates as _duplicates

        check_choice(kind, "kind", ("copy", "object"))
        rerank = check_int(rerank, "rerank", minimum=1)
        n_jobs = check_n_jobs(n_jobs)
        workers = _threads.cores_of(n_jobs)
        searcher = self.searcher()
        reread = check_flag(reread, "reread")
        # multiple assignment for the features read again (stored words have
        # one word each)
        ranking = check_ranking(rerank, rerank, DEFAULT_MIN_INLIERS, "shapes", reread, 0,
                                mirror)
        root = os.path.abspath(self.images_root or os.getcwd()) if reread else None
        ids = searcher.store.ids()
        # the version changes with what decides an edge (7: bars over a
        # picture's top or bottom; 8: chance matches counted over the images
        # verified; 9: small images searched at twice their size too; 10: loose
        # inliers held to closely agreeing pixels; 11: a saturated short-list
        # searched beyond what it shares, not deeper), so no run mixes edges
        # decided two ways
        header = {"cvsearch_duplicates": 11, "lineage": self.lineage, "kind": kind,
                  "rerank": rerank, "mirror": ranking.mirror, "reread": reread,
                  "images": len(ids),
                  "ids": hashlib.sha256(np.asarray(ids, np.int64).tobytes()
                                        ).hexdigest()}
        saved = (_duplicates.Checkpoint(checkpoint, header) if checkpoint is not None
                 else None)
        found = dict(saved.done) if saved is not None else {}
        todo = [int(i) for i in ids if int(i) not in found]
        total, done, fell_back = len(ids), len(found), 0

        names = self.names

        def search(id_):
            return _duplicates.search_images(searcher, self.extractor, names, root,
                                             [id_], ranking)

        folder = self._folder_of_this_state()
        in_processes = workers > 1 and folder is not None and len(todo) > 4 * workers
        if not in_processes:
            _weigh(searcher, workers)
        with contextlib.ExitStack() as stack:
            # each worker process, or thread, searches with one thread
            stack.enter_context(_threads.budget(1))
            if in_processes:
                from joblib import Parallel, delayed

                from cvsearch.parallel import in_joblib_worker

                chunks = [todo[i:i + 64] for i in range(0, len(todo), 64)]
                results = Parallel(n_jobs=workers, return_as="generator")(
                    delayed(in_joblib_worker)(
                        _duplicates.edges_in_folder, folder, self._origin.identity,
                        chunk, ranking, root)
                    for chunk in chunks)
            else:
                threads = stack.enter_context(ThreadPoolExecutor(max(1, workers)))
                results = threads.map(search, todo)
            for batch in results:
                for id_, edges, read_again in batch:
                    found[id_] = edges
                    fell_back += reread and not read_again
                    if saved is not None:
                        saved.add(id_, edges)
                    done += 1
                    if progress is not None and (done % 100 == 0 or done == total):
                        progress("duplicates", done, total)
        if fell_back:  # fewer of their copies verify: say so
            logger.warning("%d of the %d images searched were searched with their "
                           "stored words: their files are not under %s, or are no "
                           "longer the images indexed", fell_back, len(todo), root)
        edges = [edge for edges in found.values() for edge in edges]
        nodes = sorted({edge.a for edge in edges} | {edge.b for edge in edges})
        shapes = {id_: image[2] for id_, image in zip(nodes, searcher.store.images(nodes))}
        files = {id_: _duplicates.file_of(names[id_], self.images_root) for id_ in nodes}
        return _duplicates.group(edges, _duplicates.quality(shapes, files), kind,
                                 lambda edge: _duplicates.edge_matches(self, edge))

    def vectors(self):
        """The database's weighted bag-of-words vectors, one row per image, in the
        order of ``index.ids``.

        A row is what a query made of that image's features scores with: the
        cosine of two images is the dot product of their rows.

        Returns
        -------
        csr_matrix of shape (n_images, n_words * cells), float32, unit rows
        """
        return self.searcher().store.vectors()

    @property
    def n_keypoints(self) -> int:
        """Keypoints kept for the images of the index."""
        return self._current().store.n_keypoints()

    def warm_up(self) -> Index:
        """Compute now what the first query of the current state would: the idf
        and the norms, or bounds on them from the state before
        (:meth:`cvsearch.store.Store.prepare`); and, once per process for each
        kind of features, search a synthetic picture, so that numba compiles
        (or loads from its cache) the loops a search runs: seconds on a fresh
        install, else paid by the first searches (a service calls this at
        start-up, so its first user does not wait). Returns self."""
        store = self._current().store
        if not len(store):
            return self
        store.prepare()
        kind = repr(sorted(self.extractor.feature_params().items()))
        with _WARMED_LOCK:
            if kind in _WARMED:
                return self
            _WARMED.add(kind)
        try:  # only to compile: a failure here must not stop a service starting
            features = self.extractor.extract(_warm_up_picture(), finer=True)
            self.vocabulary.predict(features.descriptors)  # an add's one word each
            # a short-list as long as a service's searches take (the
            # verification's loops are compiled for long ones only)
            self.query(features, k=10, rerank=min(len(store), 100), mirror=True,
                       return_evidence=True)
        except Exception as error:  # logged: the first search will say more
            logger.warning("warming up the search of %s failed (%s: %s): the first "
                           "searches compile its loops", self, type(error).__name__,
                           error)
        return self

    @property
    def n_segments(self) -> int:
        """Segments of the store (see :meth:`Store.merge_tail` for when they
        merge)."""
        return len(self._current().store.segments)

    @property
    def searchable_nbytes(self) -> int:
        """Bytes of what scoring reads (postings, their column offsets and a norm
        per image); the rest of :attr:`nbytes` is read only for re-ranking."""
        return self._current().store.searchable_nbytes()

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: the store's segments (postings and geometry) and
        the vocabulary."""
        total = self._current().store.nbytes
        if self.is_trained:
            total += sum(np.asarray(a).nbytes for a in self.vocabulary.get_state().values())
        return int(total)

    @property
    def weighting(self) -> dict:
        """``power``, ``tf_power`` and ``pyramid_levels``, as keyword arguments of
        :class:`Index` and :meth:`reweighted`."""
        return {"power": self.power, "tf_power": self.tf_power,
                "pyramid_levels": self.pyramid_levels}

    def reweighted(self, *, power: float | None = None,
                   pyramid_levels: int | None = None,
                   tf_power: float | None = None) -> Index:
        """A copy with other weighting options, sharing the vocabulary and the
        images' words (nothing is extracted again): to compare options.

        Returns
        -------
        Index
        """
        with self._lock:
            copy = Index(self.extractor, self.n_words,
                         power=self.power if power is None else power,
                         pyramid_levels=(self.pyramid_levels if pyramid_levels is None
                                         else pyramid_levels),
                         tf_power=self.tf_power if tf_power is None else tf_power)
            copy._vocabulary = self._vocabulary
            copy._store = self._store.reweighted(copy.pyramid_levels, copy.power,
                                                 copy.tf_power)
            copy._name_to_id = dict(self._name_to_id)
        return copy

    # ----------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Save the index to a directory of plain files (JSON and .npz, no pickle).

        Saving is atomic: if it fails (a crash, a full disk), a previous index saved
        in ``directory`` is left intact. It holds the folder's writer lock
        (:func:`cvsearch.storage.writer_lock`) while it writes.

        Raises
        ------
        ValueError
            If this index was loaded from (or last saved to) ``directory`` and
            another writer has saved there since: its update would be lost. Load
            the folder again and redo the change, or use :meth:`updating`.
        """
        self._check_trained()
        from cvsearch import __version__

        with storage.writer_lock(directory):
            generation = storage.check_writer(directory, self._origin, FORMAT)
            store = self._current().store
            self._origin = self._save(directory, generation, __version__)
            self._saved_store = store

    def _save(self, directory, generation: int, version: str) -> storage.Origin:
        return index_folder.write_index(self, directory, generation, version)

    @classmethod
    @contextlib.contextmanager
    def updating(cls, directory: str | os.PathLike, *, timeout: float | None = None):
        """Load, change and save an index folder as one writer: other writers (threads
        or processes) wait, and none loses an update. Nothing is saved if the
        block raises.

        Examples
        --------
        >>> with Index.updating("my-index") as index:  # doctest: +SKIP
        ...     index.add(["new.jpg"])
        """
        with storage.writer_lock(directory, timeout):
            index = cls.load(directory)
            yield index
            index.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True,
             previous: Index | None = None) -> Index:
        """Load an index saved by :meth:`save`; its segments are memory-mapped,
        not read into memory.

        Every file is checked against its size and SHA-256 (the manifest against
        its own), every array against the others, and nothing is unpickled, so an
        index from an untrusted source is safe to load (see
        :mod:`cvsearch.storage` for what is checked when).

        Parameters
        ----------
        directory : str or os.PathLike
        verify : bool
            Hash every file (on all cores: about a second per 2.6 GB on 2
            cores). What scoring reads is hashed here; each segment's keypoint
            arrays (most of the bytes, read only to re-rank, remove or merge)
            are hashed the first time one of them is read, or all at once by
            :meth:`check_integrity`. False skips the hashes of the large arrays
            and their range checks (sizes, headers, structure and the small
            files are still checked): for a large index you trust.
        previous : Index or None
            An index loaded from (or saved to) this folder before, to load it
            again after another process saved there (as Lucene's
            ``openIfChanged``): the vocabulary and the segments whose files the
            folder still names are shared with it, not read and checked again,
            so only what changed is. Nothing is shared with an index of
            another folder, or one loaded without ``verify`` by a load with it.

        Raises
        ------
        FileNotFoundError
            If the directory or its manifest ``index.json`` is missing.
        ValueError
            If a file is missing, truncated, modified, inconsistent or of another
            format version; the message names the file.
        """
        if previous is not None and not isinstance(previous, Index):
            raise TypeError(f"previous must be an Index loaded from {directory} "
                            f"before, or None; got {type(previous).__name__}")
        # A writer may remove files after the manifest was read: readers take no
        # lock, they read the new manifest instead.
        index = storage.load_consistent(
            directory, FORMAT,
            lambda path, manifest: cls._load(path, manifest, verify, previous))
        index._saved_store = index._current().store
        return index

    def _folder_of_this_state(self) -> str | None:
        """The folder that holds exactly the current state (loaded from or saved
        there, nothing changed since), or None."""
        if self._origin is None or self._saved_store is not self._current().store:
            return None
        return self._origin.folder

    def check_integrity(self) -> None:
        """Run now the checks that :meth:`load` leaves for first use: the hash and
        range of every segment's keypoint arrays (one read of them, on all cores).
        A service can call it at start-up so that no query pays for them.

        Raises
        ------
        ValueError
            Naming the first file that does not match its checksum or holds
            word ids out of range.
        """
        from concurrent.futures import ThreadPoolExecutor

        segments = self._current().store.segments
        with ThreadPoolExecutor(max(1, min(len(segments), os.cpu_count() or 1))) as pool:
            list(pool.map(Segment.check_geometry, segments))  # hashlib frees the GIL

    @classmethod
    def _load(cls, path, manifest: dict, verify: bool, previous=None) -> Index:
        return index_folder.read_index(cls, path, manifest, verify, previous)


#: Kinds of features (their parameters) whose search this process has warmed up.
_WARMED: set = set()
_WARMED_LOCK = threading.Lock()


def _warm_up_picture() -> np.ndarray:
    """A fixed grey picture of blobs at many scales (smooth noise, upscaled), which
    gives every kind of features plenty of keypoints.

    Returns
    -------
    ndarray of shape (360, 480), uint8
    """
    import cv2

    noise = np.random.default_rng(0).integers(0, 256, (45, 60), dtype=np.uint8)
    return cv2.resize(noise, (480, 360), interpolation=cv2.INTER_CUBIC)


def _weigh(searcher: Searcher, cores: int) -> None:
    """What ``searcher``'s state's queries need, computed now on ``cores``
    (:meth:`Store.prepare`): a batch searches one thread per image, and its
    first search would otherwise compute it (at most a pass over every
    posting) on its one."""
    if len(searcher.store):
        with _threads.budget(cores):
            searcher.store.prepare()


def resolve_ids(items, name_to_id: Mapping, locate) -> list[int]:
    """The ids of the images ``items`` name (ids or names), sorted, distinct.

    ``locate(id)`` raises KeyError for an id not in the index.

    Raises
    ------
    ValueError
        For an unknown id or name.
    TypeError
        For an item that is neither an int nor a str.
    """
    drop = set()
    for item in items:
        if isinstance(item, str):
            if item not in name_to_id:
                raise ValueError(f"no image named {item!r} in the index")
            drop.add(int(name_to_id[item]))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            try:
                locate(int(item))
            except KeyError:
                raise ValueError(f"no image with id {item} in the index (ids are "
                                 "never reused)") from None
            drop.add(int(item))
        else:
            raise TypeError(f"remove takes ids (int) or names (str), got "
                            f"{type(item).__name__} {item!r}")
    return sorted(drop)


def _sample_features(descriptors: np.ndarray, n: int, rng) -> np.ndarray:
    if len(descriptors) <= n:
        return descriptors
    return descriptors[np.sort(rng.choice(len(descriptors), n, replace=False))]
