from pathlib import Path

import cv2
import numpy as np
import pytest

from cvsearch import FeatureExtractor
from cvsearch._validation import check_image
from cvsearch.io import read_image


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(missing)


@pytest.mark.parametrize("content, message", [
    (b"", "0 bytes"),
    (b"this is not an image at all", "cannot decode"),
], ids=["zero-byte", "text"])
def test_unreadable_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_image(path)
    assert "bad.jpg" in str(error.value)


def test_truncated_jpeg_is_rejected(tmp_path, images):
    ok, data = cv2.imencode(".jpg", images[0])
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        read_image(path)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        read_image(tmp_path)


def test_wrong_type():
    with pytest.raises(TypeError, match="path"):
        read_image(42)


def test_sixteen_bit_and_unicode_path(tmp_path, images):
    path = tmp_path / "фото 16 bit.png"
    cv2.imwrite(str(path), images[0].astype(np.uint16) * 257)
    assert np.array_equal(read_image(path), images[0])
    assert read_image(path, grayscale=False).shape == (*images[0].shape, 3)


@pytest.mark.parametrize("convert", [
    lambda g: g,
    lambda g: g[:, :, None],
    lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGR),
    lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGRA),
    lambda g: g.astype(np.uint16) * 257,
], ids=["gray", "gray1", "bgr", "bgra", "uint16"])
def test_check_image_gives_the_same_gray(images, convert):
    assert np.array_equal(check_image(convert(images[0])), images[0])


@pytest.mark.parametrize("array, error, match", [
    (np.zeros((8, 8), np.float32), TypeError, "uint8"),
    (np.zeros((8, 8, 2), np.uint8), ValueError, "shape"),
    (np.zeros((0, 8), np.uint8), ValueError, "empty"),
    ([[0, 1], [2, 3]], TypeError, "numpy array"),
])
def test_check_image_rejects(array, error, match):
    with pytest.raises(error, match=match):
        check_image(array)


def test_find_images_by_content(tmp_path):
    from cvsearch.io import find_images

    image = np.zeros((20, 20), np.uint8)
    (tmp_path / "sub" / ".hidden").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "sub" / "b.jpg"), image)
    jpeg = (tmp_path / "sub" / "b.jpg").read_bytes()
    (tmp_path / "sub" / "no_extension").write_bytes(jpeg)
    (tmp_path / "sub" / "fake.jpg").write_text("not an image")
    (tmp_path / "sub" / ".hidden" / "c.png").write_bytes(jpeg)
    (tmp_path / "empty.png").write_bytes(b"")
    images, others = find_images(tmp_path)
    rel = lambda paths: [str(Path(p).relative_to(tmp_path)) for p in paths]  # noqa: E731
    assert rel(images) == ["a.png", "sub/b.jpg", "sub/no_extension"]
    assert rel(others) == ["empty.png", "sub/fake.jpg"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        find_images(tmp_path / "a.png")


def test_read_color_image_takes_gray_bgra_and_16_bit(tmp_path):
    from cvsearch.io import read_color_image

    gray = np.full((4, 5), 200, np.uint8)
    assert read_color_image(gray).shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 255
    assert read_color_image(bgra)[0, 0].tolist() == [0, 0, 255]
    deep = np.full((4, 5, 3), 65535, np.uint16)
    out = read_color_image(deep)
    assert out.dtype == np.uint8 and out.max() == 255
    with pytest.raises(TypeError, match="dtype float64"):
        read_color_image(np.zeros((4, 5)))
    with pytest.raises(FileNotFoundError):
        read_color_image(tmp_path / "missing.png")


def test_limits_are_read_from_the_header_and_configurable(tmp_path):
    from cvsearch.io import UnreadableImageError, header_size

    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 400), np.uint8))
    assert header_size(path.read_bytes()) == (400, 300)
    assert read_image(path, max_pixels=120_000).shape == (300, 400)
    with pytest.raises(UnreadableImageError, match=r"400 x 300 = 120,000 pixels"):
        read_image(path, max_pixels=119_999)
    size = path.stat().st_size
    with pytest.raises(UnreadableImageError, match="max_file_bytes"):
        read_image(path, max_file_bytes=size - 1)
    extractor = FeatureExtractor(max_pixels=1000)
    with pytest.raises(UnreadableImageError, match="big.png"):
        extractor.extract(path)


def test_extractor_is_immutable_and_compares_by_value():
    a = FeatureExtractor("rootsift", max_side=300)
    with pytest.raises(AttributeError, match="immutable"):
        a.method = "sift"
    assert a == FeatureExtractor("rootsift", max_side=300)
    assert a != FeatureExtractor("rootsift", max_side=301)
    assert a.feature_params() == FeatureExtractor(
        "rootsift", max_side=300, max_pixels=5).feature_params()


def test_decode_image_names_its_input_and_refuses_other_types():
    from cvsearch.io import UnreadableImageError, decode_image

    with pytest.raises(TypeError, match="bytes of an image file"):
        decode_image("not bytes", "upload a.png")
    with pytest.raises(UnreadableImageError, match="upload a.png: is empty"):
        decode_image(b"", "upload a.png")
    with pytest.raises(UnreadableImageError, match="upload a.png: cannot decode"):
        decode_image(b"\x00" * 10, "upload a.png")


@pytest.fixture
def web_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_url_is_bounded_and_names_the_url(web_folder):
    from cvsearch.io import UnreadableImageError, fetch_url

    folder, base = web_folder
    (folder / "small.bin").write_bytes(b"x" * 1000)
    assert fetch_url(f"{base}/small.bin") == b"x" * 1000
    with pytest.raises(UnreadableImageError, match="small.bin.*limit"):
        fetch_url(f"{base}/small.bin", max_bytes=999)
    with pytest.raises(UnreadableImageError, match="missing.jpg: the server answered 404"):
        fetch_url(f"{base}/missing.jpg")
    with pytest.raises(UnreadableImageError, match="not an http"):
        fetch_url("ftp://example.com/a.jpg")
    with pytest.raises(UnreadableImageError, match="cannot be fetched"):
        fetch_url("http://127.0.0.1:9/nothing-listens-here.jpg", timeout=5)


def test_the_command_line_queries_by_url(web_folder, trained_index, image_files,
                                         tmp_path):
    import contextlib
    import io
    import json
    import shutil

    from cvsearch import cli

    folder, base = web_folder
    shutil.copy(image_files[3], folder / "photo.png")
    trained_index.save(tmp_path / "idx")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["query", str(tmp_path / "idx"), f"{base}/photo.png", "-k", "1",
                         "--json"]) == 0
    answer = json.loads(buffer.getvalue())
    assert answer["query"] == f"{base}/photo.png"
    assert answer["results"][0]["name"] == image_files[3]


def photo_sized(tmp_path, orientation=None):
    """A 3648 x 2736 JPEG (a phone photo's size) of a textured scene, and the
    scene as decoded whole (and turned by EXIF orientation 6, if asked)."""
    import io as bytes_io

    from conftest import textured_image
    from PIL import Image

    gray = cv2.resize(textured_image(5, 912)[:684], (3648, 2736),
                      interpolation=cv2.INTER_CUBIC)
    scene = cv2.merge([gray, 255 - gray, gray // 2])  # colour, as phones take
    buffer = bytes_io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(scene[:, :, ::-1]).save(buffer, "JPEG", quality=92, exif=exif)
    path = tmp_path / "photo.jpg"
    path.write_bytes(buffer.getvalue())
    whole = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8),
                         cv2.IMREAD_GRAYSCALE)
    return path, whole


@pytest.mark.parametrize("orientation", [None, 6])
def test_large_jpegs_are_decoded_reduced_with_keypoints_in_whole_pixels(
        tmp_path, orientation):
    from cvsearch.io import read_image_reduced

    path, whole = photo_sized(tmp_path, orientation)
    reduced, shape = read_image_reduced(path, min_side=640)
    assert shape == whole.shape  # (2736, 3648), or turned by EXIF: (3648, 2736)
    assert max(reduced.shape) == 912  # 1/4: the largest reduction >= 640
    assert reduced.shape[0] / reduced.shape[1] == pytest.approx(
        whole.shape[0] / whole.shape[1], abs=0.01)
    assert read_image_reduced(path, min_side=1000)[0].shape == (
        tuple(s // 2 for s in whole.shape))
    assert read_image_reduced(path)[0].shape == whole.shape

    extractor = FeatureExtractor("sift", max_side=640)
    from_file = extractor.extract(path)  # reduced in the decoder
    from_whole = extractor.extract(whole)  # decoded whole, area-resized
    assert from_file.image_shape == from_whole.image_shape == whole.shape
    # the same scene: keypoints of one lie where the other's are, in whole pixels
    matches = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(
        from_file.descriptors, from_whole.descriptors)
    assert len(matches) > 0.5 * len(from_whole.keypoints)
    offsets = np.array([from_file.keypoints[m.queryIdx, :2]
                        - from_whole.keypoints[m.trainIdx, :2] for m in matches])
    assert np.median(np.linalg.norm(offsets, axis=1)) < 3.0  # 5.7 pixels per pixel
    assert (from_file.keypoints[:, 0] < whole.shape[1]).all()
    assert (from_file.keypoints[:, 1] < whole.shape[0]).all()


def test_small_images_and_other_formats_are_decoded_whole(tmp_path, images):
    from cvsearch.io import read_image_reduced

    cv2.imwrite(str(tmp_path / "a.png"), cv2.resize(images[0], (2000, 1600)))
    image, shape = read_image_reduced(tmp_path / "a.png", min_side=640)
    assert image.shape == shape == (1600, 2000)
    cv2.imwrite(str(tmp_path / "b.jpg"), cv2.resize(images[0], (1200, 900)))
    image, shape = read_image_reduced(tmp_path / "b.jpg", min_side=640)
    assert image.shape == shape == (900, 1200)  # 1/2 would be 600 < 640


@pytest.mark.parametrize("min_side", [0, -5, 2.5, "640"])
def test_a_reduced_decode_refuses_a_side_that_is_no_size(tmp_path, min_side):
    from cvsearch.io import decode_image

    data = cv2.imencode(".jpg", np.full((40, 60), 128, np.uint8))[1].tobytes()
    with pytest.raises((ValueError, TypeError), match="min_side"):
        decode_image(data, "x.jpg", min_side=min_side)


def test_a_file_is_read_whole_or_to_the_limit_even_if_its_size_changed(tmp_path):
    # read_bytes asks for the size fstat gave (plus one): a file that grew or
    # shrank since is still read to its end, and never past the limit.
    import os

    from cvsearch.io import _read_at_most

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    whole = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        for expected, limit, length in [(10_240, 10_241, 10_240), (100, 10_241, 10_240),
                                        (100, 5_000, 5_000), (20_000, 10_241, 10_240),
                                        (0, 1, 1), (10_240, 10_240, 10_240)]:
            os.lseek(fd, 0, os.SEEK_SET)
            assert _read_at_most(fd, limit, expected) == whole[:length]
    finally:
        os.close(fd)
