"""Reading images from disk, defensively.

Every reader of image files in cvsearch (features, pictures, the CNN) goes through
:func:`read_image`, so there is one notion of "this file is not a readable image":
:class:`UnreadableImageError` (a ValueError), or FileNotFoundError for a path that
does not exist; ``READ_ERRORS`` holds both. Either names the file and says what to
do. Before anything is decoded:

1. the path must open as a regular file (a pipe, device, socket, directory or
   symlink loop is refused; pipes are opened non-blocking, so they never hang);
2. it must hold at most ``max_file_bytes`` bytes (read with a bounded read);
3. its header, read by Pillow (which parses headers and decodes nothing here),
   must be of a format OpenCV decodes and declare at most ``max_pixels`` pixels.

Only then does OpenCV decode it, and every failure of the decoder (``cv2.error``
included) becomes an UnreadableImageError. A read therefore allocates at most about
``max_file_bytes + 3 * max_pixels`` bytes (the file, and a colour decode).
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np

from cvsearch._validation import check_color_image, check_int

#: Default pixel limit: 2**27 = 134 million pixels, so 100-megapixel photos pass,
#: while a 3 GiB decode (a 32768 x 32768 "bomb" of a few kilobytes) does not.
MAX_PIXELS = 2**27
#: Default file size limit: 256 MiB.
MAX_FILE_BYTES = 2**28

#: Pillow's names of the formats OpenCV decodes; their headers give the size.
_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "JPEG2000", "SUN",
            "PFM")
_WHAT_TO_DO = "re-copy, convert (to PNG or JPEG) or remove the file"


class UnreadableFileError(ValueError):
    """A file that cannot be read as asked: not a regular file, unopenable, or
    beyond a size limit. The message starts with the file's path.

    Attributes
    ----------
    path : str
        The file.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


class UnreadableImageError(UnreadableFileError):
    """A file that is not a readable image: not an image, truncated, corrupt, of an
    unsupported format, beyond the size limits, or not a regular file."""


#: What a reader catches to skip a file that is not a readable image.
READ_ERRORS = (FileNotFoundError, UnreadableImageError)


def read_bytes(path: str | os.PathLike, max_bytes: int, *,
               error: type = UnreadableFileError, limit_name: str = "max_file_bytes"
               ) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    The file is opened non-blocking (a pipe never hangs the caller), checked to be
    a regular file, and read with a bounded read: at most ``max_bytes`` are ever
    allocated, even if the file grows meanwhile.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int
    error : type
        The UnreadableFileError subclass to raise.
    limit_name : str
        How to call the limit in the message.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (or is a dangling link).
    UnreadableFileError
        (``error``) If it cannot be opened, is not a regular file or is too large.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: opening a pipe never waits
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such image file", str(path)) from None
    except IsADirectoryError:
        raise error(path, "is a directory, not a file") from None
    except OSError as problem:
        raise error(path, f"cannot be opened ({problem.strerror}); make it a "
                    "readable file or remove it") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(path, "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise error(path, "is not a regular file (a pipe, device or socket)")
        if info.st_size > max_bytes:
            raise error(path, _too_large(info.st_size, max_bytes, limit_name))
        data = _read_at_most(fd, max_bytes + 1, info.st_size)  # bounded
    except OSError as problem:
        raise error(path, f"cannot be read ({problem.strerror}); re-copy or remove "
                    "the file") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(path, _too_large(len(data), max_bytes, limit_name))
    return data


def _read_at_most(fd: int, limit: int, expected: int) -> bytes:
    """The bytes of ``fd`` up to its end or ``limit`` bytes, whichever comes
    first. The first read asks for ``expected`` (the file's size) plus one:
    asking for the limit would allocate a buffer of the limit (256 MB by
    default) for every image. A file that grew since is still read on, to its
    end or the limit."""
    chunks, total = [], 0
    wanted = min(expected + 1, limit)
    while total < limit:
        chunk = os.read(fd, wanted)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        wanted = min(1 << 20, limit - total)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int, limit_name: str) -> str:
    return (f"is {size:,} bytes, more than the limit of {limit:,} ({limit_name}); "
            "raise the limit if the file is genuine, or remove it")


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by an image header, decoding no pixels.

    Parameters
    ----------
    data : bytes
        The start of the file, or all of it.

    Returns
    -------
    (width, height), or None if no format OpenCV decodes recognises the header.
    """
    from PIL import Image

    # Pillow's format plugins directly, not Image.open: open() would apply
    # Pillow's own global pixel limit (and warnings) before ours.
    Image.init()
    prefix = data[:16]
    for name in _FORMATS:
        if name not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[name]
        if accept is not None and accept(prefix) is not True:
            continue
        try:
            width, height = factory(io.BytesIO(data), "").size
        except Exception:  # a malformed header: Pillow raises many kinds
            continue
        return int(width), int(height)
    return None


def read_image(path: str | os.PathLike, *, grayscale: bool = True,
               max_pixels: int = MAX_PIXELS,
               max_file_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Read an image file.

    The file is decoded from bytes (``cv2.imdecode``) so that non-ASCII paths work on
    every platform; EXIF orientation is applied. See the module docstring for the
    checks made before decoding.

    Parameters
    ----------
    path : str or os.PathLike
        An image file in a format OpenCV reads (JPEG, PNG, TIFF, WebP, BMP, GIF,
        PNM, JPEG 2000, ...).
    grayscale : bool
        Return a grayscale image if True, else a BGR colour image.
    max_pixels : int
        Refuse images whose header declares more pixels (width x height).
    max_file_bytes : int
        Refuse larger files.

    Returns
    -------
    image : ndarray of shape (H, W) if grayscale else (H, W, 3), uint8

    Raises
    ------
    TypeError
        If ``path`` is not a string or path.
    FileNotFoundError
        If ``path`` does not exist.
    UnreadableImageError
        A ValueError naming the file: it is a directory or not a regular file, is
        empty, too large, not an image, truncated or corrupt, or its format is not
        supported.
    """
    return read_image_reduced(path, grayscale=grayscale, max_pixels=max_pixels,
                              max_file_bytes=max_file_bytes)[0]


def read_image_reduced(path: str | os.PathLike, *, min_side: int | None = None,
                       grayscale: bool = True, max_pixels: int = MAX_PIXELS,
                       max_file_bytes: int = MAX_FILE_BYTES
                       ) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, a JPEG much larger than ``min_side`` decoded reduced
    (see :func:`decode_reduced`, which gives the returns).

    Returns
    -------
    image : ndarray of shape (h, w) or (h, w, 3), uint8
    shape : (int, int)
        ``(H, W)`` of the whole image.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path to an image, got {type(path).__name__}")
    max_pixels = check_int(max_pixels, "max_pixels", minimum=1)
    max_file_bytes = check_int(max_file_bytes, "max_file_bytes", minimum=1)
    path = Path(path)
    return decode_reduced(read_bytes(path, max_file_bytes, error=UnreadableImageError),
                          path, grayscale=grayscale, max_pixels=max_pixels,
                          min_side=min_side)


def decode_image(data: bytes, name, *, grayscale: bool = True,
                 max_pixels: int = MAX_PIXELS, min_side: int | None = None
                 ) -> np.ndarray:
    """Decode an image file's bytes (an upload, say), with the checks of
    :func:`read_image`: its header is read first, and more than ``max_pixels``
    is refused before anything is decoded.

    Parameters
    ----------
    data : bytes
    name : str or os.PathLike
        What to call it in errors (its path, or "upload photo.jpg").
    grayscale : bool
    max_pixels : int
    min_side : int, optional
        The longer side the caller needs: a JPEG much larger than that is decoded
        reduced by 2, 4 or 8 (:func:`decode_reduced`).

    Returns
    -------
    image : ndarray of shape (H, W) if grayscale else (H, W, 3), uint8

    Raises
    ------
    UnreadableImageError
        A ValueError naming ``name``: empty, not an image, too many pixels,
        truncated or corrupt.
    """
    return decode_reduced(data, name, grayscale=grayscale, max_pixels=max_pixels,
                          min_side=min_side)[0]


#: JPEG decoders scale by these factors in the DCT (libjpeg's scale_denom):
#: decoding at 1/f costs a fraction of a full decode.
REDUCTIONS = (8, 4, 2)


def reduction(width: int, height: int, min_side: int | None) -> int:
    """The largest of :data:`REDUCTIONS` that keeps the longer side of a
    ``width`` x ``height`` JPEG at least ``min_side`` (1: decode it whole)."""
    if min_side is None:
        return 1
    return next((f for f in REDUCTIONS if max(width, height) // f >= min_side), 1)


def decode_reduced(data: bytes, name, *, grayscale: bool = True,
                   max_pixels: int = MAX_PIXELS, min_side: int | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file's bytes, a large JPEG reduced in the decoder.

    A phone photo (10 megapixels) that is to be searched at 640 pixels need not
    be decoded whole: libjpeg decodes it at 1/2, 1/4 or 1/8 of its size for a
    fraction of the cost (``cv2.IMREAD_REDUCED_*``), averaging each block as an
    area resize does. The reduction is the largest that keeps the longer side at
    least ``min_side``, so the caller still downsizes the result itself. EXIF
    orientation is applied as in a full decode. Other formats are decoded whole.

    Parameters
    ----------
    data, name, grayscale, max_pixels
        As :func:`decode_image`.
    min_side : int, optional
        None: decode whole.

    Returns
    -------
    image : ndarray of shape (h, w) or (h, w, 3), uint8
    shape : (int, int)
        ``(H, W)`` of the whole image, oriented as ``image`` is: the image's
        pixels are ``shape / image.shape[:2]`` original pixels each.
    """
    import cv2

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of an image file, got "
                        f"{type(data).__name__}")
    max_pixels = check_int(max_pixels, "max_pixels", minimum=1)
    if not len(data):
        raise UnreadableImageError(name, "is empty (0 bytes); re-copy or remove the "
                                   "file")
    size = header_size(data)
    if size is None:
        raise UnreadableImageError(
            name, "cannot decode it: it is not an image, its header is corrupt, or its "
            f"format is not supported by OpenCV; {_WHAT_TO_DO}")
    width, height = size
    if width < 1 or height < 1:
        raise UnreadableImageError(name, f"its header declares {width} x {height} "
                                   f"pixels; {_WHAT_TO_DO}")
    if width * height > max_pixels:
        raise UnreadableImageError(
            name, f"its header declares {width} x {height} = {width * height:,} "
            f"pixels, more than the limit of {max_pixels:,} (a decompression bomb, or "
            "a very large image: raise max_pixels, or downscale it)")
    if min_side is not None:
        min_side = check_int(min_side, "min_side", minimum=1)
    factor = reduction(width, height, min_side) if data[:3] == b"\xff\xd8\xff" else 1
    flags = {(1, True): cv2.IMREAD_GRAYSCALE, (1, False): cv2.IMREAD_COLOR,
             (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
             (2, False): cv2.IMREAD_REDUCED_COLOR_2,
             (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4,
             (4, False): cv2.IMREAD_REDUCED_COLOR_4,
             (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
             (8, False): cv2.IMREAD_REDUCED_COLOR_8}[factor, bool(grayscale)]
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1][:200]
        raise UnreadableImageError(name, f"cannot decode it (OpenCV: {reason}); "
                                   f"{_WHAT_TO_DO}") from None
    if image is None or image.size == 0:
        raise UnreadableImageError(
            name, "cannot decode it: it is not an image, is truncated, or its format "
            f"is not supported by OpenCV; {_WHAT_TO_DO}")
    return image, _oriented(image.shape[:2], width, height, factor)


def _oriented(decoded: tuple, width: int, height: int, factor: int) -> tuple:
    """``(H, W)`` of the whole image as decoded: EXIF orientation may have turned
    the header's ``width`` x ``height`` by 90 degrees. A reduced side is the
    whole side divided by ``factor``, rounded up."""
    upright = (-(-height // factor), -(-width // factor))
    if tuple(decoded) == upright or decoded[0] == decoded[1]:
        return height, width
    return width, height


def read_color_image(image) -> np.ndarray:
    """A path or an image array as a BGR uint8 image.

    Parameters
    ----------
    image : str, os.PathLike or ndarray
        A file (see :func:`read_image`), or an array of shape (H, W), (H, W, 3)
        BGR or (H, W, 4) BGRA, uint8 or uint16.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    if isinstance(image, np.ndarray):
        return check_color_image(image)
    return read_image(image, grayscale=False)


# Leading bytes of the formats OpenCV decodes: recognising images by content finds
# files with odd or missing extensions (Caltech-101's BACKGROUND_Google/tmp is a
# JPEG named "tmp") and skips non-images cheaply, without decoding them.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF, BigTIFF
    b"GIF87a", b"GIF89a",  # GIF
    b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51",  # JPEG 2000
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # PBM, PGM, PPM
)


def looks_like_image(path: str | os.PathLike) -> bool:
    """Whether a file starts like an image format OpenCV reads (by its bytes, not
    its name). False for unreadable files and for anything but a regular file (a
    pipe is never waited on); a True file may still be truncated."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 16)
    except OSError:
        return False
    finally:
        os.close(fd)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_SIGNATURES)


def find_images(folder: str | os.PathLike, *, links: list | None = None
                ) -> tuple[list[str], list[str]]:
    """Image files under ``folder``, recursively, recognised by content.

    Hidden files and folders (names starting with ".") are left out, and so are
    symbolic links (a link to a file of the folder would index it twice; a link
    to a folder may loop): pass a link itself to index what it points to.

    Parameters
    ----------
    folder : str or os.PathLike
    links : list, optional
        The symbolic links left out are appended to it (to report them).

    Returns
    -------
    images : list of str
        Sorted paths (``folder`` joined with the relative path).
    others : list of str
        Sorted paths of the other files, which are not images.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist; NotADirectoryError if it is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(errno.ENOENT, "No such folder", str(folder))
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a folder of images", str(folder))
    images, others = [], []
    for root, dirs, files in os.walk(folder):  # never into linked folders
        for name in dirs:
            if not name.startswith(".") and os.path.islink(os.path.join(root, name)) \
                    and links is not None:
                links.append(os.path.join(root, name))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if os.path.islink(path):
                if links is not None:
                    links.append(path)
                continue
            (images if looks_like_image(path) else others).append(path)
    if links is not None:
        links.sort()
    return sorted(images), sorted(others)


#: Default limits of :func:`fetch_url`: bytes, and seconds for the whole fetch.
MAX_DOWNLOAD_BYTES = 64 * 2**20
FETCH_SECONDS = 30.0


def is_url(text) -> bool:
    """Whether ``text`` is an http(s) URL (what :func:`fetch_url` fetches)."""
    return isinstance(text, str) and text[:8].lower().startswith(("http://", "https://"))


def fetch_url(url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES,
              timeout: float = FETCH_SECONDS) -> bytes:
    """The bytes at an http(s) URL, for a query given as a URL (the command line;
    the service fetches nothing).

    At most ``max_bytes`` are read (a larger Content-Length is refused before the
    body is read, and the body is cut off past the limit), and the whole fetch
    must end within ``timeout`` seconds.

    Raises
    ------
    UnreadableImageError
        A ValueError naming the URL: not http(s), unreachable, an HTTP error,
        too large or too slow.
    """
    import time
    import urllib.error
    import urllib.request

    from cvsearch import __version__

    if not is_url(url):
        raise UnreadableImageError(url, "not an http:// or https:// URL")
    request = urllib.request.Request(url, headers={"User-Agent":
                                                   f"cvsearch/{__version__}"})
    deadline = time.monotonic() + timeout
    what = "download the image and pass its file instead"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise UnreadableImageError(url, _too_large(int(length), max_bytes,
                                                           "max_bytes"))
            chunks, total = [], 0
            while chunk := response.read(1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise UnreadableImageError(url, f"more than {max_bytes:,} bytes "
                                               f"(the limit); {what}")
                if time.monotonic() > deadline:
                    raise UnreadableImageError(url, f"not fetched within {timeout:g} "
                                               f"s; {what}")
                chunks.append(chunk)
    except urllib.error.HTTPError as error:
        raise UnreadableImageError(url, f"the server answered {error.code} "
                                   f"{error.reason}; check the address") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        if isinstance(error, UnreadableImageError):
            raise
        reason = getattr(error, "reason", error)
        raise UnreadableImageError(url, f"cannot be fetched ({reason}); check the "
                                   f"address and the network, or {what}") from None
    return b"".join(chunks)
