"""Global-descriptor search: one vector per image, with the lifecycle of ``Index``.

Where the bag of words finds *this object*, a CNN's global descriptor finds *this
kind of thing* (Caltech-101 category search: mAP 0.73 against 0.30, see
benchmarks/results/caltech101.md). :class:`GlobalIndex` keeps one unit vector per
image and answers by cosine similarity:

- a describer turns images into descriptors (:class:`cvsearch.cnn.CNNDescriptor`
  by default; anything with ``describe_many(images) -> (n, d)`` works);
- an optional projection maps them to a small embedding before they are stored:
  :class:`~cvsearch.projection.PCAProjection` (unsupervised, fitted by
  :meth:`GlobalIndex.build`) or a
  :class:`~cvsearch.projection.TripletProjection` trained on labelled images;
- search is exact (one matrix product per batch of images) or approximate
  (:mod:`cvsearch.approximate`): ``search="hnsw"`` or ``"ivf"`` with faiss
  (``pip install cvsearch[faiss]``). The approximate
  structure is built from the stored vectors when a query first needs it (hnsw and
  ivf then take later additions in without a rebuild), is never saved, and its
  candidates are scored again exactly.

As in ``Index``: images keep their ids for life; vectors are stored in immutable
batches with removed images marked deleted (``compact`` drops them); queries see
one consistent state while others add and remove; saving is atomic, pickle-free
and checksummed, with the same writer lock (see :mod:`cvsearch.storage`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cvsearch import storage
from cvsearch._validation import check_choice, check_int
from cvsearch.approximate import FAISS_SEARCHES, build_searcher
from cvsearch.index import Index, Names, resolve_ids
from cvsearch.io import READ_ERRORS
from cvsearch.parallel import SkippedImage
from cvsearch.projection import PROJECTIONS
from cvsearch.scoring import top_k

logger = logging.getLogger(__name__)

FORMAT = "cvsearch-global-index"
FORMAT_VERSION = 1
SEARCHES = ("exact", "hnsw", "ivf")
#: Images described at once (one forward pass of the network).
BATCH = 16


class _Batch(NamedTuple):
    """Images added together: ids (n,) int64 increasing, names, and their
    vectors (n, dim) float32 of unit norm."""

    ids: np.ndarray
    names: tuple
    vectors: np.ndarray


class _State(NamedTuple):
    """One immutable state of a global index (its len is the live images', so
    build a new one rather than ``_replace``)."""

    batches: tuple
    deleted: tuple  # per batch: None, or a boolean mask of its removed rows
    next_id: int
    name_to_id: dict

    def __len__(self) -> int:
        return len(self.name_to_id)

    def ids(self) -> np.ndarray:
        parts = [b.ids if m is None else b.ids[~m]
                 for b, m in zip(self.batches, self.deleted)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def names_in_order(self) -> tuple:
        return tuple(name for b, m in zip(self.batches, self.deleted)
                     for row, name in enumerate(b.names) if m is None or not m[row])

    def name_of(self, id_: int) -> str:
        batch, row = self.locate(id_)
        return self.batches[batch].names[row]

    def locate(self, id_: int) -> tuple[int, int]:
        for index, (batch, mask) in enumerate(zip(self.batches, self.deleted)):
            if len(batch.ids) and batch.ids[0] <= id_ <= batch.ids[-1]:
                row = int(np.searchsorted(batch.ids, id_))
                if batch.ids[row] == id_ and (mask is None or not mask[row]):
                    return index, row
        raise KeyError(id_)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (n,), vectors (n, dim))`` of the live images, in id order."""
        parts = [(b.ids, b.vectors) if m is None else (b.ids[~m], b.vectors[~m])
                 for b, m in zip(self.batches, self.deleted)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return (np.concatenate([p[0] for p in parts]),
                np.concatenate([np.asarray(p[1]) for p in parts]))


class GlobalIndex:
    """Images searched by one global descriptor each (cosine similarity).

    Parameters
    ----------
    describer : object, optional
        Has ``describe_many(images) -> ndarray (n, d)`` (unit rows); None for
        :class:`cvsearch.cnn.CNNDescriptor` with its defaults (EfficientNet-Lite0,
        ``pip install cvsearch[cnn]``), created when first needed.
    projection : PCAProjection or TripletProjection, optional
        Applied to every descriptor before it is stored or searched. It must be
        fitted before images are added (:meth:`build` fits a PCAProjection).
    search : {"exact", "hnsw", "ivf"}
        Approximate searches are for large collections (benchmarks/results/
        learned.md: which is how fast, how exact, at which size).
    candidates : int
        An approximate search returns ``max(candidates, k)`` candidates (plus
        as many as there are removed images not yet compacted away), scored
        again exactly.
    hnsw_m, ef_search : int
        "hnsw": neighbours per node, and breadth of the search.
    n_lists, n_probe : int
        "ivf": k-means cells (None: 4 sqrt(n), at most n / 39), and cells searched.

    Examples
    --------
    >>> index = GlobalIndex.build(paths, projection=PCAProjection(128))  # doctest: +SKIP
    >>> scores, ids = index.query("photo.jpg", k=10)                    # doctest: +SKIP
    """

    def __init__(self, describer=None, *, projection=None, search: str = "exact",
                 candidates: int = 200, hnsw_m: int = 32, ef_search: int = 128,
                 n_lists: int | None = None, n_probe: int = 16):
        if projection is not None and getattr(projection, "kind", None) not in PROJECTIONS:
            raise TypeError(f"projection must be a PCAProjection or a "
                            f"TripletProjection, got {type(projection).__name__}")
        self._describer = describer
        self._describer_needed = None  # what a loaded index was described with
        self.projection = projection
        self.search = check_choice(search, "search", SEARCHES)
        self.candidates = check_int(candidates, "candidates", minimum=1)
        self.hnsw_m = check_int(hnsw_m, "hnsw_m", minimum=2)
        self.ef_search = check_int(ef_search, "ef_search", minimum=1)
        self.n_lists = None if n_lists is None else check_int(n_lists, "n_lists",
                                                               minimum=1)
        self.n_probe = check_int(n_probe, "n_probe", minimum=1)
        if self.search in FAISS_SEARCHES:
            from cvsearch.approximate import _faiss

            _faiss()  # a missing extra is said now, not at the first query
        self._state = _State((), (), 0, {})
        self._lock = threading.RLock()  # writers; queries read self._state once
        # (state, searcher, ids, vectors, alive) of the last approximate search
        self._approximate = None
        self._approximate_lock = threading.Lock()
        self._origin = None  # storage.Origin loaded from or last saved to
        self.lineage = storage.new_lineage()  # kept by every save of this index
        #: The folder relative image names are relative to, or None (as Index).
        self.images_root: str | None = None

    # --------------------------------------------------------------- parts
    @property
    def describer(self):
        if self._describer is None:
            needed = self._describer_needed
            if needed is not None and not isinstance(needed, dict):
                raise ValueError(f"this index was described with {needed}: pass it "
                                 "to GlobalIndex.load(..., describer=...) to describe "
                                 "images (descriptors can be queried as they are)")
            from cvsearch.cnn import CNNDescriptor

            # the built-in network with the options it was saved with
            self._describer = CNNDescriptor(**_builtin_options(needed))
        return self._describer

    @property
    def dim(self) -> int | None:
        """Size of the stored vectors (None while nothing is stored or fitted)."""
        if self.projection is not None and self.projection.fitted:
            return self.projection.dim
        batches = self._state.batches
        return int(batches[0].vectors.shape[1]) if batches else None

    def __len__(self) -> int:
        return len(self._state)

    @property
    def names(self):
        """Names of the images, by id (see :class:`cvsearch.index.Names`)."""
        return Names(self._state)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the images, increasing. ndarray of shape (len(index),), int64."""
        return self._state.ids()

    def id_of(self, name: str) -> int:
        """The id of the image called ``name`` (KeyError if there is none)."""
        try:
            return int(self._state.name_to_id[name])
        except KeyError:
            raise KeyError(f"no image named {name!r} in this index") from None

    def __repr__(self) -> str:
        return (f"GlobalIndex({self._describer!r}, projection={self.projection!r}, "
                f"search={self.search!r}, {len(self)} images)")

    # --------------------------------------------------------------- build
    @classmethod
    def build(cls, images: Sequence, describer=None, *, names=None, labels=None,
              projection=None, search: str = "exact", **options) -> GlobalIndex:
        """Describe ``images``, fit ``projection`` on them if it is not fitted
        (a TripletProjection needs ``labels``, one per image), and add them;
        unreadable files are skipped with a logged warning and listed in
        ``index.skipped_``.

        Returns
        -------
        GlobalIndex
        """
        index = cls(describer, projection=projection, search=search, **options)
        images = Index._as_list(images, "build")
        names = Index._default_names(images, names, "build")
        descriptors, kept, skipped = index.describe(images, names)
        if projection is not None and not projection.fitted:
            if labels is not None:
                labels = np.asarray(labels)
                if len(labels) != len(images):
                    raise ValueError(f"build: got {len(labels)} labels for "
                                     f"{len(images)} images")
                position = {n: i for i, n in enumerate(names)}
                labels = labels[[position[n] for n in kept]]
            elif projection.kind == "triplet":
                raise ValueError("build: a TripletProjection is trained on labels: "
                                 "pass labels=, one per image")
            projection.fit(descriptors, labels)
        index.add_descriptors(descriptors, kept)  # the skipped ones were logged
        index.skipped_ = skipped
        return index

    def describe(self, images: Sequence, names: Sequence[str]):
        """Descriptors of images, skipping files that cannot be read.

        Returns
        -------
        descriptors : ndarray of shape (n_read, d), float32
        names : list of str
            Of the images read, in order.
        skipped : list of SkippedImage
        """
        images, names = list(images), list(names)
        out, kept, skipped = [], [], []
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            try:
                out.append(self._describe_many(chunk))
                kept += names[start:start + BATCH]
                continue
            except READ_ERRORS:
                pass  # find the culprits one by one
            for image, name in zip(chunk, names[start:start + BATCH]):
                try:
                    out.append(self._describe_many([image]))
                    kept.append(name)
                except READ_ERRORS as error:
                    if isinstance(image, np.ndarray):
                        raise  # a bad array is the caller's error
                    logger.warning("skipped %s: %s", name, error)
                    skipped.append(SkippedImage(name, str(error)))
        descriptors = (np.concatenate(out) if out else np.zeros((0, 0), np.float32))
        return descriptors, kept, skipped

    def _describe_many(self, images) -> np.ndarray:
        vectors = np.asarray(self.describer.describe_many(images), np.float32)
        if vectors.ndim != 2 or len(vectors) != len(images) \
                or not np.isfinite(vectors).all():
            raise ValueError(f"the describer returned an array of shape "
                             f"{vectors.shape} for {len(images)} images (expected "
                             "one finite row each)")
        return vectors

    # ------------------------------------------------------ add and remove
    def add(self, images: Sequence, names: Sequence[str] | None = None
            ) -> list[SkippedImage]:
        """Describe and add images; unreadable files and names already in the
        index are skipped, logged and returned (as ``Index.add`` does).

        Returns
        -------
        skipped : list of SkippedImage
        """
        images = Index._as_list(images, "add")
        names = Index._default_names(images, names, "add")
        descriptors, kept, skipped = self.describe(images, names)
        seen = set(self._state.name_to_id)
        fresh = []
        for i, name in enumerate(kept):
            if name in seen:
                skipped.append(SkippedImage(name, "already in the index"))
            else:
                seen.add(name)
                fresh.append(i)
        if fresh:
            self.add_descriptors(descriptors[fresh], [kept[i] for i in fresh])
        return skipped

    def add_descriptors(self, descriptors, names: Sequence[str]) -> np.ndarray:
        """Add images by their descriptors (computed beforehand, anywhere, by the
        same describer): the projection is applied here.

        Parameters
        ----------
        descriptors : ndarray of shape (n, d), float
        names : sequence of str
            One per descriptor, not in the index yet, distinct.

        Returns
        -------
        ids : ndarray of shape (n,), int64
        """
        x = np.asarray(descriptors, np.float32)
        names = [str(n) for n in names] if not isinstance(names, str) else None
        if names is None or x.ndim != 2 or len(x) != len(names):
            raise ValueError(f"add_descriptors takes a matrix (n, d) and n names; "
                             f"got shape {x.shape}")
        if len(set(names)) != len(names):
            raise ValueError("add_descriptors: names repeat")
        vectors = self._embed(x)
        with self._lock:
            state = self._state
            if (dim := self.dim) is not None and vectors.shape[1] != dim and len(x):
                raise ValueError(f"add_descriptors: vectors of {vectors.shape[1]} "
                                 f"values, the index holds {dim}")
            clash = [n for n in names if n in state.name_to_id]
            if clash:
                raise ValueError(f"add_descriptors: {clash[0]!r} is already in the "
                                 "index; remove it first")
            ids = np.arange(state.next_id, state.next_id + len(x), dtype=np.int64)
            if not len(x):
                return ids
            batch = _Batch(ids, tuple(names), vectors)
            self._state = _State(state.batches + (batch,), state.deleted + (None,),
                                 state.next_id + len(x),
                                 {**state.name_to_id, **dict(zip(names, ids.tolist()))})
        return ids

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """Stored vectors of descriptors (n, d): projected, unit rows."""
        if not np.isfinite(x).all():
            raise ValueError("descriptors hold NaN or infinity")
        if self.projection is None:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            return (x / np.maximum(norms, 1e-12)).astype(np.float32)
        if not self.projection.fitted:
            raise ValueError("the projection is not fitted: fit it first, or let "
                             "GlobalIndex.build fit it")
        return self.projection.transform(x)

    def remove(self, ids: Sequence) -> GlobalIndex:
        """Remove images by id or name; the others keep their ids. Unknown ids or
        names raise and change nothing.

        Returns
        -------
        self
        """
        items = Index._as_list(ids, "remove", ids=True)
        with self._lock:
            state = self._state
            drop = set(resolve_ids(items, state.name_to_id, state.locate))
            deleted = []
            for batch, mask in zip(state.batches, state.deleted):
                hit = np.isin(batch.ids, list(drop))
                deleted.append(mask if not hit.any() else
                               hit if mask is None else mask | hit)
            gone = {n for n, i in state.name_to_id.items() if i in drop}
            self._state = _State(state.batches, tuple(deleted), state.next_id,
                                 {n: i for n, i in state.name_to_id.items()
                                  if n not in gone})
        return self

    def compact(self) -> GlobalIndex:
        """Merge every batch into one and drop removed images (ids unchanged)."""
        with self._lock:
            state = self._state
            ids, vectors = state.live_vectors()
            batches = (_Batch(ids, state.names_in_order(), vectors),) if len(ids) else ()
            self._state = _State(batches, (None,) * len(batches), state.next_id,
                                 state.name_to_id)
        return self

    # --------------------------------------------------------------- query
    def query(self, image, k: int = 10):
        """The ``k`` images most similar to ``image``.

        Parameters
        ----------
        image : str, os.PathLike or ndarray
            A path, an image array (2-D or 3-D), or a descriptor (1-D) from the
            same describer.
        k : int

        Returns
        -------
        scores : ndarray of shape (min(k, len(index)),), float32
            Cosine similarities, decreasing.
        ids : ndarray of the same shape, int64
        """
        k = check_int(k, "k", minimum=1, hint="ask for at least one result")
        state = self._state
        if not len(state):
            raise ValueError("the index holds no images; add images before querying")
        if isinstance(image, np.ndarray) and image.ndim == 1:
            descriptor = np.asarray(image, np.float32)[None]
        else:
            descriptor = self._describe_many([image])
        vector = self._embed(descriptor)[0]
        if vector.shape[0] != self.dim:
            raise ValueError(f"the query has {vector.shape[0]} values after the "
                             f"projection, the index holds {self.dim}")
        m = min(k, len(state))
        # a short-list of a quarter of the collection or more: exact is as fast,
        # and an inverted file could not return more than its probed cells hold
        if self.search != "exact" and 4 * max(self.candidates, m) < len(state):
            return self._query_approximate(state, vector, m)
        found = [self._best_of_batch(batch, mask, vector, m)
                 for batch, mask in zip(state.batches, state.deleted)]
        scores = np.concatenate([f[0] for f in found])
        ids = np.concatenate([f[1] for f in found])
        order = np.lexsort((ids, -scores))[:m]
        return scores[order], ids[order]

    @staticmethod
    def _best_of_batch(batch: _Batch, mask, vector, m):
        scores = np.asarray(batch.vectors) @ vector
        if mask is not None:
            scores[mask] = -np.inf
        # no more than the batch holds: m may be any size (a caller's k)
        top, rows = top_k(scores, max(1, min(m, len(scores))))
        keep = (rows >= 0) & np.isfinite(top)
        return top[keep], batch.ids[rows[keep]]

    def _query_approximate(self, state: _State, vector, m):
        with self._approximate_lock:  # one build per state; faiss is not re-entrant
            searcher, ids, vectors, alive = self._searcher_for(state)
            # ask for enough that removed rows (and rows added after ``state``)
            # still leave the candidates wanted
            skipped = len(searcher) - int(alive.sum())
            wanted = min(max(self.candidates, m) + skipped, len(searcher))
            positions = searcher.search(vector, wanted)
        positions = np.unique(positions[positions < len(alive)])
        positions = positions[alive[positions]]
        scores = vectors[positions] @ vector  # exact cosines of the candidates
        order = np.lexsort((ids[positions], -scores))[:m]
        return scores[order].astype(np.float32), ids[positions][order]

    def _searcher_for(self, state: _State):
        """The approximate searcher for ``state`` with the ids (n,) and vectors
        (n, dim) of its rows (every row of every batch, in order) and the
        liveness (m,) of ``state``'s rows, m <= n: built on first use, grown when
        only batches were added since (hnsw, ivf), and shared with older states
        whose batches it holds (a query that began before an add)."""
        cached = self._approximate
        if cached is not None and cached[0] is state:
            return cached[1:]
        alive = np.concatenate([np.ones(len(b.ids), bool) if mask is None else ~mask
                                for b, mask in zip(state.batches, state.deleted)])
        grow = None
        if cached is not None:
            old = cached[0].batches
            shared = all(a is b for a, b in zip(state.batches, old))
            if shared and len(state.batches) <= len(old):
                return cached[1], cached[2], cached[3], alive
            if shared and cached[1].incremental:
                grow = state.batches[len(old):]
        ids = np.concatenate([b.ids for b in state.batches])
        vectors = np.concatenate([np.asarray(b.vectors) for b in state.batches])
        if grow is None:
            searcher = build_searcher(self.search, vectors, self._search_options())
        else:
            searcher = cached[1]
            for batch in grow:
                searcher.add(np.asarray(batch.vectors))
        self._approximate = (state, searcher, ids, vectors, alive)
        return self._approximate[1:]

    def _search_options(self) -> dict:
        return {"search": self.search, "candidates": self.candidates, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search, "n_lists": self.n_lists,
                "n_probe": self.n_probe}

    def warm_up(self) -> GlobalIndex:
        """Make the describer and the approximate search now rather than at the
        first query (a service calls it at start-up). Returns self."""
        if not isinstance(self._describer_needed, str):  # else it must be passed
            self.describer  # noqa: B018 (created on first use)
        state = self._state
        if self.search != "exact" and len(state):
            with self._approximate_lock:
                self._searcher_for(state)
        return self

    # --------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Save to a folder of plain files (JSON and .npy, no pickle), atomically,
        under the folder's writer lock; refused if another writer saved there
        since this index was loaded (as ``Index.save``)."""
        from cvsearch import __version__

        with storage.writer_lock(directory):
            generation = storage.check_writer(directory, self._origin, FORMAT)
            state = self._state
            batches = [{
                "n": len(batch.ids),
                "files": {"ids": storage.write_file(directory, "seg-ids", "npy",
                                                    storage.npy_bytes(batch.ids)),
                          "vectors": storage.write_file(
                              directory, "seg-vectors", "npy",
                              storage.npy_bytes(np.asarray(batch.vectors)))},
                "names": storage.write_file(directory, "names", "json",
                                            storage.json_bytes(list(batch.names)))}
                for batch in state.batches]
            deleted = [b.ids[m] for b, m in zip(state.batches, state.deleted)
                       if m is not None]
            deleted = np.concatenate(deleted) if deleted else np.zeros(0, np.int64)
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "cvsearch_version": __version__, "lineage": self.lineage,
                "generation": generation, "images_root": self.images_root,
                "describer": self._describer_needed if self._describer is None
                else _describer_params(self._describer),
                "search": self._search_options(),
                "projection": None, "next_id": state.next_id, "n_images": len(state),
                "segments": batches, "files": {},
                "deleted": storage.write_file(directory, "deleted", "npy",
                                              storage.npy_bytes(deleted))
                if len(deleted) else None}
            if self.projection is not None:
                manifest["projection"] = {"kind": self.projection.kind,
                                          "params": self.projection.get_params()}
                manifest["files"]["projection"] = storage.write_file(
                    directory, "projection", "npz",
                    storage.npz_bytes(self.projection.get_state()))
            self._origin = storage.commit(directory, manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike, describer=None, *,
             verify: bool = True) -> GlobalIndex:
        """Load a saved global index (vectors memory-mapped, every file checked
        against its size and SHA-256; nothing unpickled).

        Parameters
        ----------
        directory : str or os.PathLike
        describer : object, optional
            To describe query images. None: the built-in CNNDescriptor with the
            options the index was built with (input size, flip averaging, ...:
            saved as JSON, the network ships with the package); an index built
            with another describer needs it passed again (a model file named in
            a folder is never opened).
        verify : bool
            Hash the vector files (False: sizes, headers and structure only).

        Raises
        ------
        FileNotFoundError
            If the folder or its manifest is missing.
        ValueError
            If a file is missing, truncated, modified or inconsistent (naming it).
        """
        # a save may remove files after the manifest was read: read it again
        return storage.load_consistent(
            directory, FORMAT,
            lambda path, manifest: cls._load(path, manifest, describer, verify))

    @classmethod
    def _load(cls, path, manifest: dict, describer, verify: bool) -> GlobalIndex:
        directory = path.parent
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format_version "
                             f"{manifest.get('format_version')!r}, but this cvsearch "
                             f"reads format_version {FORMAT_VERSION}")
        storage.check_manifest(path, manifest)
        try:
            search = dict(manifest["search"])
            if search.get("search") == "annoy":
                # OpenCV's Annoy was offered by cvsearch 0.1's first global
                # indexes; its build can hang (cvsearch/approximate.py)
                logger.warning("%s was saved with search='annoy', which is no longer "
                               "offered: searching exactly (set index.search to "
                               "'hnsw' or 'ivf' for approximate search)", path)
                search["search"] = "exact"
                search.pop("n_trees", None)
            projection = None
            if manifest.get("projection") is not None:
                kind = manifest["projection"]["kind"]
                params = manifest["projection"]["params"]
                names = PROJECTIONS[kind].array_names(params)
                state = storage.load_npz(
                    storage.read_file(directory, manifest, "projection"),
                    directory / manifest["files"]["projection"]["name"],
                    dict.fromkeys(names, np.float32))
                projection = PROJECTIONS[kind].from_state(params, state)
            index = cls(describer, projection=projection, **search)
            if describer is None:
                index._describer_needed = manifest.get("describer")
                _builtin_options(index._describer_needed)  # malformed: refused now
            next_id = manifest["next_id"]
            metas = manifest["segments"]
            if isinstance(next_id, bool) or not isinstance(next_id, int) \
                    or next_id < 0 or not isinstance(metas, list):
                raise ValueError("next_id or the list of batches is malformed")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}; the index is corrupt or was "
                             "saved differently") from None
        batches, previous, dim = [], -1, None
        for meta in metas:
            if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
                raise ValueError(f"{path}: a batch entry is malformed; the index is "
                                 "corrupt")
            ids = np.asarray(storage.map_npy(directory, meta["files"].get("ids"),
                                             "seg-ids", (np.int64,), True))
            vectors = storage.map_npy(directory, meta["files"].get("vectors"),
                                      "seg-vectors", (np.float32,), verify)
            names_entry = storage.check_entry(directory, meta.get("names"), "names")
            names = storage.parse_json(storage.read_entry(directory, names_entry,
                                                          "names"),
                                       directory / names_entry["name"])
            problem = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                problem = "its names are not a list of strings"
            elif ids.shape != (len(names),) or (len(ids) and (
                    ids[0] <= previous or ids[-1] >= next_id
                    or np.any(np.diff(ids) <= 0))):
                problem = "its ids are not increasing, unique and below next_id"
            elif vectors.ndim != 2 or len(vectors) != len(ids) or (
                    dim is not None and vectors.shape[1] != dim) or (
                    projection is not None and vectors.shape[1] != projection.dim):
                problem = "its vectors do not match its ids or the other batches"
            if problem:
                raise ValueError(f"{directory / meta['files']['ids']['name']}: "
                                 f"{problem}; the index is corrupt")
            if len(ids):
                previous, dim = int(ids[-1]), vectors.shape[1]
            batches.append(_Batch(ids, tuple(names), vectors))
        name_to_id = {n: int(i) for b in batches for n, i in zip(b.names, b.ids)}
        if len(name_to_id) != sum(len(b.ids) for b in batches):
            raise ValueError(f"{path}: image names are not unique; the index is corrupt")
        index._state = _State(tuple(batches), (None,) * len(batches), next_id,
                              name_to_id)
        if manifest.get("deleted") is not None:
            removed = np.asarray(storage.map_npy(directory, manifest["deleted"],
                                                 "deleted", (np.int64,), True))
            try:
                index.remove(removed)
            except ValueError as error:
                raise ValueError(f"{directory / manifest['deleted']['name']}: "
                                 f"{error}; the index is corrupt") from None
        storage.adopt_identity(index, directory, manifest)
        return index

    @classmethod
    @contextlib.contextmanager
    def updating(cls, directory: str | os.PathLike, describer=None):
        """Load, change and save under the folder's writer lock (as
        ``Index.updating``)."""
        with storage.writer_lock(directory):
            index = cls.load(directory, describer)
            yield index
            index.save(directory)


#: CNNDescriptor options a manifest may give for the built-in network, with
#: their defaults.
_CNN_DEFAULTS = {"input_size": 224, "resize": 256, "mean": [127.0] * 3,
                 "std": [128.0] * 3, "rgb": True, "output": "features",
                 "flip_average": False}


def _describer_params(describer):
    """What the manifest says of the describer: None for the default CNN; the
    options of the built-in EfficientNet-Lite0 (plain JSON, rebuilt on load:
    the network ships with the package, nothing is read from the folder); else
    the describer's repr, which a loader must pass again."""
    if describer is None:
        return None
    if getattr(describer, "model", None) != "efficientnet-lite0":
        return repr(describer)
    options = {}
    for key, default in _CNN_DEFAULTS.items():
        value = getattr(describer, key, default)
        options[key] = [float(v) for v in value] if key in ("mean", "std") else value
    changed = {k: v for k, v in options.items() if v != _CNN_DEFAULTS[k]}
    return {"builtin": "efficientnet-lite0", **changed} if changed else None


def _builtin_options(needed) -> dict:
    """CNNDescriptor options of a manifest's describer entry (see
    :func:`_describer_params`); a describer given by repr raises on use, not here.

    Raises
    ------
    ValueError
        If the entry names another network or options CNNDescriptor lacks.
    """
    if not isinstance(needed, dict):
        return {}
    options = {k: v for k, v in needed.items() if k != "builtin"}
    if needed.get("builtin") != "efficientnet-lite0" or not set(options) <= set(
            _CNN_DEFAULTS) or any(not isinstance(v, (int, float, str, list))
                                  for v in options.values()):
        raise ValueError(f"the describer entry {needed!r} is malformed; the index "
                         "is corrupt or was saved differently")
    return options


def load_index(directory: str | os.PathLike, previous=None, **options):
    """``Index.load`` or ``GlobalIndex.load``, as the folder's manifest says.

    ``previous``, an index loaded from this folder before, is passed to
    ``Index.load`` (which shares what did not change) where both are
    bag-of-words indexes.

    Returns
    -------
    Index or GlobalIndex
    """
    _, manifest = storage.read_manifest(directory, None)
    if manifest["format"] == FORMAT:
        return GlobalIndex.load(directory, **options)
    if isinstance(previous, Index):
        options["previous"] = previous
    return Index.load(directory, **options)
