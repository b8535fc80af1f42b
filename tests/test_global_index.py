import json

import cv2
import numpy as np
import pytest
from conftest import warped

from cvsearch.global_index import GlobalIndex
from cvsearch.io import read_color_image
from cvsearch.projection import PCAProjection, TripletProjection


class Thumbnail:
    """A stand-in for the CNN: the image shrunk to 8 x 8 grey levels, centred
    and normalised (64 values). Unreadable files raise as the CNN's do."""

    def __repr__(self):
        return "Thumbnail()"

    def describe_many(self, images):
        out = []
        for image in images:
            grey = cv2.cvtColor(read_color_image(image), cv2.COLOR_BGR2GRAY)
            small = cv2.resize(grey, (8, 8), interpolation=cv2.INTER_AREA)
            v = small.astype(np.float32).ravel()
            v -= v.mean()
            out.append(v / max(np.linalg.norm(v), 1e-12))
        return np.array(out, np.float32).reshape(len(images), 64)


def unit_rows(rng, n, dim=32):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def index(image_files):
    return GlobalIndex.build(image_files, Thumbnail())


def test_each_image_finds_itself_and_a_warped_copy_finds_it(index, image_files,
                                                             images):
    for i, path in enumerate(image_files):
        scores, ids = index.query(path, k=3)
        assert ids[0] == i and scores[0] == pytest.approx(1.0, abs=1e-5)
        assert np.all(np.diff(scores) <= 0)
    scores, ids = index.query(warped(images[5], 4, 0.9)[0], k=3)
    assert index.names[ids[0]] == image_files[5]


def test_ids_are_stable_and_a_grown_index_answers_as_one_built_at_once(
        image_files, images):
    whole = GlobalIndex.build(image_files, Thumbnail())
    grown = GlobalIndex.build(image_files[:5], Thumbnail())
    assert grown.add(image_files[5:]) == []
    query = warped(images[7], 3, 0.95)[0]
    (whole_scores, whole_ids), (grown_scores, grown_ids) = (
        whole.query(query, k=12), grown.query(query, k=12))
    assert np.array_equal(whole_ids, grown_ids)
    assert np.allclose(whole_scores, grown_scores, atol=1e-6)
    grown.remove([image_files[7], 2])
    assert len(grown) == 10 and 7 not in grown.names and 2 not in grown.names
    assert grown.names[8] == image_files[8]  # not renumbered
    scores, ids = grown.query(query, k=12)
    assert len(ids) == 10 and not set(ids.tolist()) & {2, 7}
    before = grown.query(image_files[9], k=5)
    grown.compact()
    after = grown.query(image_files[9], k=5)
    assert np.array_equal(before[1], after[1])
    assert np.allclose(before[0], after[0], atol=1e-6)
    with pytest.raises(ValueError, match="no image with id 7"):
        grown.remove([7])
    assert len(grown) == 10  # an unknown id changes nothing


def test_unreadable_files_are_skipped_and_the_others_added(index, image_files,
                                                            tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    skipped = index.add([str(fake), image_files[0], str(tmp_path / "gone.png"),
                         image_files[1], image_files[1]],
                        names=["notes", image_files[0], "gone", "twice", "twice"])
    assert [s.name for s in skipped] == ["notes", "gone", image_files[0], "twice"]
    assert all("already in the index" in s.reason for s in skipped[2:])
    assert len(index) == 13 and index.names[12] == "twice"


def test_round_trip_is_identical_and_tampering_is_named(index, image_files, tmp_path):
    index.remove([3])
    index.save(tmp_path / "g")
    loaded = GlobalIndex.load(tmp_path / "g", Thumbnail())
    assert loaded.names.values() == index.names.values()
    (scores, ids), (loaded_scores, loaded_ids) = (
        index.query(image_files[4], k=11), loaded.query(image_files[4], k=11))
    assert np.array_equal(ids, loaded_ids)
    assert np.allclose(scores, loaded_scores, atol=1e-6)  # BLAS: last bits
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert all(n.endswith((".npy", ".json", ".npz")) or n.startswith(".cvsearch")
               for n in names)
    vectors = next((tmp_path / "g").glob("seg-vectors-*.npy"))
    data = bytearray(vectors.read_bytes())
    data[-5] ^= 0x40
    vectors.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{vectors.name}.*checksum"):
        GlobalIndex.load(tmp_path / "g", Thumbnail())
    assert len(GlobalIndex.load(tmp_path / "g", Thumbnail(), verify=False)) == 11


def test_a_describer_is_never_guessed_from_the_folder(index, image_files, tmp_path):
    """A folder says what described it, but no model file it names is opened:
    descriptors can be queried, images need the describer passed."""
    index.save(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / "index.json").read_text())
    assert manifest["describer"] == "Thumbnail()"
    loaded = GlobalIndex.load(tmp_path / "g")
    with pytest.raises(ValueError, match="described with Thumbnail"):
        loaded.query(image_files[0])
    descriptor = Thumbnail().describe_many([image_files[6]])[0]
    assert loaded.query(descriptor, k=1)[1][0] == 6
    loaded.save(tmp_path / "g")  # saved again, it still says what described it
    with pytest.raises(ValueError, match="described with Thumbnail"):
        GlobalIndex.load(tmp_path / "g").query(image_files[0])
    with pytest.raises(ValueError, match="NaN"):
        loaded.query(np.full(64, np.nan))


def test_a_second_writer_is_refused_rather_than_lost(index, tmp_path):
    index.save(tmp_path / "g")
    first = GlobalIndex.load(tmp_path / "g", Thumbnail())
    with GlobalIndex.updating(tmp_path / "g", Thumbnail()) as other:
        other.remove([0])
    first.remove([1])
    with pytest.raises(ValueError, match="changed since this index was loaded"):
        first.save(tmp_path / "g")
    assert 0 not in GlobalIndex.load(tmp_path / "g", Thumbnail()).names


def test_projections_are_fitted_by_build_stored_and_applied(image_files, tmp_path):
    pca = GlobalIndex.build(image_files, Thumbnail(), projection=PCAProjection(6))
    assert pca.dim == 6 and pca.query(image_files[2], k=1)[1][0] == 2
    pca.save(tmp_path / "pca")
    loaded = GlobalIndex.load(tmp_path / "pca", Thumbnail())
    assert np.array_equal(loaded.projection.weights_, pca.projection.weights_)
    assert np.allclose(loaded.query(image_files[2], k=4)[0],
                       pca.query(image_files[2], k=4)[0], atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        GlobalIndex.build(image_files, Thumbnail(), projection=TripletProjection(4))
    labels = np.arange(12) % 3
    triplet = GlobalIndex.build(image_files, Thumbnail(), labels=labels,
                                projection=TripletProjection(4, steps=20,
                                                             classes_per_batch=3))
    assert triplet.projection.fitted and triplet.dim == 4
    assert triplet.projection.hidden_weights_.shape == (64, 512)  # the default
    triplet.save(tmp_path / "triplet")
    loaded = GlobalIndex.load(tmp_path / "triplet", Thumbnail())
    for name in ("weights", "hidden_weights", "hidden_bias", "output_weights"):
        assert np.array_equal(getattr(loaded.projection, name + "_"),
                              getattr(triplet.projection, name + "_"))
    assert np.array_equal(loaded.query(image_files[1], k=12)[1],
                          triplet.query(image_files[1], k=12)[1])
    # a linear projection saved before the hidden layer existed (no such params)
    linear = TripletProjection(4, steps=20, classes_per_batch=3, hidden=0)
    old_params = {k: v for k, v in linear.get_params().items()
                  if k not in ("hidden", "similarity_weight", "averaging")}
    linear.fit(Thumbnail().describe_many(image_files), labels)
    copy = TripletProjection.from_state(old_params, linear.get_state())
    assert copy.hidden == 0 and np.array_equal(copy.transform(np.ones(64)),
                                               linear.transform(np.ones(64)))


@pytest.mark.parametrize("search", ["hnsw", "ivf"])
def test_approximate_search_finds_the_exact_neighbours_grows_and_forgets(search):
    pytest.importorskip("faiss", reason="search='hnsw'/'ivf' need faiss-cpu")
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, 3000)
    names = [f"v{i}" for i in range(3000)]
    exact = GlobalIndex(Thumbnail())
    # random directions are the hardest case for cells: search more of them
    approximate = GlobalIndex(Thumbnail(), search=search, candidates=100, n_probe=32)
    exact.add_descriptors(vectors[:2000], names[:2000])
    approximate.add_descriptors(vectors[:2000], names[:2000])
    queries = unit_rows(rng, 50)
    approximate.query(queries[0])  # built now: the next batch must join it
    built, before = approximate._approximate[1], approximate._state
    exact.add_descriptors(vectors[2000:], names[2000:])
    approximate.add_descriptors(vectors[2000:], names[2000:])
    approximate.query(queries[0])
    # a query that began before the add answers from its own state, from the
    # same (grown) searcher, never with the images added since
    _, ids = approximate._query_approximate(before, vectors[2500], 10)
    assert len(ids) == 10 and ids.max() < 2000
    found = 0
    for q in queries:
        ei, (as_, ai) = exact.query(q, k=10)[1], approximate.query(q, k=10)
        found += len(set(ei.tolist()) & set(ai.tolist()))
        assert np.allclose(as_, vectors[ai] @ q, atol=1e-6)  # exact cosines
        assert np.all(np.diff(as_) <= 0)
    assert approximate._approximate[1] is built and len(built) == 3000
    assert found / (10 * len(queries)) >= 0.9
    # the nearest neighbours of images of the second batch are themselves
    for i in (2000, 2500, 2999):
        assert approximate.query(vectors[i], k=1)[1][0] == i
    top = approximate.query(queries[0], k=3)[1]
    approximate.remove(top.tolist())
    assert not set(approximate.query(queries[0], k=10)[1].tolist()) & set(top.tolist())
    assert len(approximate.query(queries[0], k=3000)[1]) == 2997
    approximate.compact()
    assert approximate.query(vectors[5], k=1)[1][0] == 5


def test_the_approximate_search_is_saved_as_a_setting_and_annoy_loads_as_exact(
        index, image_files, tmp_path):
    pytest.importorskip("faiss", reason="search='hnsw' needs faiss-cpu")
    index.search = "hnsw"
    index.save(tmp_path / "g")
    loaded = GlobalIndex.load(tmp_path / "g", Thumbnail())
    assert loaded.search == "hnsw" and loaded.query(image_files[3], k=1)[1][0] == 3
    manifest_path = tmp_path / "g" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    # a folder written when OpenCV's Annoy was offered
    manifest["search"] = {"search": "annoy", "n_trees": 20, "candidates": 200}
    from cvsearch import storage

    storage.commit(tmp_path / "g", {k: v for k, v in manifest.items()
                                    if k != storage._CHECKSUM_KEY})
    old = GlobalIndex.load(tmp_path / "g", Thumbnail())
    assert old.search == "exact" and old.query(image_files[4], k=1)[1][0] == 4


def test_bad_input_is_refused_clearly(index):
    with pytest.raises(TypeError, match="wrap a single image"):
        index.add("one.jpg")
    with pytest.raises(ValueError, match="already in the index"):
        index.add_descriptors(np.ones((1, 64)), [index.names[0]])
    with pytest.raises(ValueError, match="64"):
        index.add_descriptors(np.ones((1, 5)), ["short"])
    with pytest.raises(ValueError, match="NaN"):
        index.add_descriptors(np.full((1, 64), np.nan), ["nan"])
    with pytest.raises(ValueError, match="search"):
        GlobalIndex(search="annoy")
    with pytest.raises(ValueError, match="no images"):
        GlobalIndex(Thumbnail()).query(np.ones(64))


@pytest.mark.parametrize("params", [[1, 2], {"dim": 4, "hidden": "x"},
                                    {"dim": 4, "hidden": 5}, {"dim": 5, "hidden": 3}])
def test_a_forged_projection_entry_is_refused_naming_the_manifest(params, tmp_path):
    from cvsearch import storage

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    projection = TripletProjection(4, steps=5, classes_per_batch=4, hidden=3)
    index = GlobalIndex(Thumbnail(), projection=projection.fit(x, np.arange(40) % 4))
    index.add_descriptors(x, [str(i) for i in range(40)])
    index.save(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / "index.json").read_text())
    manifest["projection"]["params"] = params
    storage.commit(tmp_path / "g", {k: v for k, v in manifest.items()
                                    if k != storage._CHECKSUM_KEY})
    with pytest.raises(ValueError, match="index.json"):
        GlobalIndex.load(tmp_path / "g", Thumbnail())
