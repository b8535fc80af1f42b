"""A corpus of awkward and hostile files, each with the outcome a reader must give.

``make_corpus(folder)`` writes one file (or link, pipe, folder) per kind and returns
the cases. Expected outcomes:

- ``INDEXED``: a real image, however odd (16-bit, CMYK, EXIF-rotated, GIF, 1 x 1,
  a 1 x 20,000 strip, a non-UTF-8 name ...): it must be read and indexed;
- ``REJECTED``: not a readable image (truncated, a bomb, a pipe, a link loop ...):
  it must be refused with an error whose message names the file and contains
  ``Case.message``, without hanging, crashing, or taking the batch down with it.

Run it as a script to write the corpus to a folder and list it:
``python tests/bad_corpus.py /tmp/corpus``.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

INDEXED, REJECTED = "indexed", "rejected"


class Case(NamedTuple):
    """One file of the corpus.

    Attributes
    ----------
    kind : str
    path : str
    expected : str
        INDEXED or REJECTED.
    message : str
        For REJECTED: a piece of the error message (the file's path is checked
        separately).
    shape : tuple or None
        For INDEXED, where it is known: the (height, width) the image must have.
    """

    kind: str
    path: str
    expected: str
    message: str = ""
    shape: tuple | None = None


def texture(seed: int = 0, size: int = 160) -> np.ndarray:
    """A small textured grayscale image (uint8) with corners for SIFT."""
    from conftest import textured_image

    return textured_image(seed, size)


def _encode(image: np.ndarray, ext: str, params=()) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return data.tobytes()


def _pillow(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG (8-bit grayscale) declaring ``width x height``, with ``idat`` as its
    compressed data."""
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def png_bomb(side: int) -> bytes:
    """A real, complete PNG of ``side x side`` black pixels: a few hundred KB that
    decode to ``side**2`` bytes."""
    row = bytes(side + 1)  # filter byte + pixels
    packer = zlib.compressobj(9)
    chunks = [packer.compress(row * 256) for _ in range(side // 256)]
    chunks.append(packer.compress(row * (side % 256)) + packer.flush())
    return png_header(side, side, b"".join(chunks))


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) claims ``width x height``."""
    data = _encode(texture(1, 64), ".jpg")
    sof = data.index(b"\xff\xc0")
    return _patch(data, sof + 5, ">HH", height, width)


def tiff_claiming(width: int, height: int) -> bytes:
    """A minimal uncompressed 8-bit grayscale TIFF whose tags claim ``width x
    height`` and whose one strip holds 16 bytes."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8),
               (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 8 * 12 + 4),
               (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in
        entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def make_corpus(folder: str | os.PathLike) -> list[Case]:
    """Write the corpus into ``folder`` (created); return its cases, at least 30
    kinds."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    gray = texture(0)
    colour = cv2.merge([gray, texture(2), np.flipud(gray)])
    h, w = gray.shape

    def write(name, data, expected, message="", shape=None, kind=None):
        path = folder / name
        path.write_bytes(data)
        cases.append(Case(kind or Path(name).stem, str(path), expected, message, shape))

    # ------------------------------------------------------------ real images
    write("png_gray.png", _encode(gray, ".png"), INDEXED, shape=(h, w))
    write("jpeg_colour.jpg", _encode(colour, ".jpg"), INDEXED, shape=(h, w))
    write("jpeg_progressive.jpg", _encode(colour, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE,
                                                          1]), INDEXED, shape=(h, w))
    write("png_16bit.png", _encode(gray.astype(np.uint16) * 257, ".png"), INDEXED,
          shape=(h, w))
    write("png_rgba.png", _encode(cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA), ".png"),
          INDEXED, shape=(h, w))
    write("png_palette.png", _pillow(Image.fromarray(gray).convert("P"), "PNG"),
          INDEXED, shape=(h, w))
    write("jpeg_cmyk.jpg", _pillow(Image.fromarray(colour[:, :, ::-1]).convert("CMYK"),
                                   "JPEG"), INDEXED, shape=(h, w))
    wide = texture(3, 160)[:, :100]  # 160 high, 100 wide; rotated 90 degrees by EXIF
    exif = Image.Exif()
    exif[0x0112] = 6
    write("jpeg_exif_rotated.jpg", _pillow(Image.fromarray(wide), "JPEG", exif=exif),
          INDEXED, shape=(100, 160))
    write("gif.gif", _pillow(Image.fromarray(gray), "GIF"), INDEXED, shape=(h, w))
    write("bmp.bmp", _encode(colour, ".bmp"), INDEXED, shape=(h, w))
    write("tiff.tif", _encode(gray, ".tiff"), INDEXED, shape=(h, w))
    pages = [Image.fromarray(gray), Image.fromarray(texture(4))]
    write("tiff_multipage.tif", _pillow(pages[0], "TIFF", save_all=True,
                                        append_images=pages[1:]), INDEXED, shape=(h, w))
    write("webp.webp", _encode(colour, ".webp"), INDEXED, shape=(h, w))
    write("pgm.pgm", _encode(gray, ".pgm"), INDEXED, shape=(h, w))
    write("tiny_1x1.png", _encode(np.full((1, 1), 7, np.uint8), ".png"), INDEXED,
          shape=(1, 1))
    strip = np.tile(gray[:1], (1, 125))  # 1 x 20,000
    write("strip_1x20000.png", _encode(strip, ".png"), INDEXED, shape=(1, 20000))
    write("strip_20000x2.png", _encode(np.tile(gray[:, :2], (125, 1)), ".png"),
          INDEXED, shape=(20000, 2))
    write("png_named_jpg.jpg", _encode(gray, ".png"), INDEXED, shape=(h, w))
    write("no_extension", _encode(gray, ".jpg"), INDEXED, shape=(h, w))
    write("jpeg_trailing_junk.jpg", _encode(gray, ".jpg") + os.urandom(3000), INDEXED,
          shape=(h, w))
    write("unicode фото 写真.png", _encode(texture(5), ".png"), INDEXED, shape=(h, w),
          kind="unicode_name")
    if sys.platform.startswith("linux"):  # names are bytes there, not Unicode
        name = os.fsdecode(b"latin1_\xe9t\xe9_\xff.png")
        write(name, _encode(texture(6), ".png"), INDEXED, shape=(h, w),
              kind="non_utf8_name")
    target = folder / "png_gray.png"
    os.symlink(target, folder / "symlink_to_image.png")
    cases.append(Case("symlink_to_image", str(folder / "symlink_to_image.png"),
                      INDEXED, shape=(h, w)))
    locked = folder / "no_permission.png"
    locked.write_bytes(_encode(texture(7), ".png"))
    locked.chmod(0)
    root = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads it anyway
    cases.append(Case("no_permission", str(locked), INDEXED if root else REJECTED,
                      "Permission denied", (h, w) if root else None))

    # --------------------------------------------------------------- not images
    write("empty.jpg", b"", REJECTED, "0 bytes")
    jpeg = _encode(colour, ".jpg")
    write("truncated_jpeg.jpg", jpeg[:len(jpeg) // 3], REJECTED, "cannot decode")
    png = _encode(gray, ".png")
    write("truncated_png.png", png[:len(png) // 2], REJECTED, "cannot decode")
    write("random_bytes.jpg", np.random.default_rng(0).bytes(5000), REJECTED,
          "cannot decode")
    write("text.png", b"just some text, not an image\n" * 20, REJECTED, "cannot decode")
    write("html.jpg", b"<!doctype html><html><body>404</body></html>", REJECTED,
          "cannot decode")
    write("svg.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" '
          b'height="10"/>', REJECTED, "cannot decode")
    write("pdf.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", REJECTED,
          "cannot decode")
    write("png_header_bomb.png", png_header(100_000, 100_000), REJECTED, "pixels")
    write("png_real_bomb.png", png_bomb(16_384), REJECTED, "pixels")
    write("jpeg_header_bomb.jpg", jpeg_claiming(65_000, 65_000), REJECTED, "pixels")
    bmp = _encode(gray, ".bmp")
    write("bmp_header_bomb.bmp", _patch(bmp, 18, "<ii", 50_000, 50_000), REJECTED,
          "pixels")
    write("tiff_header_bomb.tif", tiff_claiming(100_000, 100_000), REJECTED, "pixels")
    gif = _pillow(Image.fromarray(gray), "GIF")
    write("gif_header_bomb.gif", _patch(gif, 6, "<HH", 65_535, 65_535), REJECTED,
          "pixels")
    write("png_zero_width.png", png_header(0, 100), REJECTED, "")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR checksum
    write("png_bad_crc.png", bytes(bad_crc), REJECTED, "cannot decode")
    write("jpeg_bad_frame.jpg", _patch(jpeg, jpeg.index(b"\xff\xc0") + 9, ">B", 0),
          REJECTED, "cannot decode")  # a frame of 0 components

    # ------------------------------------------------------ not regular files
    (folder / "directory.jpg").mkdir()
    cases.append(Case("directory", str(folder / "directory.jpg"), REJECTED,
                      "directory"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.jpg")
        cases.append(Case("fifo", str(folder / "fifo.jpg"), REJECTED,
                          "not a regular file"))
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    for end in "ab":
        cases.append(Case(f"symlink_loop_{end}", str(folder / f"loop_{end}.jpg"),
                          REJECTED, "cannot be opened"))
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    cases.append(Case("dangling_symlink", str(folder / "dangling.jpg"), REJECTED,
                      "No such"))
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", folder / "device.jpg")
        cases.append(Case("device", str(folder / "device.jpg"), REJECTED,
                          "not a regular file"))
    huge = folder / "sparse_huge.jpg"
    with open(huge, "wb") as file:  # 300 MB that take no disk space
        file.write(jpeg)
        file.truncate(300 * 2**20)
    cases.append(Case("over_file_size_limit", str(huge), REJECTED, "max_file_bytes"))
    return cases


if __name__ == "__main__":
    for case in make_corpus(sys.argv[1] if len(sys.argv) > 1 else "bad-corpus"):
        print(f"{case.expected:9s} {case.kind:24s} {case.path}")
