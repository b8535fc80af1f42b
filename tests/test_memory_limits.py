"""No input makes a reader allocate more than its stated limit.

A child process imports everything, then caps its own address space
(``resource.setrlimit(RLIMIT_AS)``) at what it uses plus ``HEADROOM``, and reads
hostile inputs that ask for gigabytes (bombs, forged headers, forged strides). Each
must be refused with the reader's documented ValueError, never a MemoryError; and
genuine inputs at the configured limits must still be read under the same cap, so
the cap is no tighter than the limits it checks. A control allocation larger than
the headroom must fail, so the cap is real.
"""

import hashlib
import io
import json
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bad_corpus import jpeg_claiming, png_bomb, png_header, texture, tiff_claiming

resource = pytest.importorskip("resource", reason="RLIMIT_AS needs a POSIX system")
if not Path("/proc/self/status").exists():
    pytest.skip("reading VmSize needs /proc", allow_module_level=True)

HEADROOM = 400 * 2**20
# The limits the child configures: images of at most 16.7 megapixels and 64 MiB
# (a colour decode: 50 MB), weight files with a budget of 64 MiB.
MAX_PIXELS, MAX_FILE_BYTES, MAX_WEIGHT_BYTES = 2**24, 2**26, 2**26


def npy(dtype: str, shape: tuple, payload: bytes) -> bytes:
    """A .npy member whose header claims ``shape`` but holds ``payload``."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() \
        + payload


def forge_index(folder: Path, key: str, member: str, data: bytes):
    """Replace one array of a saved index (a member of the vocabulary's .npz, or
    a segment's .npy) and fix every checksum, as a careful attacker would."""
    manifest = json.loads((folder / "index.json").read_text())
    if key == "vocabulary":
        entry = manifest["files"][key]
        with zipfile.ZipFile(folder / entry["name"]) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        members[member] = data
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        content = buffer.getvalue()
    else:
        entry = manifest["segments"][0]["files"][member]
        content = data
    (folder / entry["name"]).write_bytes(content)
    entry.update(sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
    from cvsearch import storage

    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (folder / "index.json").write_text(json.dumps(manifest))


def weight_file(path: Path, size, stride, numel=4, storage_bytes=None, deflate=False):
    from test_torch_weights import _FakeTorch, _pickler, _Storage, _Tensor

    with _FakeTorch() as torch:
        s = _Storage("0", torch.FloatStorage, np.zeros(numel, np.float32))
        buffer = io.BytesIO()
        _pickler(buffer, [s]).dump({"w": _Tensor(s, size, stride)})
    compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", bytes(storage_bytes if storage_bytes
                                                 is not None else numel * 4))


def legacy_claiming(path: Path, numel: int):
    """A legacy-layout state dict whose storage claims ``numel`` elements and
    holds four."""
    from test_torch_weights import _FakeTorch, _pickler, _Storage, _Tensor

    with _FakeTorch() as torch:
        s = _Storage("0", torch.FloatStorage, np.zeros(4, np.float32))
        buffer = io.BytesIO()
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.Pickler(buffer, protocol=2).dump(header)
        _pickler(buffer, [s]).dump({"w": _Tensor(s, (4,), (1,))})
        pickle.Pickler(buffer, protocol=2).dump(["0"])
        buffer.write(struct.pack("<q", numel) + bytes(16))
    path.write_bytes(buffer.getvalue())


def zip_bomb(path: Path, numel: int):
    """A zip-layout state dict whose storage of ``numel`` float32 zeros is deflated
    to about a thousandth of its size."""
    from test_torch_weights import _FakeTorch, _pickler, _Storage, _Tensor

    with _FakeTorch() as torch:
        s = _Storage("0", torch.FloatStorage, np.zeros(1, np.float32))
        s.array = np.broadcast_to(np.float32(0), (numel,))  # its size, not its bytes
        buffer = io.BytesIO()
        _pickler(buffer, [s]).dump({"w": _Tensor(s, (numel,), (1,))})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(2**24)
            for _ in range(numel * 4 // len(block)):
                member.write(block)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained_index):
    folder = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    import cv2

    # images: one genuine at the pixel limit, bombs and forged headers beyond it
    at_limit = rng.integers(0, 256, (4096, 4096), dtype=np.uint8)
    cv2.imwrite(str(folder / "at_limit.png"), at_limit)
    (folder / "png_header_bomb.png").write_bytes(png_header(100_000, 100_000))
    (folder / "png_real_bomb.png").write_bytes(png_bomb(8192))
    (folder / "jpeg_header_bomb.jpg").write_bytes(jpeg_claiming(65_000, 65_000))
    (folder / "tiff_header_bomb.tif").write_bytes(tiff_claiming(60_000, 60_000))
    with open(folder / "sparse.jpg", "wb") as file:
        file.write(cv2.imencode(".jpg", texture(0))[1].tobytes())
        file.truncate(2**31)  # 2 GiB, sparse

    # index folders whose arrays claim terabytes (checksums fixed)
    for key, member, forged in [
            ("segment", "post_rows", npy("|u1", (2**40,), b"\0" * 64)),
            ("vocabulary", "centers.npy", npy("<f4", (2**31, 128), b"\0" * 64))]:
        index_folder = folder / f"index_{key}"
        trained_index.save(index_folder)
        forge_index(index_folder, key, member, forged)

    # weight files: a genuine one, then forged sizes, strides and members
    # 20 MB of weights: the file, its storage and the array count 60 MB of 64
    weight_file(folder / "genuine.pth", (5_000_000,), (1,), numel=5_000_000)
    weight_file(folder / "zero_stride.pth", (10**6, 10**6), (0, 0))
    legacy_claiming(folder / "huge_numel.pth", 2**40)
    zip_bomb(folder / "zip_bomb.pth", 2**28)  # 1 GiB of zeros in 1 MB
    # a pickle that puts one object at memo index 2**31 (the C unpickler would
    # grow its memo table to 16 GiB for it)
    memo_bomb = b"\x80\x02}r" + struct.pack("<I", 2**31) + b"."
    (folder / "memo_bomb.pth").write_bytes(
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + memo_bomb)
    return folder


CHILD = textwrap.dedent("""
    import json, os, resource, sys
    import numpy as np
    import cv2
    cv2.setNumThreads(0)
    from cvsearch import Index
    from cvsearch.io import read_image
    from cvsearch.torch_weights import load_state_dict
    folder, headroom = sys.argv[1], int(sys.argv[2])
    limits = dict(max_pixels=int(sys.argv[3]), max_file_bytes=int(sys.argv[4]))
    budget = int(sys.argv[5])
    read_image(os.path.join(folder, "at_limit.png"), **limits)  # warm up the decoders
    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    cap = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    tasks = {
        "control": lambda: np.ones(headroom // 4, np.float64),
        "index_segment": lambda: Index.load(os.path.join(folder, "index_segment")),
        "index_vocabulary": lambda: Index.load(os.path.join(folder, "index_vocabulary")),
    }
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".pth"):
            tasks[name] = lambda p=path: load_state_dict(p, max_bytes=budget)
        elif not name.startswith("index_"):
            tasks[name] = lambda p=path: read_image(p, grayscale=False, **limits)
    results = {}
    for name, task in tasks.items():
        try:
            task()
            results[name] = ["ok", ""]
        except MemoryError:
            results[name] = ["MemoryError", ""]
        except Exception as error:
            results[name] = [type(error).__name__, str(error)]
    print(json.dumps(results))
""")


def test_hostile_inputs_stay_within_the_stated_limits(inputs):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(inputs), str(HEADROOM), str(MAX_PIXELS),
         str(MAX_FILE_BYTES), str(MAX_WEIGHT_BYTES)],
        capture_output=True, text=True, timeout=600,
        env={"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
             "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert results.pop("control")[0] == "MemoryError"  # the cap is real
    for genuine in ("at_limit.png", "genuine.pth"):
        assert results.pop(genuine) == ["ok", ""], genuine
    expected = {
        "png_header_bomb.png": "pixels", "png_real_bomb.png": "pixels",
        "jpeg_header_bomb.jpg": "pixels", "tiff_header_bomb.tif": "pixels",
        "sparse.jpg": "max_file_bytes",
        "index_segment": "header gives shape", "index_vocabulary": "header gives shape",
        "zero_stride.pth": "limit", "huge_numel.pth": "",
        "zip_bomb.pth": "limit", "memo_bomb.pth": "",
    }
    assert set(results) == set(expected)
    for name, fragment in expected.items():
        kind, message = results[name]
        assert kind in ("ValueError", "UnreadableImageError"), (name, kind, message)
        assert fragment in message, (name, message)


ANY_K = textwrap.dedent("""
    import json, resource, sys
    from types import SimpleNamespace
    import numpy as np
    import cv2
    cv2.setNumThreads(0)
    from cvsearch import GlobalIndex, Index
    index = Index.load(sys.argv[1])
    query = cv2.imread(sys.argv[2], cv2.IMREAD_GRAYSCALE)
    index.query(query, k=3, rerank=3)  # warm up: compiled loops, pools
    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    cap = vm_size() + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    batch = SimpleNamespace(vectors=np.eye(4, dtype=np.float32),
                            ids=np.arange(4, dtype=np.int64))
    huge = 10**9  # 8 GB of ids, were a list that long allocated
    tasks = {
        "query": lambda: len(index.query(query, k=huge)[1]),
        "rerank": lambda: len(index.query(query, k=3, rerank=huge)[1]),
        "similar": lambda: len(index.similar(0, k=huge)[1]),
        "global": lambda: len(GlobalIndex._best_of_batch(
            batch, None, np.ones(4, np.float32), huge)[1]),
    }
    results = {}
    for name, task in tasks.items():
        try:
            results[name] = task()
        except MemoryError:
            results[name] = "MemoryError"
    print(json.dumps(results))
""")


def test_any_k_allocates_only_what_the_index_holds(trained_index, image_files,
                                                   tmp_path):
    # A caller's k or rerank may be any size: results hold at most the index's
    # images, and nothing is allocated for the rest (k = 10**9 allocated 8 GB
    # of padding per segment, and killed the process where memory ran out).
    trained_index.save(tmp_path / "index")
    done = subprocess.run(
        [sys.executable, "-c", ANY_K, str(tmp_path / "index"), str(image_files[0]),
         str(HEADROOM)], capture_output=True, text=True, timeout=600,
        env={"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
             "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    n = len(trained_index)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "query": n, "rerank": 3, "similar": n - 1, "global": 4}
