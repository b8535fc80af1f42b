"""Atomic, pickle-free storage of an index directory.

Layout of a saved index directory::

    index.json                     manifest: format, version, parameters, generation,
                                   and for each data file its name, size and SHA-256
    vocabulary-<hash>.npz          the vocabulary's arrays
    seg-<array>-<hash>.npy         one uncompressed .npy per array of each segment
                                   (see cvsearch.store), memory-mapped when loaded
    names-<hash>.json              the names of a segment's images
    deleted-<hash>.npy             ids of removed images (tombstones), if any

Files are named after their content, so a save writes only what the folder does
not hold yet: after adding a batch to a large index, its new segment, the
tombstones and the manifest.

Data files are named after their content and written before the manifest; the
manifest is replaced last with one atomic ``os.replace``. A crash or a full disk at
any point therefore leaves either the old manifest with its old files, or the new
manifest with its new files. Files no manifest refers to are removed afterwards.

What loading checks, and when (an index folder may come from anyone):

- the manifest: at most ``MAX_MANIFEST_BYTES``, valid JSON, and its own SHA-256
  (``manifest_sha256``, over its canonical JSON without that key) must match, so a
  changed parameter is caught like a changed array;
- each data file: a regular file of exactly the size the manifest gives (checked
  before it is read, so nothing larger is ever read), then its SHA-256;
- each ``.npz``: only the arrays expected are read; each must be stored
  uncompressed, with the expected dtype, and a header whose shape accounts for
  exactly the bytes of its member, so no array is allocated larger than its file;
- each ``.npy``: the same header checks, then it is memory-mapped, not read;
- then the arrays against each other (``Index.load``).

With ``verify=True`` (the default of ``Index.load``) every file is hashed
(SHA-256 runs at about 1.3 GB/s per core here), but not all at load:

- at load, everything scoring reads (ids, image sizes, keypoint offsets,
  postings, names, tombstones, the vocabulary), hashed on all cores at once;
- each segment's keypoint arrays (words, positions, shapes: most of the bytes,
  read only to re-rank, remove or merge) the first time any of them is read, together
  with the range of their word ids. The hash covers the mapped bytes
  themselves, so it holds even if a later save removed the file. Until then, a
  query that does not re-rank never reads them; the first re-ranking query pays
  for the segments it touches (about 0.1 s per 65,536 images of 400
  keypoints). ``Index.check_integrity()`` runs every such check at once.

A failed check raises a ValueError naming the file every time the arrays are
needed; the index is never changed by it. With ``verify=False``, the
large arrays are memory-mapped unread: sizes, headers, the manifest's own
checksum, the small files' checksums and the arrays' structure are checked, but
a change inside a large array's data is not detected (numpy's bounds checks
still keep every read inside the arrays).
Every failure is a ValueError naming the file (FileNotFoundError only when the
folder or its manifest is absent). Nothing is ever unpickled.

Writers and readers: one writer at a time holds :func:`writer_lock` (a lock file,
``.cvsearch-lock``, locked with ``flock`` across processes, and a re-entrant lock
across the threads of a process). Each index has a ``lineage`` (a random id given
when it is created, kept by every save of it) and each save increments the
manifest's ``generation``; the manifest's own checksum names one saved state. A
writer whose index was loaded from another state than the folder's now (another
writer saved, or the folder was replaced by another index) is refused
(:func:`check_writer`), never allowed to overwrite it. Readers take no lock:
each data file is opened once, checked and mapped from that one open file, so a
save that removes it afterwards changes nothing for the reader; a reader that
finds a file already removed reads the new manifest again
(:func:`load_consistent`), a bounded number of times.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cvsearch.io import UnreadableFileError, read_bytes

MANIFEST = "index.json"
#: A manifest holds parameters and file entries: anything larger is not one.
MAX_MANIFEST_BYTES = 16 * 2**20
_DATA_FILE = re.compile(
    r"(vocabulary|projection|names|deleted|seg-[a-z_]+)-[0-9a-f]{16}\.(npz|json|npy)")
_TEMP_PREFIX = ".cvsearch-tmp-"
_CHECKSUM_KEY = "manifest_sha256"
LOCK_FILE = ".cvsearch-lock"


class MissingDataFileError(ValueError):
    """A data file named by the manifest is not there (a save may have replaced
    it since the manifest was read)."""


class StaleWriterError(ValueError):
    """A save refused because the folder holds another state than the one the
    index was loaded from (see :func:`check_writer`)."""


class _HeldLock:
    """The writer lock of one folder, as held by this process."""

    def __init__(self):
        self.threads = threading.RLock()
        self.depth = 0
        self.fd = None


_HELD: dict[str, _HeldLock] = {}
_HELD_GUARD = threading.Lock()


def _try_lock_file(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock_file(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, timeout: float | None = None):
    """Hold the writer lock of an index folder (created if missing).

    Re-entrant within a thread; other threads and processes wait. Readers never
    take it.

    Parameters
    ----------
    directory : str or os.PathLike
    timeout : float, optional
        Seconds to wait; None waits as long as it takes.

    Raises
    ------
    TimeoutError
        If another writer still holds the lock after ``timeout`` seconds.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    with _HELD_GUARD:
        held = _HELD.setdefault(key, _HeldLock())
    deadline = None if timeout is None else time.monotonic() + timeout
    if not held.threads.acquire(timeout=-1 if timeout is None else timeout):
        raise TimeoutError(f"{directory}: another writer (a thread of this process) "
                           f"still holds the index after {timeout} s")
    try:
        if held.depth == 0:
            held.fd = _lock_folder(directory, deadline, timeout)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                _unlock_file(held.fd)
                os.close(held.fd)
                held.fd = None
    finally:
        held.threads.release()


class Identity(NamedTuple):
    """One saved state of an index folder: which index (``lineage``, kept by
    every save of it), which save of it (``generation``) and the manifest's own
    SHA-256 (``digest``: two saves never share it unless they hold the same)."""

    lineage: str | None
    generation: int
    digest: str


def new_lineage() -> str:
    """A random lineage id for an index being created."""
    return uuid.uuid4().hex


def identity_of(manifest: dict) -> Identity:
    """The :class:`Identity` a manifest names (lineage None for manifests saved
    before lineages existed)."""
    lineage = manifest.get("lineage")
    generation = manifest.get("generation", 0)
    return Identity(lineage if isinstance(lineage, str) else None,
                    generation if isinstance(generation, int)
                    and not isinstance(generation, bool) else 0,
                    manifest_digest(manifest))


def _lock_folder(directory: Path, deadline, timeout) -> int:
    """Lock ``directory``'s lock file; returns its descriptor. A lock file that was
    replaced while this process waited for it (the folder swapped for another:
    ``rm -rf X; mv Y X``) locks nothing any more: its lock is dropped and the
    folder's lock file now is locked instead, so two writers never each hold a
    lock of one folder."""
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        while not _try_lock_file(fd):
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(f"{directory}: another writer (process) still "
                                   f"holds the index after {timeout} s")
            time.sleep(0.05)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        _unlock_file(fd)
        os.close(fd)
        directory.mkdir(parents=True, exist_ok=True)  # removed meanwhile


def read_identity(directory: str | os.PathLike, kind: str | None = "cvsearch-index"
                  ) -> Identity | None:
    """The :class:`Identity` of the index saved in ``directory`` now, or None if
    there is none (or its manifest cannot be read)."""
    try:
        _, manifest = read_manifest(directory, kind)
    except (FileNotFoundError, ValueError):
        return None
    return identity_of(manifest)


def read_generation(directory: str | os.PathLike,
                    kind: str = "cvsearch-index") -> int | None:
    """The generation of the index (of format ``kind``) saved in ``directory``,
    or None if there is none (or its manifest cannot be read)."""
    found = read_identity(directory, kind)
    return None if found is None else found.generation


class Origin(NamedTuple):
    """Where an index in memory was loaded from or last saved to."""

    folder: str  # real path
    identity: Identity


def adopt_identity(index, directory, manifest: dict) -> None:
    """Give an index just loaded from ``directory`` what its manifest says of
    where it comes from: its origin (for :func:`check_writer`), its lineage
    (manifests saved before lineages existed: a new one, written at the next
    save) and the folder its relative image names are relative to."""
    index._origin = Origin(os.path.realpath(directory), identity_of(manifest))
    index.lineage = index._origin.identity.lineage or index.lineage
    root = manifest.get("images_root")
    index.images_root = root if isinstance(root, str) else None


def check_writer(directory: str | os.PathLike, origin: Origin | None,
                 kind: str) -> int:
    """Refuse a save that would overwrite another writer's; the generation the
    save takes. Call with the writer lock held.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the index is being saved.
    origin : Origin or None
        Where the index was loaded from or last saved to.
    kind : str
        The manifest format.

    Returns
    -------
    int
        One more than the folder's generation now (1 for a new folder).

    Raises
    ------
    StaleWriterError
        If the index came from this folder and the folder holds another state
        now: another writer saved there, or it was replaced by another index.
    """
    current = read_identity(directory, kind)
    folder = os.path.realpath(directory)
    # A folder emptied since (no index there now) loses nobody's update.
    if origin is not None and origin.folder == folder and current is not None \
            and current != origin.identity:
        if current.lineage != origin.identity.lineage:
            why = ("it was replaced by another index (lineage "
                   f"{current.lineage}, loaded {origin.identity.lineage})")
        else:
            why = (f"another writer saved there (generation "
                   f"{origin.identity.generation}, now {current.generation})")
        raise StaleWriterError(
            f"{directory} has changed since this index was loaded: {why}, and "
            "saving would lose that. Load it again and redo the change "
            "(updating() does both under the writer lock)")
    return (current.generation if current is not None else 0) + 1


#: How many times a reader reads the manifest again after a save removed a
#: file under it, before it reports the file missing.
LOAD_ATTEMPTS = 8


def load_consistent(directory: str | os.PathLike, kind: str, load):
    """``load(path, manifest)`` of the manifest saved now, again if a file it
    names went missing meanwhile (readers take no lock).

    A file goes missing under a reader when a save removed what the manifest it
    read names (the manifest then differs: read again at once), or while the
    folder is being replaced (``rm -rf X; mv Y X``: the manifest may not differ
    yet, or vanish for a moment). Each case is tried again, after a pause that
    doubles (20 ms, 40 ms, ...), :data:`LOAD_ATTEMPTS` times in all (about 2.5 s
    of waiting at most); then the file is reported missing.

    Raises
    ------
    FileNotFoundError
        If there is no index folder or manifest at the first reading.
    MissingDataFileError
        If a named file is still missing after the last attempt.
    """
    for attempt in range(LOAD_ATTEMPTS):
        try:
            path, manifest = read_manifest(directory, kind)
        except FileNotFoundError:
            if attempt == 0 or attempt == LOAD_ATTEMPTS - 1:
                raise  # no index there (or it never came back)
            time.sleep(0.02 * 2 ** attempt)
            continue
        try:
            return load(path, manifest)
        except MissingDataFileError:
            if attempt == LOAD_ATTEMPTS - 1:
                raise
            try:
                changed = read_manifest(directory, kind)[1] != manifest
            except (FileNotFoundError, ValueError):
                changed = False  # the folder is being replaced: wait for it
            if not changed:
                time.sleep(0.02 * 2 ** attempt)
    raise AssertionError("unreachable")


def write_durably(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` so that it is either absent, as it was, or complete with
    ``data`` after a crash: a temporary file in the same folder, fsynced,
    renamed over ``path`` with ``os.replace``, and the folder fsynced."""
    path = Path(path)
    _write_atomic(path, data)
    _fsync_dir(path.parent)


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
    """JSON as UTF-8 bytes. Non-ASCII characters are escaped, so names that are not
    valid Unicode (file names of undecodable bytes, held as lone surrogates) are
    stored and read back unchanged."""
    return json.dumps(obj, indent=1, ensure_ascii=True).encode("utf-8")


def manifest_digest(manifest: dict) -> str:
    """SHA-256 (hex) of a manifest's canonical JSON, its own checksum left out."""
    body = {k: v for k, v in manifest.items() if k != _CHECKSUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def parse_json(data: bytes, path: Path):
    """Parse JSON bytes; a ValueError naming ``path`` if they are not JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        problem = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ValueError(f"{path} is not valid JSON ({problem}); the index is "
                         "corrupt: rebuild it or restore a backup") from None


def write_file(directory: str | os.PathLike, prefix: str, extension: str,
               data: bytes) -> dict:
    """Write a content-named data file (unless the folder holds it already).

    Returns
    -------
    entry : dict
        ``{"name", "sha256", "bytes"}``, for the manifest.
    """
    directory = Path(directory)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{prefix}-{digest[:16]}.{extension}"
    path = directory / name
    if not path.exists() or path.stat().st_size != len(data) or _sha256(path) != digest:
        _write_atomic(path, data)
    return {"name": name, "sha256": digest, "bytes": len(data)}


def has_file(directory: str | os.PathLike, entry: dict) -> bool:
    """Whether the folder holds the file of ``entry``, of its size."""
    path = Path(directory) / entry["name"]
    return path.is_file() and path.stat().st_size == entry["bytes"]


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as an uncompressed .npy file in memory."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def commit(directory: str | os.PathLike, manifest: dict) -> Origin:
    """Write the manifest (with its own checksum) atomically, last, then remove
    the data files it does not name (and temporary files).

    ``manifest`` names its files in entries ``{"name", "sha256", "bytes"}``
    anywhere in its structure.

    Returns
    -------
    Origin
        The folder and the identity of the state saved.
    """
    directory = Path(directory)
    _fsync_dir(directory)
    manifest = dict(manifest)
    manifest[_CHECKSUM_KEY] = manifest_digest(manifest)
    _write_atomic(directory / MANIFEST, json_bytes(manifest))
    _fsync_dir(directory)
    keep = set(file_names(manifest))
    for path in directory.iterdir():
        stale = _DATA_FILE.fullmatch(path.name) and path.name not in keep
        if stale or path.name.startswith(_TEMP_PREFIX):
            path.unlink(missing_ok=True)
    return Origin(os.path.realpath(directory), identity_of(manifest))


def file_names(node):
    """The ``name`` of every file entry in a manifest structure."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "sha256" in node:
            yield node["name"]
        for value in node.values():
            yield from file_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from file_names(value)


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return _sha256_open(file)


#: The kinds of index folder, by the ``format`` of their manifest.
KINDS = ("cvsearch-index", "cvsearch-global-index")


def read_manifest(directory: str | os.PathLike,
                  kind: str | None = "cvsearch-index") -> tuple[Path, dict]:
    """Read and parse ``index.json`` of an index of ``kind`` (None: either of
    :data:`KINDS`; the manifest's ``format`` says which).

    Raises
    ------
    FileNotFoundError
        If the directory or its manifest is missing.
    ValueError
        If the manifest is too large, not valid JSON, not a cvsearch manifest, or
        does not match its own checksum.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise FileNotFoundError(2, "No such index directory", str(directory))
    if not os.path.lexists(path):
        raise FileNotFoundError(
            2, f"Not a cvsearch index (no {MANIFEST}); save one with Index.save",
            str(path))
    try:
        data = read_bytes(path, MAX_MANIFEST_BYTES, limit_name="MAX_MANIFEST_BYTES")
    except FileNotFoundError:  # a dangling link
        raise ValueError(f"{path} is a broken link; the index is corrupt") from None
    manifest = parse_json(data, path)
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if kind is None and found in KINDS:
        return path, manifest
    if found != kind:
        if found in KINDS:
            raise ValueError(f"{path} is a {found}, not a {kind}: load it with "
                             f"{'Index' if found == 'cvsearch-index' else 'GlobalIndex'}"
                             ".load")
        raise ValueError(f"{path} is not a cvsearch index manifest")
    return path, manifest


def check_manifest(path: Path, manifest: dict) -> None:
    """Check the manifest against its own checksum.

    Raises
    ------
    ValueError
        If the checksum is missing or does not match (a changed parameter).
    """
    if manifest.get(_CHECKSUM_KEY) != manifest_digest(manifest):
        raise ValueError(f"{path} does not match its checksum ({_CHECKSUM_KEY}): it "
                         "was modified or is damaged; rebuild the index or restore a "
                         "backup")


def read_file(directory: Path, manifest: dict, key: str) -> bytes:
    """Bytes of the data file ``manifest["files"][key]`` (see :func:`read_entry`)."""
    entry = manifest.get("files", {}).get(key) if isinstance(
        manifest.get("files"), dict) else None
    return read_entry(directory, entry, key)


def check_entry(directory: Path, entry, prefix: str) -> dict:
    """A manifest file entry, checked: a ValueError if it is malformed."""
    size = entry.get("bytes") if isinstance(entry, dict) else None
    if (not isinstance(entry, dict) or not isinstance(entry.get("name"), str)
            or not _DATA_FILE.fullmatch(entry["name"])
            or not entry["name"].startswith(prefix + "-")
            or not isinstance(entry.get("sha256"), str)
            or isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"{directory / MANIFEST}: the entry for a {prefix} file is "
                         "missing or malformed; the index is corrupt")
    return entry


def read_entry(directory: Path, entry, key: str) -> bytes:
    """Bytes of the data file of a manifest entry, after checking its SHA-256.

    The file must be exactly as large as its entry says; it is never read past that.

    Raises
    ------
    ValueError
        If the manifest entry is malformed, the file is missing, not a regular
        file, of another size, or does not match its checksum.
    """
    entry = check_entry(directory, entry, key)
    size = entry["bytes"]
    path = directory / entry["name"]
    try:
        data = read_bytes(path, size, limit_name=f"its size in {MANIFEST}")
    except FileNotFoundError:
        raise MissingDataFileError(f"{path}: this index data file is missing; the "
                                   "index is incomplete: rebuild it or restore a "
                                   "backup") from None
    except UnreadableFileError as error:
        raise ValueError(f"{error}; the index is corrupt: rebuild it or restore a "
                         "backup") from None
    if len(data) != size:
        raise ValueError(f"{path} holds {len(data):,} bytes, not the {size:,} its "
                         f"entry in {MANIFEST} gives: it is truncated; rebuild the "
                         "index or restore a backup")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path} does not match its checksum in {MANIFEST}: it is "
                         "truncated or was modified; rebuild the index or restore a "
                         "backup")
    return data


def load_npz(data: bytes, path: Path, expected: dict) -> dict:
    """The arrays ``expected`` of an .npz archive, never unpickled.

    Only the members named in ``expected`` are read. Each must be stored
    uncompressed (as :func:`npz_bytes` writes them) and its ``.npy`` header must give
    the expected dtype and a shape whose bytes are exactly those left in the member,
    all checked before the array is allocated: no array is larger than ``data``.

    Parameters
    ----------
    data : bytes
        The archive.
    path : Path
        Named in error messages.
    expected : dict
        ``{array name: dtype}``.

    Returns
    -------
    dict of ndarray

    Raises
    ------
    ValueError
        If the archive cannot be read, lacks an array, or an array's member is
        compressed or its header does not fit its dtype or its bytes.
    """
    def corrupt(problem):
        return ValueError(f"{path}: {problem}; the index is corrupt")

    arrays = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name, dtype in expected.items():
                try:
                    info = archive.getinfo(name + ".npy")
                except KeyError:
                    raise corrupt(f"lacks the array {name!r}") from None
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                    raise corrupt(f"the array {name!r} is compressed or larger than "
                                  "the file")
                with archive.open(info) as member:
                    arrays[name] = _read_npy(member, info.file_size, np.dtype(dtype),
                                             lambda p, n=name: corrupt(f"array {n!r}: {p}"))
    except ValueError:
        raise
    except Exception as error:  # zipfile, numpy and OSError all signal bad files
        raise ValueError(f"{path} is not a readable .npz archive ({error}); the index "
                         "is corrupt") from None
    return arrays


def is_data_file_name(name: str) -> bool:
    """Whether ``name`` is a name cvsearch gives its data files (no path in it)."""
    return bool(_DATA_FILE.fullmatch(name))


def sha256_files(directory: Path, names) -> dict:
    """SHA-256 of several files of ``directory``, hashed on all cores at once
    (hashlib releases the GIL). A file that cannot be read is left out (its
    reader reports it).

    Returns
    -------
    dict of str to str
        File name to hex digest.
    """
    from concurrent.futures import ThreadPoolExecutor

    def digest(name):
        try:
            return name, _sha256(directory / name)
        except OSError:
            return name, None

    names = list(dict.fromkeys(names))
    with ThreadPoolExecutor(min(len(names), os.cpu_count() or 1) or 1) as pool:
        return {name: value for name, value in pool.map(digest, names)
                if value is not None}


def map_npy(directory: Path, entry, prefix: str, dtypes, verify: bool,
            digests: dict | None = None, *, with_header: bool = False):
    """Memory-map the ``.npy`` file of a manifest entry, read-only.

    The file is opened once: its size, header and (with ``verify``) SHA-256
    are checked from that open file and the array is mapped from it, so a save
    that removes the file by name afterwards cannot change what was checked.
    Its size must be the entry's, its header must give one of ``dtypes`` and a
    shape that accounts for exactly its bytes (one read of the file for the
    hash, unless ``digests`` from :func:`sha256_files` has it).

    Returns
    -------
    ndarray, or (ndarray, bytes) with ``with_header``
        The array; with ``with_header`` also the file's bytes before the array
        (for :func:`deferred_sha256`).

    Raises
    ------
    MissingDataFileError
        If the file is not there (a save may have removed it).
    ValueError
        Naming the file, for any mismatch.
    """
    entry = check_entry(directory, entry, prefix)
    path = directory / entry["name"]

    def corrupt(problem):
        return ValueError(f"{path}: {problem}; the index is corrupt: rebuild it or "
                          "restore a backup")

    try:  # non-blocking: a pipe put in the folder is refused, never waited on
        file = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                                 | getattr(os, "O_BINARY", 0)), "rb")
    except FileNotFoundError:
        raise MissingDataFileError(f"{path}: this index data file is missing; the "
                                   "index is incomplete: rebuild it or restore a "
                                   "backup") from None
    except OSError as error:
        raise corrupt(f"it cannot be read ({error.strerror})") from None
    with file:
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise corrupt("it is not a regular file")
            if info.st_size != entry["bytes"]:
                raise corrupt(f"it is not the {entry['bytes']:,} bytes its entry in "
                              f"{MANIFEST} gives (truncated or changed)")
            if verify and ((digests or {}).get(entry["name"])
                           or _sha256_open(file)) != entry["sha256"]:
                raise corrupt(f"it does not match its checksum in {MANIFEST}")
            file.seek(0)
            shape, fortran, dtype = _npy_header(file, entry["bytes"], dtypes, corrupt)
            if fortran:
                raise corrupt("its array is in Fortran order; cvsearch writes C order")
            offset = file.tell()
            file.seek(0)
            header = file.read(offset)
            if 0 in shape:
                array = np.zeros(shape, dtype)
            else:  # mapped from this open file: no second open by name
                array = np.memmap(file, dtype=dtype, mode="r", offset=offset,
                                  shape=shape)
        except OSError as error:
            raise corrupt(f"it cannot be read ({error.strerror})") from None
    return (array, header) if with_header else array


def _sha256_open(file) -> str:
    """SHA-256 of an open file, from its start."""
    file.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def deferred_sha256(directory: Path, entry, array: np.ndarray, header: bytes):
    """A check, to run later, that the memory-mapped ``array`` of a manifest
    entry (from :func:`map_npy` with ``with_header``) is what its SHA-256 says.

    The check hashes ``header`` (the file's bytes before the array, read when it
    was mapped) and the array's own bytes: what the index reads, even if a later
    save removed the file. Returns a callable that raises a ValueError naming
    the file on a mismatch.
    """
    path = directory / entry["name"]

    def check():
        digest = hashlib.sha256(header)
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        if digest.hexdigest() != entry["sha256"]:
            raise ValueError(f"{path}: it does not match its checksum in {MANIFEST};"
                             " the index is corrupt: rebuild it or restore a backup")
    return check


class DeferredCheck:
    """A check run once, by the first caller that needs it (thread-safe); a
    failed check raises again on every later call."""

    def __init__(self, check):
        self._check, self._done, self._lock = check, False, threading.Lock()

    def __call__(self) -> None:
        if self._done:
            return
        with self._lock:
            if not self._done:
                self._check()
                self._done = True


def _npy_header(file, size: int, dtypes, corrupt):
    """Read a ``.npy`` header from ``file`` (``size`` bytes in all) and check it
    before anything is allocated: one of ``dtypes``, and a shape whose bytes are
    exactly those left after the header. Returns ``(shape, fortran, dtype)``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(file)
        else:
            raise ValueError(f"npy format version {version}")
    except Exception as error:  # numpy parses the header as a Python literal: a
        # mangled one raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise corrupt(f"a bad header ({type(error).__name__}: {error})") from None
    allowed = [np.dtype(d) for d in dtypes]
    if dtype not in allowed:
        raise corrupt(f"dtype {dtype}, expected "
                      f"{' or '.join(str(d) for d in allowed)}")
    left = size - file.tell()
    count = 1
    for n in shape:  # Python ints: no overflow
        count *= n
    if count * dtype.itemsize != left:
        raise corrupt(f"its header gives shape {shape}, but {left} bytes follow it")
    return shape, fortran, dtype


def _read_npy(member, size: int, dtype: np.dtype, corrupt) -> np.ndarray:
    """One ``.npy`` member of ``size`` bytes, checked before it is allocated."""
    shape, fortran, dtype = _npy_header(member, size, (dtype,), corrupt)
    left = size - member.tell()
    raw = member.read(left)
    if len(raw) != left:
        raise corrupt("it is truncated")
    array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
    return array.copy()
