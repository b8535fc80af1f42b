"""The served index and what the routes do with it, without HTTP (so it can be
used and tested without a server): :class:`Settings`, :class:`Library`.

Uploaded images are kept in ``INDEX_DIR/uploads/`` and named
``uploads/<digest>-<file name>`` in the index; other names are paths, relative to
``images_root`` unless absolute.

With several workers (processes), each loads the index; a worker reloads it when
the folder holds another state than the one it loaded (another worker saved, or
the folder was replaced by a rebuilt index: identity and generation are compared,
checked at most every ``refresh_seconds``), and writers take the folder's writer
lock and reload first, so no update is lost and no older index is written over a
newer one.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations,
# which name types imported inside create_app.
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import mimetypes
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvsearch import storage
from cvsearch.global_index import GlobalIndex, load_index
from cvsearch.hybrid import verified_query
from cvsearch.index import Index
from cvsearch.io import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    READ_ERRORS,
    UnreadableImageError,
    decode_image,
    read_bytes,
)
from cvsearch.rerank import DEFAULT_MIN_INLIERS
from cvsearch.service.limits import ByteBudgetCache, display_name, known_id
from cvsearch.service.recent import MATCH_SIDE, Query, RecentQueries, SharedQueries

UPLOADS = "uploads"
#: Temporary and orphaned upload files older than this (seconds) are removed at
#: start-up: a write that old has finished or died.
STALE_SECONDS = 600
logger = logging.getLogger("cvsearch")


@dataclass(frozen=True)
class Settings:
    """What a service is started with.

    Parameters
    ----------
    index_dir : Path
        A folder saved by :meth:`cvsearch.Index.save` or
        :meth:`cvsearch.GlobalIndex.save`.
    token : str or None
        Writes need it; None: read-only.
    max_upload_bytes : int
        Largest request body (an upload); larger gets 413.
    images_root : Path or None
        Relative image names are found under it; None: the folder the index was
        built from (``cvsearch index`` keeps it with the index), else the
        current folder.
    max_k, max_rerank : int
        Largest ``k`` and ``rerank`` a client may ask.
    thumbnail_side : int
        Longest side of thumbnails, pixels.
    recent_queries : int
        Searches kept for their match pictures (at most).
    query_cache_bytes : int
        What those searches may hold together (their images, downscaled to
        :data:`MATCH_SIDE`, and their features); the oldest go first.
    thumbnail_cache_bytes : int
        What cached thumbnails may hold together.
    refresh_seconds : float
        How often a worker checks whether the folder holds another state.
    verify_with : Path or None
        With a global index: a bag-of-words index of the same images, which
        verifies the search's ``rerank`` short-list and draws match pictures;
        images added or removed through the service change both.
    allowed_hosts : tuple of str
        Host names a request may be addressed to (its ``Host`` header), so that
        a web page cannot reach a service on 127.0.0.1 by DNS rebinding; ``*``
        allows any.
    queries_dir : Path or None
        A folder where worker processes share their recent queries (``serve``
        makes one for several workers); None: each keeps its own in memory.
        With ``end_with_parent``, a worker whose parent is gone removes the
        queries' files from it, and the folder if nothing else is in it.
    one_thread_per_search : bool
        Each search keeps its libraries (BLAS, OpenMP, OpenCV, the verification
        pool) to one thread, for the life of the process: concurrent searches
        and the worker processes fill the cores, and threads of their own would
        only wait on each other (OpenBLAS serialises concurrent calls).
        ``serve`` sets it.
    end_with_parent : bool
        The process is a worker that ``serve`` started (with several workers):
        it ends once that process is gone, however it ended (killed with
        SIGKILL, say), rather than serve on, holding the port, with nothing to
        supervise it (see :func:`cvsearch.parallel.end_with_parent`).
    close_connections : bool
        Every response closes its connection, so that a client's next request
        is accepted by whichever worker is free: kept alive, a connection stays
        with the worker that accepted it (one-off, ``benchmarks/serve.py``: all
        320 searches of 16 clients once went to one of two workers). ``serve``
        sets it for several workers.
    """

    index_dir: Path
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    images_root: Path | None = None
    max_k: int = 100
    max_rerank: int = 200
    thumbnail_side: int = 256
    recent_queries: int = 64
    query_cache_bytes: int = 64 * 2**20
    thumbnail_cache_bytes: int = 32 * 2**20
    refresh_seconds: float = 1.0
    verify_with: Path | None = None
    allowed_hosts: tuple = ("127.0.0.1", "localhost", "::1")
    queries_dir: Path | None = None
    one_thread_per_search: bool = False
    end_with_parent: bool = False
    close_connections: bool = False

    def to_json(self) -> str:
        """Every field as JSON (how :func:`cvsearch.service.serve` hands them to
        its worker processes)."""
        values = dataclasses.asdict(self)
        for key, value in values.items():
            if isinstance(value, Path):
                values[key] = str(value)
            elif isinstance(value, tuple):
                values[key] = list(value)
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        values = json.loads(text)
        for key in ("index_dir", "images_root", "verify_with",
                    "queries_dir"):  # the Path fields
            if values.get(key) is not None:
                values[key] = Path(values[key])
        values["allowed_hosts"] = tuple(values.get("allowed_hosts", ()))
        return cls(**values)

    @classmethod
    def from_environment(cls) -> "Settings":
        """Settings from ``CVSEARCH_SETTINGS`` (JSON of every field, as
        ``cvsearch serve`` passes them to its workers), else from the
        ``CVSEARCH_INDEX``, ``CVSEARCH_TOKEN``, ``CVSEARCH_MAX_UPLOAD_BYTES``,
        ``CVSEARCH_IMAGES_ROOT`` and ``CVSEARCH_VERIFY_WITH`` variables."""
        env = os.environ
        if env.get("CVSEARCH_SETTINGS"):
            return cls.from_json(env["CVSEARCH_SETTINGS"])
        return cls(index_dir=Path(env["CVSEARCH_INDEX"]),
                   token=env.get("CVSEARCH_TOKEN") or None,
                   max_upload_bytes=int(env.get("CVSEARCH_MAX_UPLOAD_BYTES",
                                                20 * 2**20)),
                   images_root=Path(env["CVSEARCH_IMAGES_ROOT"])
                   if env.get("CVSEARCH_IMAGES_ROOT") else None,
                   verify_with=Path(env["CVSEARCH_VERIFY_WITH"])
                   if env.get("CVSEARCH_VERIFY_WITH") else None)


class ServiceError(Exception):
    """An answer other than success: HTTP status and a message for a person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _is_global(index) -> bool:
    return isinstance(index, GlobalIndex)


def _holds(index, name: str) -> bool:
    try:
        index.id_of(name)
        return True
    except KeyError:
        return False


def _warm(index):
    """``index``, its first query's work done now, and (a bag-of-words index)
    each changed state's before it becomes visible: a search running beside a
    write never waits for the norms of the whole index."""
    if not _is_global(index):
        index.warm_changes = True
    return index.warm_up()


def _limits(index) -> dict:
    """What an image may weigh: the bag-of-words extractor's limits, or the
    readers' defaults for a global index (its describer reads with those)."""
    if _is_global(index):
        return {"max_pixels": MAX_PIXELS, "max_file_bytes": MAX_FILE_BYTES}
    return {"max_pixels": index.extractor.max_pixels,
            "max_file_bytes": index.extractor.max_file_bytes}


class Library:
    """The served index and what the routes do with it (no HTTP here, so it can
    be used and tested without a server).

    Parameters
    ----------
    settings : Settings
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.index_dir = Path(settings.index_dir)
        if not (self.index_dir / storage.MANIFEST).is_file():
            raise FileNotFoundError(f"{self.index_dir}: no index there; build one with "
                                    "'cvsearch index IMAGE_DIR -o INDEX_DIR'")
        self.verify_dir = None if settings.verify_with is None \
            else Path(settings.verify_with)
        # (index, the identity it was loaded or saved as, the verifying index or
        # None, its identity): replaced as one value, and only under
        # _write_lock, so a reader sees a consistent state
        self._state = (None, None, None, None)  # nothing to share with the first load
        self._state = self._load()
        self._checked = time.monotonic()
        self._write_lock = threading.Lock()
        # several workers share their recent queries through a folder: a match
        # picture's request may reach another worker than its search did
        self._queries = RecentQueries(settings.query_cache_bytes,
                                      settings.recent_queries) \
            if settings.queries_dir is None else SharedQueries(
                settings.queries_dir, settings.query_cache_bytes,
                settings.recent_queries)
        self._thumbnails = ByteBudgetCache(settings.thumbnail_cache_bytes, 4096, len)
        self.started = time.time()
        self.counts = collections.Counter()
        root = settings.images_root or self.index.images_root
        self.images_root = Path(root) if root else Path.cwd()
        self.missing_files = self._check_image_files()
        self._clean_uploads()

    # --------------------------------------------------------------- state
    @property
    def index(self) -> Index | GlobalIndex:
        return self._state[0]

    @property
    def identity(self) -> storage.Identity | None:
        """What the served folder held when the index was loaded or saved."""
        return self._state[1]

    @property
    def generation(self) -> int | None:
        return None if self._state[1] is None else self._state[1].generation

    @property
    def verifier(self) -> Index | None:
        """The bag-of-words index verifying a global index (``verify_with``)."""
        return self._state[2]

    def _identities(self) -> tuple:
        return (storage.read_identity(self.index_dir, None),
                None if self.verify_dir is None
                else storage.read_identity(self.verify_dir, None))

    def _load(self) -> tuple:
        """``(index, identity, verifier, its identity)`` as saved now, without
        taking the folders' locks (readers never wait for another process's
        writer). Each identity is that of the state loaded (its manifest's): a
        save landing meanwhile is seen at the next check, not chased by loading
        again (a reader that loaded until no save landed never finished while a
        writer saved faster than it loads). The index is loaded before its
        verifier: a writer saves the verifier first when it adds, so the verifier
        holds every image added to the index loaded; one removed meanwhile (the
        index is saved first) is only left unverified."""
        # what another worker's save left unchanged is shared, not read again
        index = load_index(self.index_dir, self._state[0])
        verifier = None
        if self.verify_dir is not None:
            if not _is_global(index):
                raise ValueError(f"--verify-with verifies a global index's "
                                 f"short-list; {self.index_dir} is a bag-of-words "
                                 "index, which verifies with its own features")
            verifier = _warm(Index.load(self.verify_dir))
        if _is_global(index):
            try:  # a describer that cannot be rebuilt: refused now, not per search
                index.describer  # noqa: B018
            except (ValueError, ImportError) as error:
                raise ValueError(f"{self.index_dir}: cannot describe query images "
                                 f"for this index, so it cannot be served: {error}"
                                 ) from None
        return (_warm(index), index._origin.identity, verifier,
                None if verifier is None else verifier._origin.identity)

    def _saved(self, index, verifier) -> tuple:
        identities = self._identities()
        return index, identities[0], verifier, identities[1]

    def current(self) -> Index:
        """The index, reloaded first if a folder holds another state (another
        process saved, or the folder was replaced; checked at most every
        ``refresh_seconds``). A reader never waits: if a writer is busy, it
        answers from the state it has (the writer publishes a newer one)."""
        if time.monotonic() - self._checked >= self.settings.refresh_seconds:
            self._checked = time.monotonic()
            if self._changed() and self._write_lock.acquire(blocking=False):
                try:
                    self._refresh()
                finally:
                    self._write_lock.release()
        return self.index

    def _changed(self) -> bool:
        return self._identities() != (self._state[1], self._state[3])

    def _refresh(self):
        """Reload if a folder holds another state (hold ``_write_lock``)."""
        if self._changed():
            previous = self._state[1]
            self._state = self._load()
            if previous is not None and self._state[1] is not None \
                    and previous.lineage != self._state[1].lineage:
                logger.warning("%s was replaced by another index (lineage %s, was %s):"
                               " serving the new one", self.index_dir,
                               self._state[1].lineage, previous.lineage)

    def _check_image_files(self) -> int:
        """How many of the first images' files cannot be found (said at start-up:
        an index served from another folder than it was built in finds none)."""
        index = self.index
        ids = index.ids[:20].tolist()
        missing = [i for i in ids if not self.path_of(i).is_file()]
        if missing:
            logger.warning(
                "%d of the first %d images of %s are not found under %s (e.g. %s): "
                "image names are stored as given when indexing, relative to the "
                "folder indexed from; start the service from that folder or pass "
                "--images-root", len(missing), len(ids), self.index_dir,
                self.images_root, self.path_of(missing[0]))
        return len(missing)

    def _clean_uploads(self) -> None:
        """Remove what a crash left in ``uploads/``: temporary files, and files no
        index names (written, then the save failed), older than
        :data:`STALE_SECONDS` (a younger one may be another worker's add). Only a
        service that writes does it: a read-only one changes nothing, and may be
        serving a folder it cannot write."""
        folder = self.index_dir / UPLOADS
        if self.settings.token is None or not folder.is_dir():
            return
        try:
            self._remove_leftovers(folder)
        except OSError as error:  # e.g. the lock file cannot be created
            logger.warning("%s: leftovers of unfinished writes not removed (%s)",
                           folder, error)

    def _remove_leftovers(self, folder: Path) -> None:
        with self._writer_locks():
            names = set(self.index.names.values()) | (
                set() if self.verifier is None else set(self.verifier.names.values()))
            now = time.time()
            for path in folder.iterdir():
                try:
                    old = now - path.lstat().st_mtime > STALE_SECONDS
                    if old and path.is_file() and f"{UPLOADS}/{path.name}" not in names:
                        path.unlink()
                        logger.info("removed %s, left by an unfinished write", path)
                except OSError:
                    pass

    def path_of(self, id_: int) -> Path:
        """The file of image ``id_``: a 404 ServiceError if there is none."""
        name = self.current().names.get(id_) if known_id(id_) else None
        if name is None:
            raise ServiceError(404, f"no image with id {id_} in the index")
        path = Path(name)
        if not path.is_absolute():
            root = self.index_dir if name.startswith(UPLOADS + "/") \
                else self.images_root
            path = root / path
        return path

    # --------------------------------------------------------------- reading
    def decode(self, data: bytes, filename: str, min_side: int | None = None
               ) -> np.ndarray:
        """A colour image of uploaded bytes (a large JPEG reduced in the decoder,
        its longer side kept at least ``min_side``); a 400 ServiceError naming
        the problem if they are not a readable image."""
        index = self.current()
        try:
            return decode_image(data, f"upload {filename!r}", grayscale=False,
                                max_pixels=_limits(index)["max_pixels"],
                                min_side=min_side)
        except UnreadableImageError as error:
            raise ServiceError(400, str(error)) from None

    def search(self, data: bytes, filename: str, k: int, rerank: int,
               min_inliers: int = DEFAULT_MIN_INLIERS, mirror: bool = False) -> dict:
        """Search with an uploaded image: the JSON answer of ``POST /search``."""
        if k > self.settings.max_k or rerank > self.settings.max_rerank:
            raise ServiceError(422, f"k is at most {self.settings.max_k} and rerank "
                               f"at most {self.settings.max_rerank}")
        timings = {}
        started = time.perf_counter()
        index, verifier = self.current(), self.verifier
        # A search needs the photo no larger than its features and its match
        # pictures do: a phone photo is decoded reduced, at a fraction of the cost.
        # (Added images are decoded whole: their keypoints are kept in the
        # pixels of the file, which match pictures draw.)
        image = self.decode(data, filename, min_side=max(
            [MATCH_SIDE] + [i.extractor.max_side for i in (index, verifier)
                            if i is not None and hasattr(i, "extractor")]))
        timings["decode_ms"] = _ms(started)
        if not len(index):
            raise ServiceError(409, "the index holds no images yet; add some first")
        if _is_global(index):
            if rerank and verifier is None:
                raise ServiceError(422, "this global index verifies nothing: start "
                                   "the service with --verify-with LOCAL_INDEX to "
                                   "re-rank")
            scores, ids, inliers, features, timings = self._search_global(
                index, verifier, image, k, rerank, min_inliers, timings)
            evidence = None  # the verifier counts inliers; no decisions
        else:
            started = time.perf_counter()
            features = index.extractor.extract(image, finer=True)  # a thumbnail's too
            timings["features_ms"] = _ms(started)
            started = time.perf_counter()
            scores, ids, evidence = index.query(features, k=k, rerank=rerank,
                                                min_inliers=min_inliers, mirror=mirror,
                                                return_evidence=True)
            inliers = evidence.inliers
            timings["search_ms"] = _ms(started)
        query_id = secrets.token_urlsafe(12)
        query = Query(image, features)
        if evidence is not None:  # match pictures mirror where the search did
            query.mirrored = {int(i) for i, m in zip(ids, evidence.mirrored) if m}
            query.finer = {int(i) for i, f in zip(ids, evidence.finer) if f}
        self._queries.put(query_id, query)
        del image  # only the downscaled copy is kept
        names = index.names
        matchless = _is_global(index) and verifier is None  # no local features
        results = []
        for row, (score, id_, n) in enumerate(zip(scores.tolist(), ids.tolist(),
                                                  inliers.tolist())):
            name = names.get(id_)
            if name is None:  # removed since the query ran: left out
                continue
            decision = {"decision": None, "log_nfa": None, "coverage": None,
                        "agreement": None, "contained": None, "scale": None,
                        "residual": None,
                        "mirrored": False, "finer": False}
            if evidence is not None:
                decision = evidence.record(row)
                n = -1 if decision["inliers"] is None else n  # unfinished: no count
                decision = {"decision": decision["kind"], "log_nfa": decision["log_nfa"],
                            "coverage": decision["coverage"],
                            "agreement": decision["agreement"],
                            "contained": decision["contained"],
                            "scale": decision["scale"],
                            "residual": decision["residual"],
                            "mirrored": decision["mirrored"],
                            "finer": decision["finer"]}
            results.append({
                "rank": len(results) + 1, "id": id_, "name": display_name(name),
                "score": round(score, 6), "inliers": n if n >= 0 else None,
                **decision,
                "image_url": f"/images/{id_}", "thumbnail_url": f"/thumbnails/{id_}",
                "match_url": None if matchless else
                f"/matches/{id_}?query={query_id}"})
        self.counts["queries"] += 1
        return {"query": query_id, "k": k, "rerank": rerank,
                "min_inliers": min_inliers, "results": results, "timings": timings,
                "keypoints": None if features is None else len(features.keypoints)}

    @staticmethod
    def _search_global(index, verifier, image, k, rerank, min_inliers, timings):
        """A global index's search: the descriptor (and, to verify, the local
        features), then the cosine ranking or its verified short-list."""
        started = time.perf_counter()
        descriptor = index.describer.describe_many([image])[0]
        # local features only to verify (a match picture extracts them itself)
        features = verifier.extractor.extract(image) if rerank else None
        timings["features_ms"] = _ms(started)
        started = time.perf_counter()
        if rerank:
            scores, ids, inliers = verified_query(index, verifier, image, k,
                                                  rerank=rerank,
                                                  min_inliers=min_inliers,
                                                  descriptor=descriptor,
                                                  features=features)
        else:
            scores, ids = index.query(descriptor, k=k)
            inliers = np.full(len(ids), -1, np.int32)
        timings["search_ms"] = _ms(started)
        return scores, ids, inliers, features, timings

    def image_bytes(self, id_: int) -> tuple[bytes, str]:
        """The bytes and media type of image ``id_``."""
        path = self.path_of(id_)
        try:
            data = read_bytes(path, _limits(self.current())["max_file_bytes"])
        except (OSError, ValueError):
            raise ServiceError(404, f"the file of image {id_} cannot be read on the "
                               "server (moved or removed?)") from None
        return data, mimetypes.guess_type(path.name)[0] or "application/octet-stream"

    def thumbnail(self, id_: int) -> bytes:
        """A JPEG of image ``id_``, its longest side ``thumbnail_side``."""
        import cv2

        key = (id_, str(self.path_of(id_)))
        cached = self._thumbnails.get(key)
        if cached is not None:
            return cached
        image = self._read_color(id_)
        side = self.settings.thumbnail_side
        scale = min(1.0, side / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                       max(1, round(image.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        self._thumbnails.put(key, data)
        return data

    def _read_color(self, id_: int) -> np.ndarray:
        from cvsearch.io import read_image

        try:
            return read_image(self.path_of(id_), grayscale=False,
                              **_limits(self.current()))
        except READ_ERRORS:
            raise ServiceError(404, f"the file of image {id_} cannot be read on the "
                               "server (moved or removed?)") from None

    def match_picture(self, id_: int, query_id: str) -> bytes:
        """PNG of the inlier matches between a recent search and image ``id_``."""
        import cv2

        from cvsearch.pictures import match_picture

        self.path_of(id_)  # 404 for an unknown id, first
        query = self._queries.get(query_id)
        if query is None:
            raise ServiceError(404, "no recent search with this query id (the "
                               f"service keeps the last {self.settings.recent_queries}"
                               "); search again")
        index = self.current()
        if _is_global(index):
            verifier = self.verifier
            if verifier is None:
                raise ServiceError(404, "this global index has no local features to "
                                   "match: start the service with --verify-with "
                                   "LOCAL_INDEX")
            if query.features is None:  # searched without verification: the
                # kept image's features, in its pixels (scale 1)
                query.features = verifier.extractor.extract(query.image)
                query.scale = 1.0
            try:
                local_id = verifier.id_of(index.names[id_])
            except KeyError:
                raise ServiceError(404, f"image {id_} is not in the verifying index"
                                   ) from None
            query_xy, db_xy = verifier.matches(query.features, local_id)
        else:
            finer = id_ in query.finer
            if finer and query.features.finer is None:  # kept without them: the
                # small image is kept whole, its finer features the same again
                query.features = index.extractor.extract(query.image, finer=True)
            query_xy, db_xy = index.matches(query.features, id_,
                                            mirrored=id_ in query.mirrored, finer=finer)
        picture = match_picture(query.image, self._read_color(id_),
                                np.asarray(query_xy) * query.scale, db_xy)
        return cv2.imencode(".png", picture)[1].tobytes()

    # --------------------------------------------------------------- writing
    def add(self, uploads: list[tuple[str, bytes]]) -> dict:
        """Add uploaded images, saved before this returns.

        The policy of ``cvsearch add``: a file that is not a readable image is
        skipped and named with the reason, and so is a file already added (the
        same bytes and file name: the same name in the index); the others are
        added. If nothing could be read, a 400 names every file.
        """
        if not uploads:
            raise ServiceError(422, "send one or more files in the field 'images'")
        decoded, skipped = [], []
        for filename, data in uploads:
            try:
                decoded.append((filename, data, self.decode(data, filename)))
            except ServiceError as error:
                skipped.append({"name": display_name(filename), "reason": error.message})
        if not decoded:
            raise ServiceError(400, "no file could be added: " + "; ".join(
                s["reason"] for s in skipped))
        index, verifier = self.current(), self.verifier
        # what each index adds: local features, or the images (described there)
        local = None if verifier is None else \
            [verifier.extractor.extract(image) for _, _, image in decoded]
        additions = [image for _, _, image in decoded] if _is_global(index) else \
            [index.extractor.extract(image) for _, _, image in decoded]
        names = [f"{UPLOADS}/{hashlib.sha256(data).hexdigest()[:16]}-"
                 f"{_safe_file_name(filename)}" for filename, data, _ in decoded]
        folder = self.index_dir / UPLOADS
        with self._writing("added") as (index, verifier):
            new = []
            for i, name in enumerate(names):
                if _holds(index, name) or name in names[:i]:
                    skipped.append({"name": name, "reason": "already in the index as "
                                    f"id {index.id_of(name)}" if _holds(index, name)
                                    else "sent twice in this request"})
                else:
                    new.append(i)
            added = []
            if new:
                folder.mkdir(exist_ok=True)
                for i in new:
                    storage.write_durably(self.index_dir / names[i], decoded[i][1])
                before = len(index)
                if verifier is not None:
                    # the verifier first: an image it holds and the global index
                    # does not is never a result, so a failure between is harmless
                    fresh = [j for j in new if not _holds(verifier, names[j])]
                    if fresh:
                        verifier.add([local[j] for j in fresh],
                                     names=[names[j] for j in fresh])
                        verifier.save(self.verify_dir)
                failed = index.add([additions[i] for i in new],
                                   names=[names[i] for i in new])
                skipped += [{"name": s.name, "reason": s.reason} for s in failed]
                # new ids are the largest (ids only grow), so the last ones
                added = index.ids[before - len(index):].tolist() \
                    if len(index) > before else []
                index.save(self.index_dir)
        self.counts["added"] += len(added)
        return {"added": [{"id": i, "name": display_name(index.names[i])}
                          for i in added],
                "skipped": skipped, "images": len(index)}

    def remove(self, id_: int) -> dict:
        """Remove image ``id_``, saved before this returns; the stored upload of
        an image added through the service is deleted after the save that
        forgets it (its keypoints go at the next compaction: :meth:`compact`)."""
        with self._writing("removed") as (index, verifier):
            name = index.names.get(id_) if known_id(id_) else None
            if name is None:
                raise ServiceError(404, f"no image with id {id_} in the index")
            index.remove([id_])
            index.save(self.index_dir)  # first: no longer a result
            if verifier is not None and _holds(verifier, name):
                verifier.remove([name])
                verifier.save(self.verify_dir)
        if name.startswith(UPLOADS + "/") and "/" not in name[len(UPLOADS) + 1:]:
            (self.index_dir / name).unlink(missing_ok=True)  # forgotten by the save
        self.counts["removed"] += 1
        return {"removed": {"id": id_, "name": display_name(name)}, "images": len(index)}

    def compact(self) -> dict:
        """Drop removed images from storage (their keypoints and words) in both
        indexes, saved before this returns."""
        with self._writing("compacted") as (index, verifier):
            index.compact()
            index.save(self.index_dir)
            if verifier is not None:
                verifier.compact()
                verifier.save(self.verify_dir)
        return {"images": len(index)}

    @contextlib.contextmanager
    def _writing(self, what: str):
        """One write: both writer locks held and the folders read again first
        (another worker may have saved, or the folder been replaced); yields
        ``(index, verifier)`` to change and save. Then the saved state is
        published; if the block fails, what is saved is loaded again (nothing
        unsaved is kept or acknowledged), and a folder changed under the write
        is a 409."""
        with self._write_lock, self._writer_locks():
            self._refresh()
            index, verifier = self.index, self.verifier
            try:
                yield index, verifier
            except ServiceError:
                raise  # refused before anything changed
            except storage.StaleWriterError as error:
                self._state = self._load()
                raise ServiceError(409, f"{error}; nothing was {what}: send it "
                                   "again") from None
            except BaseException:
                self._state = self._load()
                raise
            self._state = self._saved(index, verifier)

    @contextlib.contextmanager
    def _writer_locks(self):
        """The writer locks of the served folder and of the verifying one (both
        released if taking the second fails)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(storage.writer_lock(self.index_dir))
            if self.verify_dir is not None:
                stack.enter_context(storage.writer_lock(self.verify_dir))
            yield

    def stats(self) -> dict:
        index = self.current()
        disk = 0
        for path in self.index_dir.iterdir():
            try:  # a save may remove a file between listing and stat
                disk += path.stat().st_size if path.is_file() else 0
            except FileNotFoundError:
                pass
        if _is_global(index):
            parts = {"kind": "global", "words": None, "dim": index.dim,
                     "features": "cnn" + (f" + {self.verifier.extractor.method}"
                                          if self.verifier is not None else ""),
                     "segments": None, "search": index.search,
                     "verified": self.verifier is not None}
        else:
            parts = {"kind": "bag-of-words", "words": index.n_words, "dim": None,
                     "features": index.extractor.method,
                     "segments": index.n_segments, "search": "inverted file",
                     "verified": True}
        return {"images": len(index), **parts,
                "index_disk_bytes": disk, "generation": self.generation,
                "uptime_s": round(time.time() - self.started, 1),
                "queries_served": self.counts["queries"],
                "images_added": self.counts["added"],
                "images_removed": self.counts["removed"],
                "writable": self.settings.token is not None,
                "min_inliers": DEFAULT_MIN_INLIERS,
                "lineage": None if self.identity is None else self.identity.lineage}


def _ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 2)


def _safe_file_name(filename: str) -> str:
    """A client's file name reduced to letters, digits, '.', '-' and '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(filename or "image"))
    return name.strip("._")[:80] or "image"
