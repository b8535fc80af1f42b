"""The FastAPI application of ``cvsearch serve``: routes, the answers' models,
the middleware that bounds a request, and :func:`serve`."""

# No "from __future__ import annotations": FastAPI reads the routes' annotations,
# which name types imported inside create_app.
import os
import secrets
from pathlib import Path
from typing import Annotated

from cvsearch.rerank import DEFAULT_MIN_INLIERS
from cvsearch.service.library import Library, ServiceError, Settings
from cvsearch.service.limits import BodyLimit

WEB = Path(__file__).resolve().parent.parent / "web"


def _models():
    """The answers' pydantic models (so /docs documents them), made on first use
    because pydantic comes with the 'server' extra."""
    from types import SimpleNamespace

    from pydantic import BaseModel, Field

    class Result(BaseModel):
        rank: int
        id: int
        name: str
        score: float
        inliers: int | None
        decision: str | None = Field(
            None, description="copy (the same picture), object (the same object), "
            "none (verified: neither), unverified (not verified, or its count was "
            "not finished); null for a global index")
        log_nfa: float | None = Field(
            None, description="log10 of the chance matches this strong expected per "
            "query over the images verified (object: <= -2)")
        coverage: float | None = Field(
            None, description="share of the images' common part the matches cover "
            "(copy: >= 0.5 on average over both, or >= 0.3 where the pixels agree "
            ">= 0.8)")
        agreement: float | None = Field(
            None, description="share of the two images' aligned thumbnails whose "
            "pixels agree (copy: >= 2/3, or >= 0.8 where the coverage is 0.3 to "
            "0.5 or the residual over 0.1); null where not measured")
        contained: float | None = Field(
            None, description="the larger share of either image that lies inside "
            "the other under the matches' transform (copy: >= 0.5); null where not "
            "measured")
        scale: float | None = Field(
            None, description="the result's pixels per query pixel along a side, "
            "where they agree (0.5: the result shows it at half size); null where "
            "not measured")
        residual: float | None = Field(
            None, description="the matches' median distance from where their "
            "transform puts them, as a share of their size (copy: agreement >= 0.8 "
            "where it is over 0.1); null where not measured")
        mirrored: bool = Field(False, description="matched the mirrored query")
        finer: bool = Field(False, description="matched the query at twice its size "
                            "(a small query, a thumbnail, is searched so too)")
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
        min_inliers: int
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
        min_inliers: int
        lineage: str | None

    class Problem(BaseModel):
        detail: str

    return SimpleNamespace(**{c.__name__: c for c in (
        Result, Timings, SearchAnswer, Image, Skipped, AddAnswer, RemoveAnswer, Health,
        Stats, Problem)})


def create_app(settings: Settings | None = None):
    """The FastAPI application of a service (settings from the environment if
    None: see :meth:`Settings.from_environment`)."""
    import contextlib

    from fastapi import Depends, File, Form, Header, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    settings = settings or Settings.from_environment()
    if settings.one_thread_per_search:
        from cvsearch._threads import one_thread_per_worker

        one_thread_per_worker()
    if settings.end_with_parent:
        import functools

        from cvsearch.parallel import end_with_parent
        from cvsearch.service.recent import remove_shared_queries

        # the parent (serve) removes the folder of shared queries when it ends;
        # killed, it cannot: its workers do as they end, removing only the
        # queries' own files (the folder may be one a user named)
        end_with_parent(then=None if settings.queries_dir is None else functools.partial(
            remove_shared_queries, settings.queries_dir))
    state = {}
    models = _models()

    def problems(*codes):
        return {code: {"model": models.Problem} for code in codes}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["library"] = app.state.library = Library(settings)
        yield
        state.clear()

    from cvsearch import __version__

    # the API pages' scripts ship with fastapi-offline: nothing from a CDN
    app = FastAPIOffline(title="cvsearch", version=__version__, lifespan=lifespan,
                         description="Reverse image search with classical computer "
                         "vision.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 64 * 1024)
    if settings.close_connections:
        app.add_middleware(CloseConnections)
    # a web page cannot reach the service through a name it controls (DNS rebinding)
    app.add_middleware(TrustedHostMiddleware,
                       allowed_hosts=list(settings.allowed_hosts) or ["127.0.0.1"])

    def library() -> Library:
        return state["library"]

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        def say(e):
            where = '.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]
            if "UploadFile" in str(e.get("msg", "")):  # text (a URL?) for a file
                return (f"{where}: send the image's bytes as a file (multipart, e.g. "
                        f"curl -F {where}=@photo.jpg); this service does not fetch "
                        "URLs: download the image first (cvsearch query on the "
                        "command line takes a URL)")
            return f"{where}: {e['msg']}"
        problems = "; ".join(say(e) for e in error.errors())
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
        scheme, _, given = (authorization or "").partition(" ")
        if scheme != "Bearer" or not given or not secrets.compare_digest(
                given.encode(), settings.token.encode()):
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
                                           "geometrically (0: none)")] = 0,
               min_inliers: Annotated[int, Form(ge=1)] = DEFAULT_MIN_INLIERS,
               mirror: Annotated[bool, Form(description="also search for the image "
                                            "mirrored left-right")] = False):
        return library().search(read_upload(image), image.filename or "image", k,
                                rerank, min_inliers, mirror)

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
    def add(images: Annotated[list[UploadFile], File(description="image files")],
            response: Response):
        answer = library().add([(u.filename or "image", read_upload(u))
                                for u in images])
        if not answer["added"]:  # nothing new: every file was already there
            response.status_code = 200
        return answer

    @app.delete("/images/{id}", dependencies=[Depends(writer)],
                summary="Remove an image (saved before the answer)",
                response_model=models.RemoveAnswer,
                responses=problems(401, 403, 404, 422))
    def remove(id: int):
        return library().remove(id)

    @app.post("/compact", dependencies=[Depends(writer)],
              summary="Drop removed images' data from storage (saved before the "
              "answer)", responses=problems(401, 403))
    def compact():
        return library().compact()

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


class CloseConnections:
    """ASGI middleware: every response says ``Connection: close`` (see
    :attr:`Settings.close_connections`)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    *message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "warning", ready=None) -> None:
    """Run the service with uvicorn until it is stopped (``ready(library)`` is
    called with the :class:`Library` once the index is found usable, before the
    server starts). Every field of
    ``settings`` reaches every worker (as JSON in ``CVSEARCH_SETTINGS``); the
    bound host joins ``settings.allowed_hosts``.

    Raises
    ------
    ValueError
        If the port is not 1-65535, workers is below 1, or the index cannot be
        served (the message says why).
    """
    import dataclasses

    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not a TCP port: give one from 1 to 65535")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    hosts = tuple(dict.fromkeys([*settings.allowed_hosts, host.strip("[]")]))
    settings = dataclasses.replace(
        settings, index_dir=Path(settings.index_dir).resolve(),
        images_root=None if settings.images_root is None
        else Path(settings.images_root).resolve(), allowed_hosts=hosts,
        verify_with=None if settings.verify_with is None
        else Path(settings.verify_with).resolve())
    library = Library(settings)  # fail here, with a clear message, if unusable
    settings = dataclasses.replace(settings, one_thread_per_search=True)
    shared = None
    if workers > 1:  # a match picture's request may reach another worker
        import tempfile

        shared = tempfile.mkdtemp(prefix="cvsearch-queries-")
        settings = dataclasses.replace(settings, queries_dir=Path(shared),
                                       end_with_parent=True, close_connections=True)
    os.environ["CVSEARCH_SETTINGS"] = settings.to_json()
    if ready is not None:
        ready(library)
    del library  # the workers load their own
    try:
        uvicorn.run("cvsearch.service:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level=log_level)
    finally:
        if shared is not None:
            import shutil

            shutil.rmtree(shared, ignore_errors=True)
