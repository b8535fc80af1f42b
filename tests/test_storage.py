import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from conftest import warped
from test_index import assert_same_results, results

from cvsearch import Index, Vocabulary, storage


@pytest.fixture
def saved(trained_index, tmp_path):
    directory = tmp_path / "index"
    trained_index.save(directory)
    return directory


def manifest_of(directory):
    return json.loads((directory / "index.json").read_text())


def entry_of(manifest, key):
    """The manifest entry of "vocabulary", "names" or "seg-<array>" (of the first
    segment)."""
    if key == "vocabulary":
        return manifest["files"]["vocabulary"]
    segment = manifest["segments"][0]
    return segment["names"] if key == "names" else segment["files"][key[4:]]


def data_file(directory, key):
    return directory / entry_of(manifest_of(directory), key)["name"]


def rewrite(directory, key, data: bytes):
    """Replace a data file and fix its checksum, as a careful attacker would."""
    manifest = manifest_of(directory)
    data_file(directory, key).write_bytes(data)
    entry_of(manifest, key).update(sha256=hashlib.sha256(data).hexdigest(),
                                   bytes=len(data))
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (directory / "index.json").write_text(json.dumps(manifest))


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


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
    # the manifest, the vocabulary, and one segment: 10 arrays and the names
    assert "index.json" in names and len(names) == 14
    assert sum(n.startswith("seg-") for n in names) == 10
    for path in saved.glob("*.npz"):
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                assert archive[key].dtype != object
    for path in saved.glob("*.npy"):
        assert np.load(path, allow_pickle=False).dtype != object
    assert manifest_of(saved)["format_version"] == 2


def test_load_maps_the_segments_and_saves_only_what_changed(trained_index, saved,
                                                            image_files):
    index = Index.load(saved)
    assert isinstance(index._current().store.segments[0].post_rows, np.memmap)
    before = {p.name: p.stat().st_mtime_ns for p in saved.glob("seg-*")}
    index.add([image_files[0]], names=["one more"])
    index.remove([3])
    index.save(saved)
    after = {p.name: p.stat().st_mtime_ns for p in saved.glob("seg-*")}
    assert all(after[name] == mtime for name, mtime in before.items())  # untouched
    assert len(after) == 20  # the new segment's 10 arrays
    assert len(list(saved.glob("deleted-*.npy"))) == 1
    loaded = Index.load(saved)
    assert loaded.names == index.names and 3 not in loaded.names


def test_a_load_given_the_previous_index_reads_only_what_changed(
        trained_index, saved, image_files, images, monkeypatch):
    """A reader reloading after another process's save (as Lucene's
    openIfChanged): the vocabulary and the segments the folder still holds are
    the previous load's objects, neither read nor hashed again; the rest is
    checked as always, and the index answers as a fresh load of the folder."""
    first = Index.load(saved)
    writer = Index.load(saved)
    writer.add([image_files[0]], names=["one more"])
    writer.remove([3])
    writer.save(saved)
    old_files = {e["name"] for e in manifest_of(saved)["segments"][0]["files"].values()}
    hashed, vocabularies_read = [], []
    real_hash, real_npz = storage.sha256_files, storage.load_npz
    monkeypatch.setattr(storage, "sha256_files",
                        lambda d, names: hashed.extend(names) or real_hash(d, names))
    monkeypatch.setattr(storage, "load_npz", lambda *a: vocabularies_read.append(a)
                        or real_npz(*a))
    again = Index.load(saved, previous=first)
    assert again.vocabulary is first.vocabulary and not vocabularies_read
    old, new = first._current().store.segments, again._current().store.segments
    assert len(new) == 2 and new[0] is old[0] and new[1] is not old[0]
    assert hashed and not old_files & set(hashed)  # the new segment's files only
    monkeypatch.undo()
    fresh = Index.load(saved)
    assert again.names == fresh.names and 3 not in again.names
    queries = [warped(images[i], 25, 0.9)[0] for i in (0, 5)]
    assert_same_results(results(again, queries, rerank=8),
                        results(fresh, queries, rerank=8))


@pytest.mark.parametrize("reweighted", [False, True])
def test_a_reload_bounds_the_norms_of_the_segments_it_shares(
        trained_index, saved, image_files, images, monkeypatch, reweighted):
    """A reader whose state's norms were computed reloads after another
    process's add and removal: the segments it shares keep their sums of
    squares, so the new state bounds their norms instead of a pass over every
    posting (each query computes only those that can reach its best), and
    answers as a fresh load to the bit. Saved under another tf_power, the same
    segments weigh otherwise: nothing is carried over, and the pass runs."""
    from cvsearch import store as store_module

    # small segments: bounds used, and exact norms computed row by row, as at
    # a large scale
    monkeypatch.setattr(store_module, "BOUND_SEGMENT_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_ROW_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_READ_COST", 0)
    monkeypatch.setattr(store_module, "EXACT_ROWS_SHARE", 1.0)
    first = Index.load(saved).warm_up()
    writer = Index.load(saved)
    writer.add([image_files[0]], names=["one more"])
    writer.remove([3])
    if reweighted:
        writer.tf_power = 0.5
    writer.save(saved)
    again = Index.load(saved, previous=first).warm_up()
    store = again._current().store
    assert store.segments[0] is first._current().store.segments[0]
    assert (store._weights is not None) == reweighted
    assert bool(store._plan) != reweighted
    fresh = Index.load(saved)
    queries = [warped(images[i], 25, 0.9)[0] for i in (0, 5)]
    assert_same_results(results(again, queries, rerank=8),
                        results(fresh, queries, rerank=8))


def test_a_reload_finds_every_name_after_merges_and_removals(trained_index, saved,
                                                              image_files):
    """The reader's table from names to ids, carried over from its previous
    state where the folder only added segments, is the fresh load's: after
    single adds (whose small segments merge), and after a removal."""
    reader = Index.load(saved)
    writer = Index.load(saved)
    for round_ in range(12):  # ten one-image segments merge into one
        writer.add([image_files[round_ % len(image_files)]], names=[f"add-{round_}"])
        if round_ == 7:
            writer.remove([2, "add-3"])
        writer.save(saved)
        reader = Index.load(saved, previous=reader)
        fresh = Index.load(saved)
        assert {n: reader.id_of(n) for n in fresh.names.values()} == {
            n: fresh.id_of(n) for n in fresh.names.values()}
        assert len(reader) == len(fresh)
        for gone in ("add-3", trained_index.names[2]) if round_ >= 7 else ():
            with pytest.raises(KeyError):
                reader.id_of(gone)


def test_a_load_shares_nothing_with_an_index_of_another_folder_or_checked_less(
        trained_index, saved, tmp_path):
    """A copy of the folder is another folder: nothing shared; what is not an
    Index is refused. An index loaded without verify was not hashed, so a
    verified load checks every file again and names a changed byte (here one the
    unverified load's mapping sees too)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    first = Index.load(saved)
    assert Index.load(copy, previous=first).vocabulary is not first.vocabulary
    with pytest.raises(TypeError, match="previous must be an Index"):
        Index.load(saved, previous=str(saved))
    unverified = Index.load(saved, verify=False)
    path = data_file(saved, "seg-post_tf")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one count changed by one: structurally valid
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=path.name):
        Index.load(saved, previous=unverified)


def test_saving_again_where_the_vocabulary_is_writes_it_not_again(
        trained_index, saved, image_files, tmp_path, monkeypatch):
    """The vocabulary (megabytes at 20,000 words) never changes under an index:
    a save into a folder that holds it already neither serialises nor hashes it
    again (a service saves after every add); into another folder it is written."""
    index = Index.load(saved)
    index.add([image_files[0]], names=["one more"])
    serialised = []
    real = storage.npz_bytes
    monkeypatch.setattr(storage, "npz_bytes", lambda a: serialised.append(1) or real(a))
    index.save(saved)
    assert not serialised
    index.save(tmp_path / "elsewhere")
    assert len(serialised) == 1
    for folder in (saved, tmp_path / "elsewhere"):
        assert Index.load(folder).names == index.names


def test_resave_removes_stale_files(trained_index, saved, image_files):
    index = Index.load(saved)
    index.remove([0])
    index.save(saved)  # a tombstone file; the segment stays
    assert len(list(saved.iterdir())) == 15
    index.compact()
    index.save(saved)  # one new segment; the old one's files go
    assert len(list(saved.iterdir())) == 14
    assert len(Index.load(saved)) == len(trained_index) - 1


def test_failed_save_leaves_the_previous_index_intact(trained_index, saved,
                                                       image_files, monkeypatch):
    index = Index.load(saved)
    index.remove([0, 1, 2])
    index.add([image_files[0]], names=["new"])
    real_write = storage._write_atomic
    # The vocabulary and the first segment are in the folder already; the new
    # segment's arrays and names, the tombstones, then the manifest are written.
    # Fail at each of them.
    for failing in ("seg-ids", "seg-post_tf", "names", "deleted", "index.json"):

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
    assert Index.load(saved).names.values() == trained_index.names.values()[3:] + (
        "new",)


def test_truncated_file_is_named(saved):
    for key in ("seg-post_rows", "names"):
        path = data_file(saved, key)
        data = path.read_bytes()
        path.write_bytes(data[:-7])
        with pytest.raises(ValueError, match=path.name) as error:
            Index.load(saved)
        assert "truncated" in str(error.value)
        path.write_bytes(data)


def test_flipped_byte_is_detected(saved):
    path = data_file(saved, "vocabulary")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        Index.load(saved)


def test_keypoint_arrays_are_hashed_before_their_first_use(trained_index, saved,
                                                           images):
    """Load hashes what scoring reads; a segment's keypoint arrays are hashed
    the first time re-ranking, removing or merging reads them: a changed byte there fails
    every use of them, names the file, and changes nothing."""
    path = data_file(saved, "seg-kp_xy")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one position moved by one unit: structurally valid
    path.write_bytes(bytes(data))
    loaded = Index.load(saved)  # the manifest and scoring arrays are intact
    query = warped(images[2], 15, 0.9)[0]
    assert_same_results(results(trained_index, [query]), results(loaded, [query]))
    for _ in range(2):  # a failed check is not forgotten
        with pytest.raises(ValueError, match=f"{path.name}.*checksum"):
            loaded.query(query, k=3, rerank=5)
    with pytest.raises(ValueError, match=path.name):
        loaded.check_integrity()
    with pytest.raises(ValueError, match=path.name):
        loaded.remove([0])  # its words' counts are read back: nothing is changed
    assert loaded.names == trained_index.names
    with pytest.raises(ValueError, match=path.name):  # nor copied under a new hash
        loaded.save(saved.parent / "copy")
    assert not (saved.parent / "copy" / "index.json").exists()


def test_keypoint_arrays_checked_later_are_those_mapped_at_load(trained_index,
                                                                saved, images):
    """The deferred hash covers the mapped bytes, not the path: a save by
    another writer that replaces the files in between does not break it."""
    loaded = Index.load(saved)
    for path in saved.glob("seg-kp_*"):
        path.unlink()  # as a compacting writer removes the files it replaced
    query = warped(images[4], -20, 0.85)[0]
    assert_same_results(results(trained_index, [query], rerank=8),
                        results(loaded, [query], rerank=8))
    loaded.check_integrity()


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


def test_missing_pieces(saved, tmp_path, monkeypatch):
    # a missing file is reported after one more reading, not after the 2.5 s a
    # reader waits for a folder being replaced (tests/test_writers.py)
    monkeypatch.setattr(storage, "LOAD_ATTEMPTS", 2)
    with pytest.raises(FileNotFoundError, match="no-such-index"):
        Index.load(tmp_path / "no-such-index")
    with pytest.raises(FileNotFoundError, match="index.json"):
        Index.load(tmp_path)
    path = data_file(saved, "names")
    path.unlink()
    with pytest.raises(ValueError, match=f"{path.name}: this index data file is missing"):
        Index.load(saved)


@pytest.mark.parametrize("entry", [None, "vocabulary.npz", {"name": 3}])
def test_a_malformed_vocabulary_entry_is_named(trained_index, saved, entry):
    """A manifest whose checksum holds but whose vocabulary entry is missing or
    malformed is refused with a ValueError naming it, also when a previous load
    of the folder could lend its vocabulary."""
    previous = Index.load(saved)
    manifest = manifest_of(saved)
    if entry is None:
        del manifest["files"]["vocabulary"]
    else:
        manifest["files"]["vocabulary"] = entry
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (saved / "index.json").write_text(json.dumps(manifest))
    for given in (None, previous):
        with pytest.raises(ValueError, match="vocabulary"):
            Index.load(saved, previous=given)


def test_consistent_but_hostile_arrays_are_rejected(saved, images):
    words = np.load(data_file(saved, "seg-kp_words"))
    rewrite(saved, "seg-kp_words", npy(words.astype(np.uint32) + 10**6))
    # keypoint words are range-checked with their hash, before their first use
    loaded = Index.load(saved)
    with pytest.raises(ValueError, match="word ids"):
        loaded.check_integrity()
    with pytest.raises(ValueError, match="word ids"):
        loaded.query(images[0], k=3, rerank=5)
    # verify=False skips the range checks of the large arrays, as documented
    assert len(Index.load(saved, verify=False)) == 12
    rewrite(saved, "seg-kp_words", npy(words))
    offsets = np.load(data_file(saved, "seg-kp_offsets"))
    rewrite(saved, "seg-kp_offsets", npy(offsets[::-1].copy()))
    for verify in (True, False):  # structure is always checked
        with pytest.raises(ValueError, match="keypoint offsets"):
            Index.load(saved, verify=verify)
    rewrite(saved, "seg-kp_offsets", npy(offsets))
    shapes = np.load(data_file(saved, "seg-kp_shape"))
    rewrite(saved, "seg-kp_shape", npy(shapes[:-1].copy()))
    for verify in (True, False):
        with pytest.raises(ValueError, match="keypoint shapes"):
            Index.load(saved, verify=verify)


def saved_without(saved, array: str) -> Index:
    """The saved index as an earlier version wrote it, without each segment's
    ``array`` file (manifest and its digest rewritten), loaded."""
    manifest = manifest_of(saved)
    for segment in manifest["segments"]:
        (saved / segment["files"].pop(array)["name"]).unlink()
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (saved / "index.json").write_text(json.dumps(manifest))
    return Index.load(saved)


def test_an_index_saved_before_shapes_were_kept_verifies_with_ransac(
        trained_index, saved, images):
    """Indexes saved before keypoint shapes were kept have no such file: they
    load, and re-ranking verifies them by RANSAC, as it did."""
    loaded = saved_without(saved, "kp_shape")
    assert all(len(s.kp_shape) == 0 for s in loaded._current().store.segments)
    queries = [warped(images[i], 25, 0.8, 0.2)[0] for i in (0, 5)]
    old = [loaded.query(q, k=5, rerank=8, return_inliers=True) for q in queries]
    ransac = [trained_index.query(q, k=5, rerank=8, verification="ransac",
                                  return_inliers=True) for q in queries]
    for a, b in zip(old, ransac):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert old[0][2][0] >= 20  # verified


def test_an_index_saved_before_thumbnails_were_kept_decides_on_keypoints(
        trained_index, saved, images):
    """Indexes saved before thumbnails were kept load; their copy decision
    rests on coverage alone (agreement not measured), as it did; images added
    afterwards carry thumbnails, and compacting keeps both kinds."""
    loaded = saved_without(saved, "thumbs")
    assert all(len(s.thumbs) == 0 for s in loaded._current().store.segments)
    _, ids, old = loaded.query(images[0], k=3, rerank=8, return_evidence=True)
    _, _, new = trained_index.query(images[0], k=3, rerank=8, return_evidence=True)
    assert ids[0] == 0 and np.isnan(old.agreement).all() and old.kind[0] == "copy"
    assert new.agreement[0] >= 0.9 and list(new.kind) == list(old.kind)
    loaded.add([images[1]], names=["again"])
    loaded.compact()
    store = loaded.searcher().store
    assert store.thumbnail(0) is None
    assert np.array_equal(store.thumbnail(loaded.id_of("again")),
                          trained_index.searcher().store.thumbnail(1))


def test_pickled_array_is_never_loaded(saved):
    rewrite(saved, "seg-ids", npy(np.array([object()], dtype=object)))
    with pytest.raises(ValueError,
                       match="dtype object, expected uint8 or uint16 or uint32 or uint64"):
        Index.load(saved)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "hello")
    rewrite(saved, "vocabulary", buffer.getvalue())
    with pytest.raises(ValueError, match="lacks the array"):
        Index.load(saved)


def test_mismatched_names_count(saved):
    rewrite(saved, "names", json.dumps(["a", "b"]).encode())
    with pytest.raises(ValueError, match="ids are not 2 increasing ids, one per name"):
        Index.load(saved)


def test_save_untrained_raises(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Index(n_words=10).save(tmp_path / "x")


def test_an_index_saved_before_tf_power_loads_with_the_counts_as_they_were(
        trained_index, saved, images):
    # Manifests written before tf_power existed have no such key: their indexes
    # were weighted with the counts as they are, whatever the default is now.
    manifest = manifest_of(saved)
    del manifest["weighting"]["tf_power"]
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (saved / "index.json").write_text(json.dumps(manifest))
    loaded = Index.load(saved)
    assert loaded.tf_power == 1.0 != trained_index.tf_power
    assert_same_results(results(loaded, images[:3]),
                        results(trained_index.reweighted(tf_power=1.0), images[:3]))


def test_an_index_saved_before_the_shared_keypoint_budget_queries_as_it_was_built(
        image_files, images, tmp_path):
    # Manifests written before budget_grid and min_keypoints existed have no such
    # keys: their features kept the strongest keypoints anywhere (1) at OpenCV's
    # contrast threshold only (0), whatever the defaults are now; a query must be
    # described the same way, or its words would not be the index's.
    from cvsearch import FeatureExtractor

    built = Index.build(image_files[:6], FeatureExtractor("sift", max_keypoints=200,
                                                          budget_grid=1, min_keypoints=0),
                        n_words=100, random_state=0)
    built.save(tmp_path / "old")
    manifest = manifest_of(tmp_path / "old")
    del manifest["extractor"]["budget_grid"]
    del manifest["extractor"]["min_keypoints"]
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (tmp_path / "old" / "index.json").write_text(json.dumps(manifest))
    loaded = Index.load(tmp_path / "old")
    assert loaded.extractor == built.extractor
    assert loaded.extractor != FeatureExtractor("sift", max_keypoints=200)
    assert_same_results(results(loaded, images[:2]), results(built, images[:2]))


def test_an_index_saved_before_the_probe_ratio_searches_as_it_was_built(
        image_files, images, tmp_path):
    # Manifests written before probe_ratio existed have no such key: their words
    # came from exactly n_probe cells, whatever the default is now; a query must
    # be assigned the same way, or its words would not be the index's.
    from cvsearch import FeatureExtractor

    built = Index.build(image_files[:6], FeatureExtractor("sift", max_side=1024),
                        n_words=200, random_state=0, exact_below=0, n_probe=1,
                        probe_ratio=None)
    built.save(tmp_path / "old")
    manifest = manifest_of(tmp_path / "old")
    del manifest["vocabulary"]["probe_ratio"]
    manifest["manifest_sha256"] = storage.manifest_digest(manifest)
    (tmp_path / "old" / "index.json").write_text(json.dumps(manifest))
    loaded = Index.load(tmp_path / "old")
    assert loaded.vocabulary.probe_ratio is None
    descriptors = np.concatenate([built.extractor.extract(i).descriptors
                                  for i in image_files[6:9]])
    words = loaded.vocabulary.predict(descriptors)
    assert np.array_equal(words, built.vocabulary.predict(descriptors))
    ratio = Vocabulary.from_state({**built.vocabulary.get_params(), "probe_ratio": 1.45},
                                  built.vocabulary.get_state())
    assert not np.array_equal(words, ratio.predict(descriptors))  # the key matters
    assert_same_results(results(loaded, images[:2]), results(built, images[:2]))


def test_a_saved_vocabulary_keeps_its_n_probe_when_the_default_changes(
        image_files, tmp_path):
    # Indexes saved before n_probe's default went from 8 to 10 (and to 6 with a
    # probe ratio) must keep assigning words as they did when their images were
    # added, so the value is saved.
    from cvsearch import FeatureExtractor, Vocabulary

    assert (Vocabulary().n_probe, Vocabulary().probe_ratio) == (6, 1.45)
    index = Index.build(image_files[:6], FeatureExtractor("sift", max_side=1024),
                        n_words=200, random_state=0, exact_below=0, n_probe=2)
    index.save(tmp_path / "index")
    assert manifest_of(tmp_path / "index")["vocabulary"]["n_probe"] == 2
    loaded = Index.load(tmp_path / "index")
    assert loaded.vocabulary.n_probe == 2
    descriptors = index.extractor.extract(image_files[7]).descriptors
    assert np.array_equal(loaded.vocabulary.predict(descriptors),
                          index.vocabulary.predict(descriptors))
