"""Image collections: folders of class folders, Caltech-101, and the
query/gallery/distractor protocol.

Nothing here reads pixels: a collection is a list of paths with labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: File name endings taken as images when listing a folder (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                  ".pgm", ".ppm", ".pbm", ".jp2")


class Collection(NamedTuple):
    """Labelled images.

    Attributes
    ----------
    paths : list of str
        One per image, sorted by class then file name.
    labels : ndarray of shape (n_images,), int64
        Index into ``classes``.
    classes : list of str
        Class (folder) names, sorted.
    """

    paths: list
    labels: np.ndarray
    classes: list

    def subset(self, indices) -> Collection:
        """The images at ``indices``, keeping the class list."""
        indices = np.asarray(indices, dtype=np.int64)
        return Collection([self.paths[i] for i in indices], self.labels[indices],
                          self.classes)


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the file name ends like an image (see ``IMAGE_SUFFIXES``)."""
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def image_folder(root: str | os.PathLike, *, exclude=()) -> Collection:
    """A folder of class folders: ``root/<class>/<image>``.

    Files whose names do not end like an image are ignored (Caltech-101 ships a
    stray ``BACKGROUND_Google/tmp``); so are files at the top level and hidden
    folders.

    Parameters
    ----------
    root : path
    exclude : iterable of str
        Class folders to leave out.

    Returns
    -------
    Collection

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    ValueError
        If it holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; expected one sub-folder "
                                "of images per class")
    exclude = set(exclude)
    classes, paths, labels = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in exclude or folder.name.startswith("."):
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p)
                       and not p.is_symlink() and not any(
                           part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            continue
        paths += [str(p) for p in files]
        labels += [len(classes)] * len(files)
        classes.append(folder.name)
    if not paths:
        raise ValueError(f"{root}: found no class folders with images in it")
    return Collection(paths, np.array(labels, dtype=np.int64), classes)


class QueryGallery(NamedTuple):
    """The protocol of the image-similarity competitions: queries are searched in
    a gallery that also holds distractors, which are relevant to no query.

    Attributes
    ----------
    queries : Collection
    gallery : Collection
        Distractors have label -1; the others share ``queries.classes``.
    """

    queries: Collection
    gallery: Collection


def query_gallery(queries: str | os.PathLike, gallery: str | os.PathLike,
                  distractors: str | os.PathLike | None = None) -> QueryGallery:
    """Queries and gallery as two folders of class folders, plus distractors.

    Parameters
    ----------
    queries, gallery : path
        ``<folder>/<class>/<image>``; a query's relevant images are the gallery
        images of its class.
    distractors : path, optional
        A folder of images (sub-folders too) that no query should match.

    Returns
    -------
    QueryGallery

    Raises
    ------
    ValueError
        If a query class has no gallery image (nothing could be found for it).
    """
    query_set, gallery_set = image_folder(queries), image_folder(gallery)
    classes = query_set.classes
    missing = sorted(set(classes) - set(gallery_set.classes))
    if missing:
        raise ValueError(f"{gallery}: no gallery images for the query classes "
                         f"{missing[:5]}; every query class needs a folder in the gallery")
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position.get(gallery_set.classes[label], -1)
                       for label in gallery_set.labels], np.int64)
    paths = list(gallery_set.paths)
    if distractors is not None:
        root = Path(distractors)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder of distractor images")
        extra = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_name(p))
        paths += extra
        labels = np.concatenate([labels, np.full(len(extra), -1, np.int64)])
    return QueryGallery(query_set, Collection(paths, labels, classes))


# ------------------------------------------------------------------ Caltech-101
#: The official archive on CaltechDATA (doi:10.22002/D1.20086) and its MD5.
CALTECH101_URL = ("https://data.caltech.edu/records/mzrjq-6wc02/files/"
                  "caltech-101.zip?download=1")
CALTECH101_MD5 = "3138e1922a9193bfa496528edbbc45d0"
_CALTECH_FOLDER = "101_ObjectCategories"
_CALTECH_TAR = "101_ObjectCategories.tar.gz"

#: Limits of :func:`download_archive` (Caltech-101: a 137 MB zip, 9,146 files,
#: 131 MB unpacked). They hold whatever the url and md5 are: a checksum chosen by
#: whoever chose the url guards nothing.
MAX_DOWNLOAD_BYTES = 2**32
MAX_UNPACKED_BYTES = 2**33
MAX_MEMBERS = 1_000_000
_WORK_PREFIX = ".cvsearch-download-"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else ``$CVSEARCH_DATA``, else
    ``~/.cache/cvsearch``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("CVSEARCH_DATA"):
        return Path(os.environ["CVSEARCH_DATA"]).expanduser()
    return Path.home() / ".cache" / "cvsearch"


def find_caltech101(root: str | os.PathLike | None = None) -> Path | None:
    """The ``101_ObjectCategories`` folder under ``root`` (see :func:`data_root`),
    if there is one: ``root`` itself, ``root/101_ObjectCategories`` or
    ``root/caltech101/101_ObjectCategories``."""
    base = data_root(root)
    for candidate in (base, base / _CALTECH_FOLDER, base / "caltech101" / _CALTECH_FOLDER):
        if candidate.name == _CALTECH_FOLDER and candidate.is_dir():
            return candidate
    return None


def caltech101(root: str | os.PathLike | None = None, *, download: bool = True,
               include_background: bool = False, url: str = CALTECH101_URL,
               md5: str = CALTECH101_MD5, progress=None) -> Collection:
    """Caltech-101: 8,677 images of 101 classes (9,144 with the background).

    Uses the images under ``root`` if they are there (see :func:`find_caltech101`);
    otherwise downloads the official archive into ``data_root(root)/caltech101``,
    checks its MD5, unpacks it safely and keeps the images there.

    Parameters
    ----------
    root : path, optional
        Defaults to ``$CVSEARCH_DATA``, then ``~/.cache/cvsearch``.
    download : bool
        Download if the images are absent; if False, raise FileNotFoundError.
    include_background : bool
        Keep ``BACKGROUND_Google``, which is clutter, not a class.
    url, md5 : str
        The archive and its checksum (change them only to use a mirror).
    progress : callable, optional
        ``progress(bytes_done, bytes_total or None)`` during the download.

    Returns
    -------
    Collection
    """
    folder = find_caltech101(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(
                f"Caltech-101 is not under {data_root(root)}; pass download=True, or "
                "point root (or $CVSEARCH_DATA) at the folder holding "
                f"{_CALTECH_FOLDER}")
        target = data_root(root) / "caltech101"
        download_archive(url, md5, target, member=_CALTECH_TAR, folder=_CALTECH_FOLDER,
                         progress=progress)
        folder = target / _CALTECH_FOLDER
    exclude = () if include_background else ("BACKGROUND_Google",)
    return image_folder(folder, exclude=exclude)


def download_archive(url: str, md5: str, target: str | os.PathLike, *, member: str,
                     folder: str, progress=None, timeout: float = 60.0,
                     max_download_bytes: int = MAX_DOWNLOAD_BYTES,
                     max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
                     max_members: int = MAX_MEMBERS) -> Path:
    """Download a zip holding a ``.tar.gz`` and unpack ``folder`` from it.

    Everything goes to a hidden work folder inside ``target`` first (named with
    this process's id); ``target/folder`` appears (by one rename) only once the
    archive is complete, its checksum right and every member unpacked. On any
    failure the work folder is removed; the work folders of processes that were
    killed meanwhile are removed by the next call.

    The download, the members of the zip and of the tarball, and the bytes
    unpacked are counted against the limits as they come, so a hostile server or
    archive (a bomb) is stopped before it fills the disk or the memory.

    Parameters
    ----------
    url : str
    md5 : str
        Expected MD5 of the downloaded zip, hex.
    target : path
        Folder that will hold ``folder``.
    member : str
        Name (last path part) of the ``.tar.gz`` inside the zip.
    folder : str
        Top-level folder the tarball unpacks to.
    progress : callable, optional
        ``progress(bytes_done, bytes_total or None)``.
    max_download_bytes, max_unpacked_bytes, max_members : int
        Limits on the zip's size, the bytes unpacked and the members of each
        archive.

    Returns
    -------
    Path of ``target/folder``

    Raises
    ------
    OSError
        If the download fails or is cut short (run again to retry).
    ValueError
        If the checksum is wrong, a limit is exceeded, or the archive is not as
        expected (a member that would land outside the target, a link, a missing
        tarball).
    """
    import errno
    import gzip
    import hashlib
    import http.client
    import shutil
    import tarfile
    import tempfile
    import urllib.request
    import zipfile
    import zlib

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(target)
    work = Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}-", dir=target))
    try:
        archive = work / "archive.zip"
        digest = hashlib.md5()
        done, total = 0, None
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    open(archive, "wb") as out:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                if total is not None and total > max_download_bytes:
                    raise ValueError(f"{url} is {total:,} bytes, more than the limit "
                                     f"of {max_download_bytes:,} (max_download_bytes)")
                while chunk := response.read(1 << 20):
                    if done + len(chunk) > max_download_bytes:
                        raise ValueError(f"{url} sent more than the limit of "
                                         f"{max_download_bytes:,} bytes "
                                         "(max_download_bytes)")
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except http.client.HTTPException as error:  # IncompleteRead and the like
            raise OSError(f"download of {url} failed after {done} bytes ({error!r}); "
                          "run again to retry") from None
        if total is not None and done != total:
            raise OSError(f"download of {url} stopped after {done} of {total} bytes; "
                          "run again to retry")
        if digest.hexdigest() != md5.lower():
            raise ValueError(f"{url}: MD5 {digest.hexdigest()} is not the expected "
                             f"{md5}; the download is corrupt or not the official "
                             "archive. Run again, or download it by hand")
        unpacked = work / "unpacked"
        try:
            _unpack(archive, unpacked, member, url, max_unpacked_bytes, max_members)
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError,
                gzip.BadGzipFile, NotImplementedError, RuntimeError, OSError) as error:
            # zipfile says "damaged header" as NotImplementedError (an unknown
            # version), RuntimeError (an "encrypted" member) or, for an offset
            # before the start of the file, a failed seek (EINVAL). Other OSErrors
            # (a full disk) are the machine's, not the archive's.
            if isinstance(error, OSError) and error.errno != errno.EINVAL \
                    and not isinstance(error, gzip.BadGzipFile):
                raise
            raise ValueError(f"{url}: the archive is corrupt ({error}); download it "
                             "again") from None
        if not (unpacked / folder).is_dir():
            raise ValueError(f"{url}: {member} holds no {folder} folder")
        os.replace(unpacked / folder, target / folder)
        return target / folder
    finally:
        # Complete or not (interrupted, corrupt, hostile), the work folder goes.
        shutil.rmtree(work, ignore_errors=True)


def _unpack(archive: Path, unpacked: Path, member: str, url: str,
            max_unpacked_bytes: int, max_members: int) -> None:
    """Unpack the ``member`` tarball of the zip ``archive`` into ``unpacked``."""
    import zipfile

    with zipfile.ZipFile(archive) as outer:
        if len(outer.infolist()) > max_members:
            raise ValueError(f"{url}: the zip holds {len(outer.infolist()):,} "
                             f"members, more than the limit of {max_members:,}")
        names = [n for n in outer.namelist() if n.rsplit("/", 1)[-1] == member]
        if len(names) != 1:
            raise ValueError(f"{url}: the zip holds no {member}")
        with outer.open(names[0]) as tarball:
            _safe_untar(tarball, unpacked, max_bytes=max_unpacked_bytes,
                        max_members=max_members)


def _remove_abandoned_work(target: Path) -> None:
    """Remove the work folders left in ``target`` by downloads whose process is
    gone (killed, or the machine stopped)."""
    import shutil

    for path in target.glob(_WORK_PREFIX + "*"):
        pid = path.name[len(_WORK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists under another user, or cannot tell: leave it
    return True


def _safe_untar(fileobj, destination: Path, *, max_bytes: int = MAX_UNPACKED_BYTES,
                max_members: int = MAX_MEMBERS) -> None:
    """Unpack a gzipped tar stream, refusing anything that could escape
    ``destination`` (absolute paths, ``..``, links, devices) and stopping at
    ``max_members`` members or ``max_bytes`` bytes written."""
    import tarfile

    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    written = members = 0
    with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
        for entry in tar:
            members += 1
            if members > max_members:
                raise ValueError(f"the archive holds more than {max_members:,} "
                                 "members (max_members)")
            path = (root / entry.name).resolve()
            if entry.name.startswith(("/", "\\")) or not path.is_relative_to(root) \
                    or path == root and not entry.isdir():
                raise ValueError(f"refusing archive member {entry.name!r}: it would "
                                 "land outside the target folder")
            if entry.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif entry.isfile():
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(entry)
                with open(path, "wb") as out:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise ValueError(f"the archive unpacks to more than "
                                             f"{max_bytes:,} bytes (max_unpacked_bytes)")
                        out.write(chunk)
            else:
                raise ValueError(f"refusing archive member {entry.name!r}: only "
                                 "files and folders are expected, not links or devices")
