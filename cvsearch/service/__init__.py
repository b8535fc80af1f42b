"""``cvsearch serve``: an index behind HTTP, with a web page.

Built on FastAPI and uvicorn (``pip install 'cvsearch[server]'``). Where things are:

- :mod:`cvsearch.service.app`: the FastAPI application, its routes and answers'
  models, and :func:`serve` (uvicorn, workers, start-up checks).
- :mod:`cvsearch.service.library`: :class:`Settings` and :class:`Library`, the
  served index and what the routes do with it (search, add, remove, the reload
  when another process saved or the folder was replaced); no HTTP there.
- :mod:`cvsearch.service.limits`: what a client may cost: the body limit, the
  byte-bounded caches of recent queries and thumbnails, ids and names made safe
  for JSON.
- ``cvsearch/web/``: the page (plain HTML, CSS and JavaScript).

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
- ``GET /health``, ``GET /stats``, the page at ``/`` and the OpenAPI pages at
  ``/docs`` and ``/redoc`` (their scripts ship with the package: nothing is
  loaded from the internet).
"""

from cvsearch.service.app import create_app, serve
from cvsearch.service.library import Library, ServiceError, Settings

__all__ = ["Library", "ServiceError", "Settings", "create_app", "serve"]
