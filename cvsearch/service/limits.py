"""What one client may cost the service: the request body's size, the memory of
the caches, and ids and names that every answer can carry."""

from __future__ import annotations

import json
import threading

import numpy as np

#: Ids are int64: any other integer names no image (404, never an overflow).
MAX_ID = 2**63 - 1


def known_id(id_) -> bool:
    """Whether ``id_`` could be an image id at all (an int in int64's range)."""
    return isinstance(id_, int) and not isinstance(id_, bool) and 0 <= id_ <= MAX_ID


def display_name(name: str) -> str:
    """A name as valid Unicode for JSON: file names of bytes that are not UTF-8
    (held as lone surrogates, as Python's file functions give them) show those
    bytes as ``\\xNN``; every other name is unchanged."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ByteBudgetCache:
    """A thread-safe least-recently-used cache bounded in bytes and in entries
    (cachetools' LRUCache, which weighs each value with ``size_of``).

    Parameters
    ----------
    max_bytes : int
        What the values may weigh together; a value heavier than that is not kept.
    max_items : int
        How many values at the most.
    size_of : callable
        Bytes of a value.
    """

    def __init__(self, max_bytes: int, max_items: int, size_of):
        from cachetools import LRUCache

        self._cache = LRUCache(maxsize=max(0, int(max_bytes)), getsizeof=size_of)
        self._size_of = size_of
        self._max_items = max(0, int(max_items))
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            return self._cache.get(key)

    def put(self, key, value) -> None:
        if self._max_items == 0 or self._size_of(value) > self._cache.maxsize:
            return  # too large to keep: the caller still has it
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self._max_items:
                self._cache.popitem()  # the least recently used

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)


def array_bytes(*values) -> int:
    """Bytes of the arrays among ``values`` (others count 0)."""
    return sum(v.nbytes for v in values if isinstance(v, np.ndarray))


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413, before it
    is read when its Content-Length says so, else as soon as the bytes received
    pass the limit (a chunked upload). The parser that was reading the body is
    stopped; whatever answer it would have made instead (FastAPI turns a failed
    body into a 400) is replaced by the 413."""

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
            return await send_json(send, 413, {"detail": message})
        received, started, too_large = 0, False, False

        async def limited_receive():
            nonlocal received, too_large
            if too_large:
                raise _BodyTooLarge
            item = await receive()
            if item["type"] == "http.request":
                received += len(item.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return item

        async def limited_send(item):
            nonlocal started
            if too_large:  # the app answered its parser's failure: ours instead
                if not started:
                    started = True
                    await send_json(send, 413, {"detail": message})
                return
            if item["type"] == "http.response.start":
                started = True
            await send(item)

        try:
            await self.app(scope, limited_receive, limited_send)
        except _BodyTooLarge:
            pass
        if too_large and not started:
            await send_json(send, 413, {"detail": message})


async def send_json(send, status: int, payload: dict):
    """Send a whole JSON answer through an ASGI ``send``."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
