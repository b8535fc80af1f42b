"""``cvsearch serve``: an index behind HTTP, with a web page.

Built on FastAPI and uvicorn (``pip install 'cvsearch[server]'``). The index is
loaded once at start-up; queries run in FastAPI's thread pool (OpenCV and the
scoring loops release the GIL) and each sees one state of the index, while adds
and removes go through one writer at a time and are saved before they are
acknowledged.

Routes (all answers JSON, errors as ``{"detail": message}``):

- ``POST /search``: an uploaded image (multipart field ``image``), ``k``,
  ``rerank``: the results with scores, inliers, image and thumbnail URLs, and the
  time per stage.
- ``GET /images/{id}``, ``GET /thumbnails/{id}``: an image of the index, by id
  (no path from a client reaches the file system).
- ``GET /matches/{id}?query=Q``: the match picture (PNG) of a recent search ``Q``
  with result ``id``.
- ``POST /images`` (multipart ``images``), ``DELETE /images/{id}``: only with the
  token (``Authorization: Bearer TOKEN``); without a token the service is
  read-only.
- ``GET /health``, ``GET /stats``, the page at ``/`` and the OpenAPI page at
  ``/docs``.

Uploaded images are kept in ``INDEX_DIR/uploads/`` and named
``uploads/<digest>-<file name>`` in the index; other names are paths, relative to
``images_root`` unless absolute.

With several workers (processes), each loads the index; a worker reloads it when
another has saved a change (checked at most once a second), and writers take the
folder's writer lock, so no update is lost.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations,
# which name types imported inside create_app.
import collections
import contextlib
import hashlib
import mimetypes
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

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

WEB = Path(__file__).resolve().parent / "web"
UPLOADS = "uploads"


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
    images_root : Path
        Relative image names are found under it.
    max_k, max_rerank : int
        Largest ``k`` and ``rerank`` a client may ask.
    thumbnail_side : int
        Longest side of thumbnails, pixels.
    recent_queries : int
        Searches kept for their match pictures.
    refresh_seconds : float
        How often a worker checks whether another process saved the index.
    verify_with : Path or None
        With a global index: a bag-of-words index of the same images, which
        verifies the search's ``rerank`` short-list and draws match pictures;
        images added or removed through the service change both.
    """

    index_dir: Path
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    images_root: Path = field(default_factory=Path.cwd)
    max_k: int = 100
    max_rerank: int = 200
    thumbnail_side: int = 256
    recent_queries: int = 64
    refresh_seconds: float = 1.0
    verify_with: Path | None = None

    @classmethod
    def from_environment(cls) -> "Settings":
        """Settings from ``CVSEARCH_*`` variables (how ``cvsearch serve`` passes
        them to its worker processes)."""
        env = os.environ
        return cls(index_dir=Path(env["CVSEARCH_INDEX"]),
                   token=env.get("CVSEARCH_TOKEN") or None,
                   max_upload_bytes=int(env.get("CVSEARCH_MAX_UPLOAD_BYTES",
                                                20 * 2**20)),
                   images_root=Path(env.get("CVSEARCH_IMAGES_ROOT", os.getcwd())),
                   verify_with=Path(env["CVSEARCH_VERIFY_WITH"])
                   if env.get("CVSEARCH_VERIFY_WITH") else None)


class ServiceError(Exception):
    """An answer other than success: HTTP status and a message for a person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Query:
    """A recent search, kept for its match pictures (``features``: local
    features, None where the index has none)."""

    def __init__(self, image: np.ndarray, features):
        self.image = image
        self.features = features


def _is_global(index) -> bool:
    return isinstance(index, GlobalIndex)


def _holds(index, name: str) -> bool:
    try:
        index.id_of(name)
        return True
    except KeyError:
        return False


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
        # (index, the generation it was loaded or saved as, the verifying index or
        # None, its generation): replaced as one value, and only under
        # _write_lock, so a reader sees a consistent state
        self._state = self._load()
        self._checked = time.monotonic()
        self._write_lock = threading.Lock()
        self._queries_lock = threading.Lock()  # for both caches below
        self._queries = collections.OrderedDict()
        self._thumbnails = collections.OrderedDict()
        self.started = time.time()
        self.counts = collections.Counter()

    # --------------------------------------------------------------- state
    @property
    def index(self) -> Index | GlobalIndex:
        return self._state[0]

    @property
    def generation(self) -> int | None:
        return self._state[1]

    @property
    def verifier(self) -> Index | None:
        """The bag-of-words index verifying a global index (``verify_with``)."""
        return self._state[2]

    def _generations(self) -> tuple:
        return (storage.read_generation(self.index_dir, None),
                None if self.verify_dir is None
                else storage.read_generation(self.verify_dir, None))

    def _load(self) -> tuple:
        """``(index, generation, verifier, its generation)`` as saved now, without
        taking the folders' locks (readers never wait for another process's
        writer): the generations read before and after the load must agree
        (generations only grow)."""
        while True:
            before = self._generations()
            index = load_index(self.index_dir)
            verifier = None
            if self.verify_dir is not None:
                if not _is_global(index):
                    raise ValueError(f"--verify-with verifies a global index's "
                                     f"short-list; {self.index_dir} is a bag-of-words "
                                     "index, which verifies with its own features")
                verifier = Index.load(self.verify_dir).warm_up()
            if self._generations() == before:
                return index.warm_up(), before[0], verifier, before[1]

    def _saved(self, index, verifier) -> tuple:
        generations = self._generations()
        return index, generations[0], verifier, generations[1]

    def current(self) -> Index:
        """The index, reloaded first if another process saved a change (checked
        at most every ``refresh_seconds``). A reader never waits: if a writer is busy, it
        answers from the state it has (the writer publishes a newer one)."""
        if time.monotonic() - self._checked >= self.settings.refresh_seconds:
            self._checked = time.monotonic()
            if self._generations() != (self._state[1], self._state[3]) \
                    and self._write_lock.acquire(blocking=False):
                try:
                    self._refresh()
                finally:
                    self._write_lock.release()
        return self.index

    def _refresh(self):
        """Reload if a folder holds a newer generation (hold ``_write_lock``)."""
        if self._generations() != (self._state[1], self._state[3]):
            self._state = self._load()

    def path_of(self, id_: int) -> Path:
        """The file of image ``id_``: a 404 ServiceError if there is none."""
        name = self.current().names.get(id_) if isinstance(id_, int) else None
        if name is None:
            raise ServiceError(404, f"no image with id {id_} in the index")
        path = Path(name)
        if not path.is_absolute():
            root = self.index_dir if name.startswith(UPLOADS + "/") \
                else self.settings.images_root
            path = root / path
        return path

    # --------------------------------------------------------------- reading
    def decode(self, data: bytes, filename: str) -> np.ndarray:
        """A colour image of uploaded bytes; a 400 ServiceError naming the
        problem if they are not a readable image."""
        index = self.current()
        try:
            return decode_image(data, f"upload {filename!r}", grayscale=False,
                                max_pixels=_limits(index)["max_pixels"])
        except UnreadableImageError as error:
            raise ServiceError(400, str(error)) from None

    def search(self, data: bytes, filename: str, k: int, rerank: int,
               min_inliers: int = DEFAULT_MIN_INLIERS) -> dict:
        """Search with an uploaded image: the JSON answer of ``POST /search``."""
        if k > self.settings.max_k or rerank > self.settings.max_rerank:
            raise ServiceError(422, f"k is at most {self.settings.max_k} and rerank "
                               f"at most {self.settings.max_rerank}")
        timings = {}
        started = time.perf_counter()
        image = self.decode(data, filename)
        timings["decode_ms"] = _ms(started)
        index, verifier = self.current(), self.verifier
        if not len(index):
            raise ServiceError(409, "the index holds no images yet; add some first")
        if _is_global(index):
            if rerank and verifier is None:
                raise ServiceError(422, "this global index verifies nothing: start "
                                   "the service with --verify-with LOCAL_INDEX to "
                                   "re-rank")
            scores, ids, inliers, features, timings = self._search_global(
                index, verifier, image, k, rerank, min_inliers, timings)
        else:
            started = time.perf_counter()
            features = index.extractor.extract(image)
            timings["features_ms"] = _ms(started)
            started = time.perf_counter()
            scores, ids, inliers = index.query(features, k=k, rerank=rerank,
                                               min_inliers=min_inliers,
                                               return_inliers=True)
            timings["search_ms"] = _ms(started)
        query_id = secrets.token_urlsafe(12)
        with self._queries_lock:
            self._queries[query_id] = _Query(image, features)
            while len(self._queries) > self.settings.recent_queries:
                self._queries.popitem(last=False)
        names = index.names
        matchless = _is_global(index) and verifier is None  # no local features
        results = []
        for score, id_, n in zip(scores.tolist(), ids.tolist(), inliers.tolist()):
            name = names.get(id_)
            if name is None:  # removed since the query ran: left out
                continue
            results.append({
                "rank": len(results) + 1, "id": id_, "name": name,
                "score": round(score, 6), "inliers": n if n >= 0 else None,
                "image_url": f"/images/{id_}", "thumbnail_url": f"/thumbnails/{id_}",
                "match_url": None if matchless else
                f"/matches/{id_}?query={query_id}"})
        self.counts["queries"] += 1
        return {"query": query_id, "k": k, "rerank": rerank, "results": results,
                "timings": timings,
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
        with self._queries_lock:
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
        with self._queries_lock:
            self._thumbnails[key] = data
            while len(self._thumbnails) > 2048:
                self._thumbnails.popitem(last=False)
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
        with self._queries_lock:
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
            if query.features is None:  # searched without verification
                query.features = verifier.extractor.extract(query.image)
            try:
                local_id = verifier.id_of(index.names[id_])
            except KeyError:
                raise ServiceError(404, f"image {id_} is not in the verifying index"
                                   ) from None
            query_xy, db_xy = verifier.matches(query.features, local_id)
        else:
            query_xy, db_xy = index.matches(query.features, id_)
        picture = match_picture(query.image, self._read_color(id_), query_xy, db_xy)
        return cv2.imencode(".png", picture)[1].tobytes()

    # --------------------------------------------------------------- writing
    def add(self, uploads: list[tuple[str, bytes]]) -> dict:
        """Add uploaded images, saved before this returns.

        Every upload is decoded first: if one is not a readable image, nothing is
        added (400). A file already added (the same bytes and file name: the same
        name in the index) is skipped.
        """
        if not uploads:
            raise ServiceError(422, "send one or more files in the field 'images'")
        decoded = [(filename, data, self.decode(data, filename))
                   for filename, data in uploads]
        index, verifier = self.current(), self.verifier
        # what each index adds: local features, or the images (described there)
        local = None if verifier is None else \
            [verifier.extractor.extract(image) for _, _, image in decoded]
        additions = [image for _, _, image in decoded] if _is_global(index) else \
            [index.extractor.extract(image) for _, _, image in decoded]
        names = [f"{UPLOADS}/{hashlib.sha256(data).hexdigest()[:16]}-"
                 f"{_safe_file_name(filename)}" for filename, data, _ in decoded]
        folder = self.index_dir / UPLOADS
        with self._write_lock, self._writer_locks():
            self._refresh()  # another worker may have saved since
            index, verifier = self.index, self.verifier
            folder.mkdir(exist_ok=True)
            for name, (_, data, _) in zip(names, decoded):
                _write_durably(self.index_dir / name, data)
            before = len(index)
            try:
                if verifier is not None:
                    # the verifier first: an image it holds and the global index
                    # does not is never a result, so a failure between is harmless
                    verifier.add(local, names=names)
                    verifier.save(self.verify_dir)
                skipped = index.add(additions, names=names)
                # new ids are the largest (ids only grow), so the last ones
                added = index.ids[before - len(index):].tolist() \
                    if len(index) > before else []
                index.save(self.index_dir)
            except BaseException:
                self._state = self._load()  # not saved: not acknowledged, not kept
                raise
            self._state = self._saved(index, verifier)
        self.counts["added"] += len(added)
        return {"added": [{"id": i, "name": index.names[i]} for i in added],
                "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
                "images": len(index)}

    def remove(self, id_: int) -> dict:
        """Remove image ``id_``, saved before this returns."""
        with self._write_lock, self._writer_locks():
            self._refresh()
            index, verifier = self.index, self.verifier
            name = index.names.get(id_)
            if name is None:
                raise ServiceError(404, f"no image with id {id_} in the index")
            try:
                index.remove([id_])
                index.save(self.index_dir)  # first: no longer a result
                if verifier is not None and _holds(verifier, name):
                    verifier.remove([name])
                    verifier.save(self.verify_dir)
            except BaseException:
                self._state = self._load()  # back to what is saved
                raise
            self._state = self._saved(index, verifier)
        self.counts["removed"] += 1
        return {"removed": {"id": id_, "name": name}, "images": len(index)}

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
        disk = sum(p.stat().st_size for p in self.index_dir.iterdir() if p.is_file())
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
                "writable": self.settings.token is not None}


def _ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 2)


def _safe_file_name(filename: str) -> str:
    """A client's file name reduced to letters, digits, '.', '-' and '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(filename or "image"))
    return name.strip("._")[:80] or "image"


def _write_durably(path: Path, data: bytes) -> None:
    """Write a file and flush it to disk (a no-op if it is already there)."""
    if path.is_file() and path.stat().st_size == len(data):
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------- the app
class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413 before
    it is read (by its Content-Length) or as soon as it passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"the request is larger than the limit of "
                   f"{self.max_bytes / 2**20:g} MB; send a smaller image (or start the "
                   "service with a larger --max-upload-mb)")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {"detail": message})
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            item = await receive()
            if item["type"] == "http.request":
                received += len(item.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return item

        async def tracking_send(item):
            nonlocal started
            if item["type"] == "http.response.start":
                started = True
            await send(item)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"detail": message})


async def _send_json(send, status: int, payload: dict):
    import json

    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _models():
    """The answers' pydantic models (so /docs documents them), made on first use
    because pydantic comes with the 'server' extra."""
    from types import SimpleNamespace

    from pydantic import BaseModel

    class Result(BaseModel):
        rank: int
        id: int
        name: str
        score: float
        inliers: int | None
        image_url: str
        thumbnail_url: str
        match_url: str | None

    class Timings(BaseModel):
        decode_ms: float
        features_ms: float
        search_ms: float

    class SearchAnswer(BaseModel):
        query: str
        k: int
        rerank: int
        results: list[Result]
        timings: Timings
        keypoints: int | None

    class Image(BaseModel):
        id: int
        name: str

    class Skipped(BaseModel):
        name: str
        reason: str

    class AddAnswer(BaseModel):
        added: list[Image]
        skipped: list[Skipped]
        images: int

    class RemoveAnswer(BaseModel):
        removed: Image
        images: int

    class Health(BaseModel):
        status: str
        images: int
        worker: int

    class Stats(BaseModel):
        images: int
        kind: str
        words: int | None
        dim: int | None
        features: str
        segments: int | None
        search: str
        verified: bool
        index_disk_bytes: int
        generation: int | None
        uptime_s: float
        queries_served: int
        images_added: int
        images_removed: int
        writable: bool

    class Problem(BaseModel):
        detail: str

    return SimpleNamespace(**{c.__name__: c for c in (
        Result, Timings, SearchAnswer, Image, Skipped, AddAnswer, RemoveAnswer, Health,
        Stats, Problem)})


def create_app(settings: Settings | None = None):
    """The FastAPI application of a service (settings from the environment if
    None: see :meth:`Settings.from_environment`)."""
    import contextlib

    from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    settings = settings or Settings.from_environment()
    state = {}
    models = _models()

    def problems(*codes):
        return {code: {"model": models.Problem} for code in codes}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["library"] = Library(settings)
        yield
        state.clear()

    from cvsearch import __version__

    app = FastAPI(title="cvsearch", version=__version__, lifespan=lifespan,
                  description="Reverse image search with classical computer vision.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 64 * 1024)

    def library() -> Library:
        return state["library"]

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in error.errors())
        return JSONResponse({"detail": f"malformed request: {problems}"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # never a bare 500
        import logging

        logging.getLogger("cvsearch").exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); "
                             "the request was not completed"}, status_code=500)

    def writer(authorization: Annotated[str | None, Header(
            description="Bearer TOKEN")] = None):
        """Writes need the service's token."""
        if settings.token is None:
            raise ServiceError(403, "this service is read-only; start it with --token "
                               "(or CVSEARCH_TOKEN) to allow adding and removing")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not secrets.compare_digest(given.encode(),
                                                   settings.token.encode()):
            raise ServiceError(401, "a write needs the header 'Authorization: Bearer "
                               "TOKEN' with the service's token")

    def read_upload(upload: UploadFile) -> bytes:
        return upload.file.read()

    @app.post("/search", summary="Search with an uploaded image",
              response_model=models.SearchAnswer,
              responses=problems(400, 409, 413, 422))
    def search(image: Annotated[UploadFile, File(description="the query image")],
               k: Annotated[int, Form(ge=1, description="results")] = 10,
               rerank: Annotated[int, Form(ge=0, description="short-list verified "
                                           "with RANSAC (0: none)")] = 0,
               min_inliers: Annotated[int, Form(ge=1)] = DEFAULT_MIN_INLIERS):
        return library().search(read_upload(image), image.filename or "image", k,
                                rerank, min_inliers)

    @app.get("/images/{id}", summary="An image of the index",
             responses=problems(404, 422))
    def image(id: int):
        data, media_type = library().image_bytes(id)
        return Response(data, media_type=media_type)

    @app.get("/thumbnails/{id}", summary="A thumbnail (JPEG) of an image of the index",
             responses=problems(404, 422))
    def thumbnail(id: int):
        return Response(library().thumbnail(id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/matches/{id}", summary="Match picture (PNG) of a search and a result",
             responses=problems(404, 422))
    def matches(id: int, query: Annotated[str, Query(min_length=1, max_length=64)]):
        return Response(library().match_picture(id, query), media_type="image/png")

    @app.post("/images", status_code=201, dependencies=[Depends(writer)],
              summary="Add uploaded images (saved before the answer)",
              response_model=models.AddAnswer,
              responses=problems(400, 401, 403, 413, 422))
    def add(images: Annotated[list[UploadFile], File(description="image files")]):
        return library().add([(u.filename or "image", read_upload(u)) for u in images])

    @app.delete("/images/{id}", dependencies=[Depends(writer)],
                summary="Remove an image (saved before the answer)",
                response_model=models.RemoveAnswer,
                responses=problems(401, 403, 404, 422))
    def remove(id: int):
        return library().remove(id)

    @app.get("/health", response_model=models.Health)
    def health():
        return {"status": "ok", "images": len(library().current()),
                "worker": os.getpid()}

    @app.get("/stats", response_model=models.Stats)
    def stats():
        return library().stats()

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "warning", ready=None) -> None:
    """Run the service with uvicorn until it is stopped (``ready()`` is called
    once the index is found usable, before the server starts)."""
    import uvicorn

    os.environ.update({
        "CVSEARCH_INDEX": str(Path(settings.index_dir).resolve()),
        "CVSEARCH_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "CVSEARCH_IMAGES_ROOT": str(Path(settings.images_root).resolve())})
    if settings.token:
        os.environ["CVSEARCH_TOKEN"] = settings.token
    if settings.verify_with is not None:
        os.environ["CVSEARCH_VERIFY_WITH"] = str(Path(settings.verify_with).resolve())
    Library(settings)  # fail here, with a clear message, if the index is unusable
    if ready is not None:
        ready()
    uvicorn.run("cvsearch.service:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level)
