"""Atomic, pickle-free storage of an index directory.

Layout of a saved index directory::

    index.json                 manifest: format, version, parameters, and for each data
                               file its name and SHA-256
    vocabulary-<hash>.npz      arrays (numpy .npz, loaded with allow_pickle=False)
    database-<hash>.npz
    names-<hash>.json

Data files are named after their content and written before the manifest; the
manifest is replaced last with one atomic ``os.replace``. A crash or a full disk at
any point therefore leaves either the old manifest with its old files, or the new
manifest with its new files. Files no manifest refers to are removed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "index.json"
_DATA_FILE = re.compile(r"^(vocabulary|database|names)-[0-9a-f]{16}\.(npz|json)$")
_TEMP_PREFIX = ".cvsearch-tmp-"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` through a fsynced temporary file and os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def npz_bytes(arrays: dict) -> bytes:
    """Serialise arrays as an uncompressed .npz archive in memory."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8")


def save_directory(directory: str | os.PathLike, manifest: dict,
                   files: dict[str, tuple[str, bytes]]) -> None:
    """Save data files and the manifest that names them, atomically.

    Parameters
    ----------
    directory : str or os.PathLike
        Created if missing.
    manifest : dict
        JSON-serialisable; a ``"files"`` entry is added.
    files : dict
        ``{key: (extension, bytes)}`` with key in {"vocabulary", "database", "names"}.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory; choose another "
                         "path to save the index")
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for key, (extension, data) in files.items():
        digest = hashlib.sha256(data).hexdigest()
        name = f"{key}-{digest[:16]}.{extension}"
        if not (directory / name).exists() or _sha256(directory / name) != digest:
            _write_atomic(directory / name, data)
        entries[key] = {"name": name, "sha256": digest, "bytes": len(data)}
    _fsync_dir(directory)
    _write_atomic(directory / MANIFEST, json_bytes({**manifest, "files": entries}))
    _fsync_dir(directory)
    keep = {entry["name"] for entry in entries.values()}
    for path in directory.iterdir():
        stale = _DATA_FILE.match(path.name) and path.name not in keep
        if stale or path.name.startswith(_TEMP_PREFIX):
            path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike) -> tuple[Path, dict]:
    """Read and parse ``index.json``.

    Raises
    ------
    FileNotFoundError
        If the directory or its manifest is missing.
    ValueError
        If the manifest is not valid JSON or not a cvsearch manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise FileNotFoundError(2, "No such index directory", str(directory))
    if not path.is_file():
        raise FileNotFoundError(
            2, f"Not a cvsearch index (no {MANIFEST}); save one with Index.save",
            str(path))
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the index is "
                         "corrupt: rebuild it or restore a backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "cvsearch-index":
        raise ValueError(f"{path} is not a cvsearch index manifest")
    return path, manifest


def read_file(directory: Path, manifest: dict, key: str) -> bytes:
    """Bytes of the data file ``key``, after checking its SHA-256.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If the manifest entry is malformed or the checksum does not match.
    """
    entry = manifest.get("files", {}).get(key) if isinstance(
        manifest.get("files"), dict) else None
    if (not isinstance(entry, dict) or not isinstance(entry.get("name"), str)
            or not _DATA_FILE.match(entry["name"])
            or not isinstance(entry.get("sha256"), str)):
        raise ValueError(f"{directory / MANIFEST}: the entry for the {key} file is "
                         "missing or malformed; the index is corrupt")
    path = directory / entry["name"]
    if not path.is_file():
        raise FileNotFoundError(2, "Index data file is missing; the index is "
                                "incomplete: rebuild it or restore a backup", str(path))
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path} does not match its checksum in {MANIFEST}: it is "
                         "truncated or was modified; rebuild the index or restore a "
                         "backup")
    return data


def load_npz(data: bytes, path: Path, expected: dict) -> dict:
    """Arrays of an .npz archive, checked against ``{name: dtype}``, never unpickled.

    Raises
    ------
    ValueError
        If the archive cannot be read, holds object arrays, or lacks an array or has
        one of the wrong dtype.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # zipfile, numpy and OSError all signal bad files
        raise ValueError(f"{path} is not a readable .npz archive ({error}); the index "
                         "is corrupt") from None
    for name, dtype in expected.items():
        if name not in arrays:
            raise ValueError(f"{path} lacks the array {name!r}; the index is corrupt")
        if arrays[name].dtype != np.dtype(dtype):
            raise ValueError(f"{path}: array {name!r} has dtype {arrays[name].dtype}, "
                             f"expected {np.dtype(dtype)}; the index is corrupt")
    return arrays
