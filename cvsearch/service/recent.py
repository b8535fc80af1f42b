"""Recent searches, kept for their match pictures: in this process's memory, or,
when a service runs several worker processes, in a folder they share (a match
picture's request may reach another worker than its search did)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from cvsearch.features import Features
from cvsearch.service.limits import ByteBudgetCache, array_bytes

#: A recent query's image is kept for its match pictures at most this large
#: (longest side, pixels): the picture draws it 400 pixels high.
MATCH_SIDE = 1024


class Query:
    """A recent search: its image downscaled to :data:`MATCH_SIDE` (``scale``:
    that image's pixels per pixel of the image searched), its local features
    (None where the index has none) and the ids that matched it mirrored, and
    at twice its size (``finer``: a small image, kept whole, whose finer
    features are extracted again from it where not kept)."""

    def __init__(self, image: np.ndarray, features, scale: float | None = None,
                 mirrored=(), finer=()):
        import cv2

        if scale is None:
            scale = min(1.0, MATCH_SIDE / max(image.shape[:2]))
            if scale < 1.0:
                image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                           max(1, round(image.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
        self.image = image
        self.scale = float(scale)
        self.features = features
        self.mirrored = set(mirrored)  # ids that matched the mirrored query
        self.finer = set(finer)  # ids that matched the query at twice its size

    @property
    def nbytes(self) -> int:
        features = self.features  # a Features tuple of arrays, or None
        if features is None:
            return self.image.nbytes
        finer = features.finer
        return (self.image.nbytes + array_bytes(*features)
                + (0 if finer is None else array_bytes(*finer)))


class RecentQueries:
    """The last ``max_items`` queries, at most ``max_bytes`` together, in memory."""

    def __init__(self, max_bytes: int, max_items: int):
        self._cache = ByteBudgetCache(max_bytes, max_items, lambda q: q.nbytes)

    def put(self, query_id: str, query: Query) -> None:
        self._cache.put(query_id, query)

    def get(self, query_id: str) -> Query | None:
        return self._cache.get(query_id)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return self._cache.nbytes

    def __len__(self) -> int:
        return len(self._cache)


class SharedQueries(RecentQueries):
    """:class:`RecentQueries` that the worker processes of one service share:
    each query is also written to ``folder`` (one ``.npz`` file, written whole
    and renamed into place; read back without pickle), and the folder keeps the
    newest ``max_items`` files within ``max_bytes``."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int, max_items: int):
        super().__init__(max_bytes, max_items)
        self.folder = Path(folder)
        self.max_bytes, self.max_items = int(max_bytes), int(max_items)
        self._lock = threading.Lock()

    def _path(self, query_id: str) -> Path | None:
        # ids are secrets.token_urlsafe: anything else names no file
        if not query_id or not all(c.isalnum() or c in "-_" for c in query_id):
            return None
        return self.folder / f"{query_id}.npz"

    def put(self, query_id: str, query: Query) -> None:
        super().put(query_id, query)
        path = self._path(query_id)
        if path is None or self.max_items == 0 or query.nbytes > self.max_bytes:
            return
        features = query.features
        arrays = {"image": query.image, "scale": np.float64(query.scale),
                  "mirrored": np.array(sorted(query.mirrored), np.int64),
                  "finer": np.array(sorted(query.finer), np.int64)}
        if features is not None:
            arrays.update(keypoints=features.keypoints,
                          descriptors=features.descriptors,
                          image_shape=np.array(features.image_shape, np.int64),
                          extractor=np.array(json.dumps(features.extractor)))
            if features.thumbnail is not None:
                arrays["thumbnail"] = features.thumbnail
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._prune()

    def _prune(self) -> None:
        """Remove the oldest files beyond ``max_items`` or ``max_bytes``."""
        with self._lock:
            files = []
            for path in self.folder.glob("*.npz"):
                try:
                    info = path.stat()
                except FileNotFoundError:  # pruned by another worker
                    continue
                files.append((info.st_mtime_ns, info.st_size, path))
            files.sort(reverse=True)
            total = 0
            for rank, (_, size, path) in enumerate(files):
                total += size
                if rank >= self.max_items or total > self.max_bytes:
                    path.unlink(missing_ok=True)

    def get(self, query_id: str) -> Query | None:
        query = super().get(query_id)
        path = self._path(query_id)
        if query is not None or path is None:
            return query
        try:
            with np.load(path, allow_pickle=False) as saved:
                features = None
                if "keypoints" in saved:
                    features = Features(saved["keypoints"], saved["descriptors"],
                                        tuple(int(s) for s in saved["image_shape"]),
                                        json.loads(str(saved["extractor"])),
                                        saved["thumbnail"] if "thumbnail" in saved
                                        else None)
                query = Query(saved["image"], features, float(saved["scale"]),
                              saved["mirrored"].tolist(),
                              saved["finer"].tolist() if "finer" in saved else ())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # pruned meanwhile, or torn
        super().put(query_id, query)
        return query


def remove_shared_queries(folder: str | os.PathLike) -> None:
    """Remove the files :class:`SharedQueries` writes in ``folder`` (its
    ``.npz`` queries and half-written ``.tmp`` files), then the folder if that
    left it empty: what a worker does when its service was killed and could not
    remove the folder it made. Anything else in it stays, with the folder (a
    folder a user named); a missing folder is nothing to do."""
    folder = Path(folder)
    for pattern in ("*.npz", "*.tmp"):
        for path in folder.glob(pattern):
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass  # another worker took it, or it is no file of ours
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone else's files), or gone already
