import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from conftest import warped
from test_index import assert_same_results, results

from cvsearch import Index, storage


@pytest.fixture
def saved(trained_index, tmp_path):
    directory = tmp_path / "index"
    trained_index.save(directory)
    return directory


def manifest_of(directory):
    return json.loads((directory / "index.json").read_text())


def data_file(directory, key):
    return directory / manifest_of(directory)["files"][key]["name"]


def rewrite(directory, key, data: bytes):
    """Replace a data file and fix its checksum, as a careful attacker would."""
    manifest = manifest_of(directory)
    data_file(directory, key).write_bytes(data)
    manifest["files"][key].update(sha256=hashlib.sha256(data).hexdigest(),
                                  bytes=len(data))
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (directory / "index.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_results(trained_index, saved, images):
    loaded = Index.load(saved)
    assert loaded.names == trained_index.names
    assert loaded.extractor.get_params() == trained_index.extractor.get_params()
    queries = [warped(images[i], 25, 0.9)[0] for i in (0, 5)]
    assert_same_results(results(trained_index, queries, rerank=8),
                        results(loaded, queries, rerank=8))


def test_files_are_plain_and_pickle_free(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names[0] == ".cvsearch-lock"  # the writer lock file, empty
    assert "index.json" in names and len(names) == 5
    for path in saved.glob("*.npz"):
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                assert archive[key].dtype != object
    assert manifest_of(saved)["format_version"] == 2


def test_resave_removes_stale_files(trained_index, saved, image_files):
    index = Index.load(saved)
    index.remove([0])
    index.save(saved)
    assert len(list(saved.iterdir())) == 5
    assert len(Index.load(saved)) == len(trained_index) - 1


def test_failed_save_leaves_the_previous_index_intact(trained_index, saved,
                                                       monkeypatch):
    index = Index.load(saved)
    index.remove([0, 1, 2])
    real_write = storage._write_atomic
    # The vocabulary is unchanged, so its file is kept as it is; the database and
    # names files are written, then the manifest. Fail at each of them.
    for failing in ("database", "names", "index.json"):

        def failing_write(path, data, failing=failing):
            if path.name.startswith(failing):
                # a partial temporary file, as a full disk would leave it
                (path.parent / ".cvsearch-tmp-partial").write_bytes(data[:10])
                raise OSError(28, "No space left on device")
            real_write(path, data)

        monkeypatch.setattr(storage, "_write_atomic", failing_write)
        with pytest.raises(OSError, match="No space"):
            index.save(saved)
        monkeypatch.setattr(storage, "_write_atomic", real_write)
        assert Index.load(saved).names == trained_index.names
    index.save(saved)
    assert Index.load(saved).names.values() == trained_index.names.values()[3:]


def test_truncated_file_is_named(saved):
    path = data_file(saved, "database")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=path.name) as error:
        Index.load(saved)
    assert "truncated" in str(error.value)


def test_flipped_byte_is_detected(saved):
    path = data_file(saved, "vocabulary")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        Index.load(saved)


def test_wrong_version_names_both(saved):
    manifest = manifest_of(saved)
    manifest["format_version"] = 99
    (saved / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"format_version 99.*format_version 2"):
        Index.load(saved)


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"format": "other"}'])
def test_bad_manifest(saved, content):
    (saved / "index.json").write_bytes(content)
    with pytest.raises(ValueError, match="index.json"):
        Index.load(saved)


def test_missing_pieces(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-index"):
        Index.load(tmp_path / "no-such-index")
    with pytest.raises(FileNotFoundError, match="index.json"):
        Index.load(tmp_path)
    path = data_file(saved, "names")
    path.unlink()
    with pytest.raises(ValueError, match=f"{path.name}: this index data file is missing"):
        Index.load(saved)


def test_consistent_but_hostile_arrays_are_rejected(saved):
    with np.load(data_file(saved, "database"), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    bad = dict(arrays, words=arrays["words"] + 10**6)
    buffer = io.BytesIO()
    np.savez(buffer, **bad)
    rewrite(saved, "database", buffer.getvalue())
    with pytest.raises(ValueError, match="word ids"):
        Index.load(saved)
    bad = dict(arrays, offsets=arrays["offsets"][::-1].copy())
    buffer = io.BytesIO()
    np.savez(buffer, **bad)
    rewrite(saved, "database", buffer.getvalue())
    with pytest.raises(ValueError, match="offsets"):
        Index.load(saved)


def test_pickled_array_is_never_loaded(saved):
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array([object()], dtype=object))
    rewrite(saved, "database", buffer.getvalue())
    with pytest.raises(ValueError, match="dtype object, expected int64"):
        Index.load(saved)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "hello")
    rewrite(saved, "vocabulary", buffer.getvalue())
    with pytest.raises(ValueError, match="lacks the array"):
        Index.load(saved)


def test_mismatched_names_count(saved):
    rewrite(saved, "names", json.dumps(["a", "b"]).encode())
    with pytest.raises(ValueError, match="ids are not 2 increasing ids"):
        Index.load(saved)


def test_save_untrained_raises(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Index(n_words=10).save(tmp_path / "x")
