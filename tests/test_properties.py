"""Property-based tests (hypothesis) of every reader of untrusted files.

For each reader, hundreds of random or mutated inputs; the only outcomes allowed
are a correct result or the documented exception naming the file. No other
exception, no crash, no hang.
"""

import hashlib
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_corpus import texture
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cvsearch import FeatureExtractor, Index, storage
from cvsearch.io import READ_ERRORS, read_image
from cvsearch.torch_weights import RefusedPickleError, load_state_dict

# 300 per target in CI (derandomised there, see conftest); more for a deep run:
# CVSEARCH_FUZZ_EXAMPLES=5000 python -m pytest tests/test_properties.py
EXAMPLES = int(os.environ.get("CVSEARCH_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# ------------------------------------------------------------------ mutations
@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with one to three edits: flipped bytes, an overwritten run, a cut,
    an insertion or a deletion, anywhere (often in the header)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        # half the edits in the first 64 bytes, where the headers are
        where = draw(st.one_of(st.integers(0, min(63, len(data) - 1)),
                               st.integers(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "insert", "delete"]))
        if kind == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            data[where:where + len(run)] = run
        elif kind == "cut":
            del data[where:]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[where:where + draw(st.integers(1, 16))]
    return bytes(data)


# --------------------------------------------------------------- image files
_IMAGE = texture(3, 96)
_ENCODED = {ext: cv2.imencode(ext, _IMAGE)[1].tobytes()
            for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".pgm")}


def _gif() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_IMAGE).save(buffer, "GIF")
    return buffer.getvalue()


_ENCODED[".gif"] = _gif()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def assert_read_or_refused(path: Path):
    try:
        image = read_image(path, max_pixels=2**22)
    except READ_ERRORS as error:
        assert str(path) in str(error)
    else:
        assert image.dtype == np.uint8 and image.ndim == 2 and image.size > 0


@fuzz
@given(data=st.one_of(
    st.binary(max_size=2048),
    # random bytes behind a real signature, to get past format detection
    st.tuples(st.sampled_from([d[:16] for d in _ENCODED.values()]),
              st.binary(max_size=2048)).map(b"".join)))
def test_random_bytes_are_read_or_refused(scratch, data):
    path = scratch / "random.img"
    path.write_bytes(data)
    assert_read_or_refused(path)


@fuzz
@given(data=st.sampled_from(sorted(_ENCODED)).flatmap(lambda ext: mutated(_ENCODED[ext])))
def test_mutated_images_are_read_or_refused(scratch, data):
    path = scratch / "mutated.img"
    path.write_bytes(data)
    assert_read_or_refused(path)


# -------------------------------------------------------------- index folders
@pytest.fixture(scope="module")
def saved_index(tmp_path_factory):
    """A small saved index, and the bytes of each of its files."""
    images = [texture(seed, 96) for seed in range(6)]
    index = Index.build(images, FeatureExtractor("sift"), n_words=40, random_state=0,
                        names=[f"image {i}" for i in range(6)])
    folder = tmp_path_factory.mktemp("saved") / "index"
    index.save(folder)
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
             if p.name != storage.LOCK_FILE}  # the writer lock: empty, never read
    return index, files


def fingerprint(index: Index, folder: Path) -> dict:
    """What an index is, as the bytes its save writes."""
    shutil.rmtree(folder, ignore_errors=True)
    index.save(folder)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.iterdir() if p.name != storage.LOCK_FILE}


@pytest.fixture(scope="module")
def saved_fingerprint(saved_index, tmp_path_factory):
    """:func:`fingerprint` of the saved index, computed once for every example."""
    return fingerprint(saved_index[0], tmp_path_factory.mktemp("fingerprint") / "index")


@fuzz
@given(data=st.data())
def test_mutated_index_folders_are_refused_or_identical(saved_index, saved_fingerprint,
                                                        scratch, data, monkeypatch):
    # a deleted file is reported after one more reading, not after the 2.5 s a
    # reader waits for a folder being replaced (tests/test_writers.py)
    monkeypatch.setattr(storage, "LOAD_ATTEMPTS", 2)
    _, files = saved_index
    name = data.draw(st.sampled_from(sorted(files)), label="file")
    action = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "delete",
                                        "add a stray file"]), label="action")
    folder = scratch / "index"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for other, content in files.items():
        (folder / other).write_bytes(content)
    if action == "mutate":
        changed = data.draw(mutated(files[name]), label="bytes")
        assume(changed != files[name])
        (folder / name).write_bytes(changed)
    elif action == "delete":
        assume(name != "index.json")  # no manifest: not an index (below)
        (folder / name).unlink()
    else:
        (folder / f"database-{'0' * 16}.npz").write_bytes(b"stray")
    try:
        loaded = Index.load(folder)
        loaded.check_integrity()  # what load leaves for the first use
    except ValueError as error:
        assert any(f in str(error) for f in files), error  # names a file
        assert action != "add a stray file"
    else:
        # checked: then nothing that is read changed (whitespace of the JSON, a
        # stray file): the index is the same, to the byte
        assert fingerprint(loaded, scratch / "again") == saved_fingerprint


def test_index_folder_without_manifest_is_not_an_index(saved_index, scratch):
    index, files = saved_index
    folder = scratch / "no-manifest"
    folder.mkdir()
    for name, content in files.items():
        if name != "index.json":
            (folder / name).write_bytes(content)
    with pytest.raises(FileNotFoundError, match="index.json"):
        Index.load(folder)


# ------------------------------------------------------------- .pth weights
def write_zip_pth(path: Path, storage: np.ndarray, size, stride, offset):
    """A zip-layout state dict with one float32 tensor of the given view."""
    from test_torch_weights import _FakeTorch, _pickler, _Storage, _Tensor

    with _FakeTorch() as torch:
        s = _Storage("0", torch.FloatStorage, storage)
        buffer = io.BytesIO()
        _pickler(buffer, [s]).dump({"w": _Tensor(s, size, stride, offset)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", storage.tobytes())


def reference_view(storage, size, stride, offset):
    """The tensor torch would make, by explicit index arithmetic."""
    out = np.zeros(size, storage.dtype)
    if out.size == 0:
        return out
    for index in np.ndindex(*size):
        out[index] = storage[offset + sum(i * s for i, s in zip(index, stride))]
    return out


_dims = st.integers(-3, 6)


@fuzz
@given(numel=st.integers(0, 40), ndim=st.integers(0, 3), data=st.data())
def test_tensor_views_are_exact_or_refused(scratch, numel, ndim, data):
    """Any offset, sizes and strides (negative, zero, huge, of other types):
    the exact view, or a ValueError naming the file; nothing read outside the
    storage."""
    size = tuple(data.draw(st.one_of(_dims, st.just(10**12)), label="size")
                 for _ in range(ndim))
    stride = tuple(data.draw(st.one_of(_dims, st.just(2**62)), label="stride")
                   for _ in range(data.draw(st.sampled_from([ndim, ndim, ndim + 1]))))
    offset = data.draw(st.one_of(st.integers(-2, 45), st.just(1.5)), label="offset")
    storage = np.arange(numel, dtype=np.float32)
    path = scratch / "view.pth"
    write_zip_pth(path, storage, size, stride, offset)
    valid = (len(size) == len(stride) and isinstance(offset, int) and offset >= 0
             and min(size + stride, default=0) >= 0)
    in_bounds = valid and (0 in size or offset + sum(
        (n - 1) * s for n, s in zip(size, stride)) < numel)
    # within the 1 GiB budget, and a shape numpy can hold (even when empty)
    small = (valid and int(np.prod(size, dtype=object)) * 4 <= 2**30
             and int(np.prod([max(n, 1) for n in size], dtype=object)) * 4 < 2**63)
    try:
        state = load_state_dict(path)
    except ValueError as error:
        assert str(path) in str(error)
        assert not (in_bounds and small), error
    else:
        assert in_bounds and small
        assert np.array_equal(state["w"], reference_view(storage, size, stride, offset))


def _pth_files():
    from test_torch_weights import write_legacy, write_zip

    folder = Path(__import__("tempfile").mkdtemp())
    write_legacy(folder / "legacy.pth")
    write_zip(folder / "zip.pth")
    files = {name: (folder / name).read_bytes() for name in ("legacy.pth", "zip.pth")}
    shutil.rmtree(folder)
    return files


_PTH = _pth_files()


@fuzz
@given(data=st.sampled_from(sorted(_PTH)).flatmap(lambda name: mutated(_PTH[name])))
def test_mutated_weight_files_are_read_or_refused(scratch, data):
    path = scratch / "mutated.pth"
    path.write_bytes(data)
    try:
        state = load_state_dict(path)
    except (ValueError, RefusedPickleError) as error:
        assert str(path) in str(error)
    else:
        assert all(isinstance(v, np.ndarray) for v in state.values())


@fuzz
@given(data=st.binary(max_size=512))
def test_random_pickles_are_refused(scratch, data):
    path = scratch / "random.pth"
    path.write_bytes(pickle.dumps({"w": 1}, protocol=2)[:2] + data)
    with pytest.raises((ValueError, RefusedPickleError)) as error:
        load_state_dict(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- archives
@pytest.fixture(scope="module")
def server():
    from test_datasets import Server

    server = Server(b"")
    yield server
    server.close()


def _caltech_zip():
    from test_datasets import JPEG, caltech_zip

    return caltech_zip({"101_ObjectCategories/a/image_0001.jpg": JPEG * 50,
                        "101_ObjectCategories/b/image_0002.jpg": JPEG})


_ARCHIVE = _caltech_zip()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(body=mutated(_ARCHIVE))
def test_mutated_archives_unpack_or_are_refused(server, scratch, body):
    """Corrupt zips and tarballs (with a checksum that matches them, as with a
    custom url and md5): unpacked whole, or a ValueError, and nothing left."""
    from cvsearch.datasets import download_archive

    target = scratch / "download"
    shutil.rmtree(target, ignore_errors=True)
    server.body = body
    try:
        folder = download_archive(server.url, hashlib.md5(body).hexdigest(), target,
                                  member="101_ObjectCategories.tar.gz",
                                  folder="101_ObjectCategories")
    except ValueError:
        assert [p.name for p in target.iterdir()] == []
    else:
        assert folder.is_dir()
        assert all(p.resolve().is_relative_to(target.resolve())
                   for p in folder.rglob("*"))


# ------------------------------------------------------------- duplicate groups
@st.composite
def copy_graphs(draw):
    """Edges among up to 12 images: each pair absent, a copy or an object edge,
    with coverages and NFAs drawn (ties included), seen from either side."""
    from cvsearch.duplicates import Edge

    n = draw(st.integers(2, 12))
    edges = []
    for a in range(n):
        for b in range(a + 1, n):
            kind = draw(st.sampled_from([None, None, "copy", "object"]))
            if kind is None:
                continue
            for _ in range(draw(st.integers(1, 2))):  # found by one side or both
                edges.append(Edge(a, b, kind, -float(draw(st.integers(3, 60))),
                                  draw(st.sampled_from([0.5, 0.6, 0.75, 0.9])),
                                  draw(st.integers(8, 80)), 1.0))
    return n, edges


@fuzz
@given(copy_graphs(), st.sampled_from(["copy", "object"]))
def test_duplicate_groups_never_hold_an_image_unverified_against_their_anchor(
        graph, kind):
    """Whatever the edges: groups are disjoint, of two or more images, the copy
    to keep first; every member has an edge with the anchor (a copy edge, or
    for copies an object edge and a copy edge to another member), and the
    weakest edge is one of the anchor's."""
    from cvsearch.duplicates import group

    n, edges = graph
    pairs = {}
    for edge in edges:
        pairs.setdefault((edge.a, edge.b), set()).add(edge.kind)

    def matches(edge):
        """Inliers anywhere in a 100 x 100 image, the same for an edge each
        time: some members agree with the anchor where the others do not."""
        rng = np.random.default_rng([edge.a, edge.b])
        corner = rng.uniform(0, 80, 2)
        return corner + rng.uniform(0, 20, (8, 2)), rng.uniform(0, 100, (8, 2))

    key = lambda i, agreement=0.0: (0, -i)  # noqa: E731
    for groups in (group(edges, key, kind=kind),
                   group(edges, key, kind=kind, matches=matches)):
        check_groups(groups, pairs, kind)


def check_groups(groups, pairs, kind):
    """The invariants above, for ``groups`` of the edges ``pairs`` hold."""
    seen = set()
    for found in groups:
        members = set(found.ids)
        assert len(members) == len(found.ids) >= 2 and not members & seen
        seen |= members
        assert found.ids[0] == found.best and found.anchor in members
        anchor = found.anchor
        for member in members - {anchor}:
            kinds = pairs.get((min(member, anchor), max(member, anchor)), set())
            copied = any("copy" in pairs.get((min(member, m), max(member, m)), set())
                         for m in members - {member})
            if kind == "object":
                assert kinds, (member, anchor)
            else:
                assert "copy" in kinds or ("object" in kinds and copied), \
                    (member, anchor)
        assert anchor in (found.weakest.a, found.weakest.b)
        assert {found.weakest.a, found.weakest.b} <= members
