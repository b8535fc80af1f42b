import logging
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from conftest import textured_image, warped
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import normalize

from cvsearch import FeatureExtractor, Index


@pytest.fixture(scope="module")
def fresh_index(image_files, tmp_path_factory):
    """Makes an index trained on the fixture's images, no image added: trained
    once (a fit takes seconds) and saved, each call loads it."""
    folder = tmp_path_factory.mktemp("trained") / "index"
    Index(FeatureExtractor("sift", max_side=1024), n_words=400,
          random_state=0).train(image_files).save(folder)
    return lambda: Index.load(folder)


@pytest.mark.parametrize("multiple", [True, False])
def test_a_querys_views_are_assigned_together_as_each_alone(fresh_index, images,
                                                            image_files, multiple):
    # A small query has four views (plain, mirrored, at twice its size, and that
    # mirrored): their descriptors are assigned in one search, and each view gets
    # exactly what a search of its own gives.
    from cvsearch.features import mirror_features
    from cvsearch.searcher import Ranking

    index = fresh_index()
    index.add(image_files[:2])
    features = index.extractor.extract(cv2.resize(images[3], (120, 90)), finer=True)
    assert len(features.descriptors) and len(features.finer.descriptors)
    searcher = index.searcher()
    views = searcher.views(features, Ranking(5, 10 if multiple else 0, 10, "shapes",
                                             True, 0, True))
    alone = [searcher.view(f, multiple, mirrored=mirrored, finer=finer)
             for f, mirrored, finer in [
                 (features, False, False), (mirror_features(features), True, False),
                 (features.finer, False, True),
                 (mirror_features(features.finer), True, True)]]
    assert len(views) == 4
    for together, apart in zip(views, alone):
        for a, b in zip(together, apart):
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
    words = [v.words for v in views]
    assert not np.array_equal(words[0], words[1])  # the mirror is a view of its own


def results(index, queries, k=12, rerank=0):
    out = []
    for q in queries:
        scores, ids, inliers = index.query(q, k=k, rerank=rerank, return_inliers=True)
        out.append(([index.names[i] for i in ids], scores, inliers))
    return out


def assert_same_results(a, b):
    for (names_a, scores_a, inl_a), (names_b, scores_b, inl_b) in zip(a, b):
        assert names_a == names_b
        assert np.array_equal(scores_a, scores_b)
        assert np.array_equal(inl_a, inl_b)


def test_every_image_finds_itself_first(trained_index, image_files):
    scores, ids = trained_index.query_batch(image_files, k=3)
    assert ids[:, 0].tolist() == list(range(len(image_files)))
    assert np.allclose(scores[:, 0], 1.0)
    assert np.all(scores[:, 1] < 0.8)


def test_sparse_scores_equal_dense_cosine_of_tfidf(trained_index, image_files):
    """Recompute tf-idf (counts ** tf_power, times idf) and the cosine densely from
    each image's words."""
    index = trained_index
    assert index.tf_power == 0.2  # the default damps repeated words
    n = len(index)
    counts = np.zeros((n, index.n_words))
    for i in range(n):
        words = index.vocabulary.predict(index.extractor.extract(image_files[i])[1])
        counts[i] = np.bincount(words, minlength=index.n_words)
    df = (counts > 0).sum(0)
    idf = np.where(df > 0, np.log(n / np.maximum(df, 1)), 0)
    db = normalize(counts ** index.tf_power * idf)
    query, _ = warped(textured_image(5), rotation=20)
    q_words = index.vocabulary.predict(index.extractor.extract(query)[1])
    q = normalize((np.bincount(q_words, minlength=index.n_words) ** index.tf_power
                   * idf)[None])
    scores, ids = index.query(query, k=n)
    dense = (q @ db.T)[0]
    assert np.allclose(scores, dense[ids], atol=1e-5)
    assert np.all(np.diff(scores) <= 0)


def test_add_in_two_steps_equals_add_at_once(image_files, fresh_index):
    queries = [warped(textured_image(s), 30, 0.8)[0] for s in (1, 7, 99)]
    once = fresh_index()
    once.add(image_files)
    twice = fresh_index()
    twice.add(image_files[:5])
    twice.add(image_files[5:])
    assert once.names == twice.names  # same ids, same names
    assert_same_results(results(once, queries, rerank=6), results(twice, queries, rerank=6))


def test_remove_equals_never_added(image_files, fresh_index):
    queries = [warped(textured_image(s), 30, 0.8)[0] for s in (2, 4, 99)]
    never = fresh_index()
    never.add([p for i, p in enumerate(image_files) if i not in (4, 9)])
    removed = fresh_index()
    removed.add(image_files)
    removed.remove([4, image_files[9]])  # by id and by name
    assert removed.names.values() == never.names.values()
    assert_same_results(results(never, queries, rerank=6),
                        results(removed, queries, rerank=6))


def test_remove_unknown_changes_nothing(image_files, fresh_index):
    index = fresh_index()
    index.add(image_files[:3])
    for bad, error in ([5], ValueError), (["missing"], ValueError), ([1.0], TypeError):
        with pytest.raises(error):
            index.remove([0] + bad)
        assert len(index) == 3
    index.remove(np.array([0]))
    assert index.names.values() == tuple(image_files[1:3])


def test_bad_files_are_skipped_reported_and_the_rest_indexed(image_files, tmp_path,
                                                              caplog, fresh_index):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(cv2.imencode(".jpg", textured_image(0))[1].tobytes()[:2000])
    bad = [str(tmp_path / "missing.jpg"), str(empty), str(text), str(truncated),
           str(tmp_path)]
    index = fresh_index()
    with caplog.at_level(logging.WARNING, logger="cvsearch"):
        skipped = index.add(image_files[:2] + bad + image_files[2:4])
    assert [s.name for s in skipped] == bad
    assert "0 bytes" in skipped[1].reason and "directory" in skipped[4].reason
    assert index.names.values() == tuple(image_files[:4])
    for path in bad:
        assert path in caplog.text
    # the same names again are skipped as duplicates, nothing changes
    skipped = index.add(image_files[:1])
    assert "already" in skipped[0].reason and len(index) == 4


def test_bad_query_files_name_the_file(trained_index, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        trained_index.query(tmp_path / "nothere.jpg")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match="zero.png"):
        trained_index.query(tmp_path / "zero.png")
    with pytest.raises(ValueError, match="directory"):
        trained_index.query(tmp_path)


def test_blank_images_are_added_and_blank_queries_work(image_files, caplog, fresh_index):
    index = fresh_index()
    blank = np.full((200, 300), 17, np.uint8)
    with caplog.at_level(logging.WARNING, logger="cvsearch"):
        index.add([blank] + image_files[:3], names=["blank"] + image_files[:3])
    assert "no keypoints" in caplog.text and len(index) == 4
    scores, ids = index.query(blank, k=4)
    assert np.all(scores == 0) and ids.tolist() == [0, 1, 2, 3]
    scores, ids = index.query(image_files[1], k=4, rerank=4)
    assert ids[0] == 2 and scores[ids.tolist().index(0)] == 0


@pytest.mark.parametrize("convert", [
    lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGR),
    lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGRA),
    lambda g: g.astype(np.uint16) * 257,
], ids=["bgr", "bgra", "uint16"])
def test_colour_and_16_bit_queries(trained_index, images, convert):
    assert_same_results(results(trained_index, [images[6]], rerank=3),
                        results(trained_index, [convert(images[6])], rerank=3))


def test_argument_errors(trained_index, image_files, images, fresh_index):
    with pytest.raises(ValueError, match="k=0"):
        trained_index.query(images[0], k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        trained_index.query(images[0], k="5")
    with pytest.raises(ValueError, match="rerank=-1"):
        trained_index.query(images[0], rerank=-1)
    with pytest.raises(ValueError, match="n_words=1"):
        Index(n_words=1)
    with pytest.raises(TypeError, match="FeatureExtractor"):
        Index("sift")
    with pytest.raises(TypeError, match="list"):
        trained_index.add(image_files[0])
    with pytest.raises(ValueError, match="names="):
        fresh_index().add([images[0]])
    with pytest.raises(TypeError, match="dtype"):
        trained_index.query(images[0].astype(np.float64))


def test_untrained_empty_and_too_small(image_files):
    index = Index(FeatureExtractor("sift"), n_words=400)
    with pytest.raises(NotFittedError, match="train"):
        index.query(image_files[0])
    with pytest.raises(NotFittedError):
        index.add(image_files)
    with pytest.raises(ValueError, match=r"training descriptors, need >= n_words=5000"):
        Index(n_words=5000).train(image_files[:2])
    index.train(image_files)
    with pytest.raises(ValueError, match="no images"):
        index.query(image_files[0])
    index.add(image_files[:1])
    with pytest.raises(ValueError, match="retrain"):
        index.train(image_files)


def test_k_larger_than_the_index(trained_index, images):
    scores, ids = trained_index.query(images[0], k=50)
    assert len(ids) == len(trained_index) == len(set(ids.tolist()))
    scores, ids = trained_index.query_batch([images[0]], k=15)
    assert ids.shape == (1, 15) and ids[0, 12:].tolist() == [-1, -1, -1]
    assert np.all(scores[0, 12:] == -np.inf)


def test_concurrent_queries_equal_serial(trained_index, images):
    queries = [warped(images[i], 15 * i, 0.7 + 0.1 * i)[0] for i in range(8)]
    serial = results(trained_index, queries, k=5, rerank=6)
    found = [None] * len(queries)

    def work(i):
        found[i] = results(trained_index, [queries[i]], k=5, rerank=6)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_same_results(serial, found)


def test_precomputed_features_answer_like_the_image(trained_index):
    query, _ = warped(textured_image(3), rotation=30, scale=0.8)
    features = trained_index.extractor.extract(query)
    by_image = trained_index.query(query, k=5, rerank=5, return_inliers=True)
    by_features = trained_index.query(features, k=5, rerank=5, return_inliers=True)
    for a, b in zip(by_image, by_features):
        assert np.array_equal(a, b)
    assert by_features[1][0] == 3


def test_parallel_extraction_gives_the_serial_results(image_files):
    calls = []
    serial = Index.build(image_files, FeatureExtractor("sift", max_side=1024),
                         n_words=300, random_state=0, n_jobs=1)
    parallel = Index.build(image_files, FeatureExtractor("sift", max_side=1024),
                           n_words=300, random_state=0, n_jobs=2,
                           progress=lambda *args: calls.append(args))
    assert np.array_equal(serial.vocabulary.centers_, parallel.vocabulary.centers_)
    queries = [warped(textured_image(s), rotation=10)[0] for s in (1, 7)]
    assert_same_results(results(serial, queries, rerank=5),
                        results(parallel, queries, rerank=5))
    # progress: the training pass, then every image added, counts rising to the total
    stages = [c[0] for c in calls]
    assert stages[0] == "train" and stages[-1] == "add"
    adds = [c[1] for c in calls if c[0] == "add"]
    assert adds == sorted(adds) and adds[-1] == len(image_files)
    again = Index(FeatureExtractor("sift", max_side=1024), n_words=300, random_state=0)
    again.vocabulary = serial.vocabulary
    assert again.add(image_files, n_jobs=2) == []
    assert_same_results(results(serial, queries), results(again, queries))


def test_build_trains_on_a_bounded_random_subset(image_files):
    index = Index.build(image_files, FeatureExtractor("sift", max_side=1024),
                        n_words=200, random_state=0, train_images=5)
    assert len(index) == len(image_files)
    scores, ids = index.query_batch(image_files, k=1)
    assert ids[:, 0].tolist() == list(range(len(image_files)))
    with pytest.raises(ValueError, match="n_jobs"):
        index.add(image_files, n_jobs=0)


def test_power_and_pyramid_options_survive_save_and_load(trained_index, image_files,
                                                         tmp_path):
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400,
                  random_state=0, power=0.5, pyramid_levels=2, tf_power=0.3)
    index.vocabulary = trained_index.vocabulary
    index.add(image_files)
    query = warped(textured_image(4), rotation=5)[0]
    before = index.query(query, k=5)
    assert before[1][0] == 4
    # the options change the scores
    assert not np.allclose(before[0], trained_index.query(query, k=5)[0])
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert loaded.weighting == {"power": 0.5, "tf_power": 0.3, "pyramid_levels": 2}
    for a, b in zip(before, loaded.query(query, k=5)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="power"):
        Index(power=0)
    with pytest.raises(ValueError, match="pyramid_levels"):
        Index(pyramid_levels=9)
    # the refusal of a huge one must not count its cells (it took forever)
    done = subprocess.run([sys.executable, "-c", (
        "from cvsearch import Index\n"
        "try:\n    Index(pyramid_levels=10**9)\n"
        "except ValueError as error:\n    print(error)")],
        capture_output=True, text=True, timeout=120)
    assert "use at most 4" in done.stdout, done.stderr[-2000:]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="tf_power"):
            Index(tf_power=bad)


def test_similar_leaves_the_image_out_and_equals_a_query(trained_index, image_files):
    scores, ids, inliers = trained_index.similar(3, k=4, rerank=4, return_inliers=True)
    assert 3 not in ids.tolist() and len(ids) == 4
    q_scores, q_ids = trained_index.query(image_files[3], k=5)
    assert q_ids[0] == 3
    assert np.array_equal(q_ids[1:], trained_index.similar(3, k=4)[1])
    assert np.allclose(q_scores[1:], trained_index.similar(3, k=4)[0])
    assert len(trained_index.similar(0, k=50)[1]) == len(image_files) - 1
    with pytest.raises(ValueError, match="out of range"):
        trained_index.similar(99)


def test_vectors_give_the_query_scores(trained_index, image_files):
    vectors = trained_index.vectors()
    assert vectors.shape == (len(image_files), trained_index.n_words)
    scores, ids = trained_index.query(image_files[2], k=len(image_files))
    assert np.allclose((vectors[2] @ vectors.T).toarray()[0][ids], scores, atol=1e-6)
    assert trained_index.nbytes > vectors.data.nbytes


def test_matches_are_the_inliers_of_the_warp(trained_index, images):
    query, H = warped(images[6], rotation=25, scale=0.8)
    query_xy, db_xy = trained_index.matches(query, 6)
    assert len(query_xy) >= 30
    # the database points map to the query points through H
    mapped = cv2.perspectiveTransform(db_xy[None].astype(np.float64), H)[0]
    assert np.median(np.linalg.norm(mapped - query_xy, axis=1)) < 3


def test_reweighted_copy_shares_words_and_matches_a_fresh_index(trained_index,
                                                                image_files):
    copy = trained_index.reweighted(power=0.5, pyramid_levels=1, tf_power=0.3)
    fresh = Index(FeatureExtractor("sift", max_side=1024), n_words=400, power=0.5,
                  pyramid_levels=1, tf_power=0.3)
    fresh.vocabulary = trained_index.vocabulary
    fresh.add(image_files)
    query = warped(textured_image(2), rotation=5)[0]
    assert_same_results(results(copy, [query]), results(fresh, [query]))
    assert trained_index.power == 1.0 and trained_index.pyramid_levels == 0
    assert copy.tf_power == 0.3


def test_image_ids_of_similar_and_matches_are_checked(trained_index, images):
    for call in (lambda: trained_index.similar("3"),
                 lambda: trained_index.matches(images[0], "3"),
                 lambda: trained_index.matches(images[0], True)):
        with pytest.raises(TypeError, match="integer image id"):
            call()
    with pytest.raises(ValueError, match="out of range"):
        trained_index.matches(images[0], len(images))



def test_the_ids_inliers_verifies_are_checked_at_once(trained_index, images, tmp_path):
    # A short-list's ids are checked together, before the query is read: each
    # id's count is the one it gets alone, whatever the order and repeats, and
    # the first id that is not an image's is named.
    query, _ = warped(images[3], rotation=20)
    ids = [3, 0, 3, len(images) - 1, np.int64(1)]
    together = trained_index.inliers(query, ids)
    alone = [int(trained_index.inliers(query, [i])[0]) for i in ids]
    assert together.tolist() == alone and together[0] == together.max() >= 30
    assert trained_index.inliers(query, iter(ids)).tolist() == alone  # any iterable
    missing = tmp_path / "not there.png"  # the ids fail first, not the file
    for bad in ([0, len(images)], [-1], [2**70], [0, len(images) + 5, len(images)]):
        with pytest.raises(ValueError, match=f"id {bad[-1] if len(bad) == 1 else bad[1]} "
                                             "is out of range"):
            trained_index.inliers(missing, bad)
    for bad in ([0, "3"], [True], [1.0]):
        with pytest.raises(TypeError, match="integer"):
            trained_index.inliers(missing, bad)
    assert trained_index.inliers(query, []).tolist() == []

# ------------------------------------------- what shapes the data cannot drift
def test_setting_power_or_pyramid_reweights_the_stored_words(trained_index, image_files,
                                                             tmp_path):
    trained_index.save(tmp_path / "index")
    index = Index.load(tmp_path / "index")
    query = warped(textured_image(2), rotation=5)[0]
    index.query(query)  # weights computed, then changed below
    index.power, index.pyramid_levels = 0.5, 1
    expected = trained_index.reweighted(power=0.5, pyramid_levels=1)
    assert_same_results(results(index, [query]), results(expected, [query]))
    index.tf_power = 0.2
    assert_same_results(results(index, [query]), results(
        trained_index.reweighted(power=0.5, pyramid_levels=1, tf_power=0.2), [query]))
    with pytest.raises(ValueError, match="power"):
        index.power = 0


def test_extractor_and_vocabulary_cannot_change_under_stored_images(trained_index):
    with pytest.raises(AttributeError, match="immutable"):
        trained_index.extractor.max_side = 300
    with pytest.raises(ValueError, match="holds 12 images"):
        trained_index.extractor = FeatureExtractor("rootsift", max_side=1024)
    with pytest.raises(ValueError, match="holds 12 images"):
        trained_index.vocabulary = Index(n_words=10).vocabulary
    with pytest.raises(AttributeError, match="fitted"):
        trained_index.vocabulary.n_probe = 1
    assert trained_index.extractor.method == "sift"
    empty = Index(n_words=400)
    empty.extractor = FeatureExtractor("sift", max_side=1024)  # nothing stored yet
    empty.vocabulary = trained_index.vocabulary
    assert empty.vocabulary is trained_index.vocabulary


def test_training_never_refits_a_shared_vocabulary(trained_index, image_files):
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400, random_state=1)
    index.vocabulary = trained_index.vocabulary
    centers = trained_index.vocabulary.centers_.copy()
    index.train(image_files[:6])
    assert index.vocabulary is not trained_index.vocabulary
    assert np.array_equal(trained_index.vocabulary.centers_, centers)


def test_features_of_another_extractor_are_refused(trained_index, images):
    from cvsearch import Features

    mine = trained_index.extractor.extract(images[3])
    assert mine.extractor == trained_index.extractor.feature_params()
    assert trained_index.query(mine, k=1)[1][0] == 3
    other = FeatureExtractor("rootsift", max_side=1024).extract(images[3])
    smaller = FeatureExtractor("sift", max_side=300).extract(images[3])
    by_hand = Features(mine.keypoints, mine.descriptors, mine.image_shape)
    for features in (other, smaller, by_hand):
        with pytest.raises(ValueError, match="index.extractor.extract"):
            trained_index.query(features)
        index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
        index.vocabulary = trained_index.vocabulary
        with pytest.raises(ValueError, match="index.extractor.extract"):
            index.add([features], names=["x"])
        assert len(index) == 0
    # the read limits do not change features: features made under other limits fit
    roomy = FeatureExtractor("sift", max_side=1024, max_pixels=10**9)
    assert trained_index.query(roomy.extract(images[3]), k=1)[1][0] == 3


def test_reranked_scores_keep_their_bag_of_words_values(trained_index, images):
    query = warped(images[4], rotation=30, scale=0.7)[0]
    scores, ids, inliers = trained_index.query(query, k=5, rerank=5,
                                               return_inliers=True)
    plain_scores, plain_ids = trained_index.query(query, k=5)
    by_id = dict(zip(plain_ids.tolist(), plain_scores.tolist()))
    assert [by_id[i] for i in ids.tolist()] == scores.tolist()
    verified = inliers >= 20
    assert np.all(np.diff(inliers[verified]) <= 0)  # verified first, by inliers
    assert ids[0] == 4


def test_ids_are_stable_across_removals_and_compaction(trained_index, image_files,
                                                       tmp_path):
    trained_index.save(tmp_path / "index")
    index = Index.load(tmp_path / "index")
    query = warped(textured_image(9), rotation=10)[0]
    before = index.query(query, k=3)
    index.remove([0, 4, "" + image_files[5]])
    assert 4 not in index.names and index.names[9] == image_files[9]
    assert index.ids.tolist() == [i for i in range(12) if i not in (0, 4, 5)]
    after = index.query(query, k=3)
    assert after[1][0] == before[1][0] == 9  # the same id, not shifted
    with pytest.raises(ValueError, match="no image with id 4"):
        index.remove([4])
    with pytest.raises(ValueError, match="out of range"):
        index.similar(4)
    index.compact()
    assert_same_results(results(index, [query], k=3), [(
        [index.names[i] for i in after[1]], after[0], np.full(3, -1))])
    index.add([image_files[0]], names=["again"])
    assert index.ids[-1] == 12  # ids are never reused
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert loaded.names == index.names and loaded.add(
        [image_files[4]], names=["later"]) == [] and loaded.ids[-1] == 13


def test_queries_during_adds_and_removes_return_only_true_names(trained_index,
                                                                 image_files, images):
    """Ids are never renumbered nor reused, so an id a query returns names the
    image indexed under it, or (removed since) nothing: never another image,
    whatever other threads add and remove meanwhile."""
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    index.add(image_files[:6])
    words = index.image_words(image_files)
    truth = dict(enumerate(image_files[:6]))  # id -> name, as each is added
    wrong, answered, stop = [], [0], threading.Event()

    def ask():
        while not stop.is_set():
            scores, ids = index.query(images[(answered[0] % 6)], k=6)
            answered[0] += 1
            for i in ids.tolist():
                name = index.names.get(i)
                if name is not None and name != truth[i]:
                    wrong.append((i, name))

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for thread in askers:
        thread.start()
    for r in range(20):
        truth[int(index._current().store.next_id)] = f"copy {r}"  # given next
        index.add([words[r % 6]], names=[f"copy {r}"])
        assert index.names[int(index.ids[-1])] == f"copy {r}"
        if r % 2:
            index.remove([f"copy {r - 1}", image_files[r // 2 % 6]])
            truth[int(index._current().store.next_id)] = image_files[r // 2 % 6]
            index.add([words[r // 2 % 6]], names=[image_files[r // 2 % 6]])
    stop.set()
    for thread in askers:
        thread.join()
    assert wrong == [] and answered[0] > 0


def test_queries_never_wait_for_a_writer(trained_index, image_files, monkeypatch):
    """A writer that takes long (here: held inside its merge step) does not hold
    queries up; they answer from the state before it, then see its images."""
    from cvsearch.store import Store

    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    index.add(image_files[:6])
    words = index.image_words(image_files[6:8])
    inside, release = threading.Event(), threading.Event()
    merge_tail = Store.merge_tail

    def slow_merge(self, *args, **kwargs):
        inside.set()
        assert release.wait(30)
        return merge_tail(self, *args, **kwargs)

    monkeypatch.setattr(Store, "merge_tail", slow_merge)
    writer = threading.Thread(target=index.add, args=(words,),
                              kwargs={"names": ["late 1", "late 2"]})
    writer.start()
    assert inside.wait(30)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(index.query(words[0], k=8)))
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "a query waited for the writer"
    assert sorted(answer[0][1].tolist()) == list(range(6))  # the state before
    release.set()
    writer.join(30)
    assert index.query(words[0], k=1)[1].tolist() == [6]


def test_single_image_adds_merge_into_few_segments(trained_index, image_files):
    """Added one at a time, images do not pile up one segment each: the log merge
    policy merges ten small segments into one, and answers do not change."""
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    words = index.image_words(image_files)
    at_once = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    at_once.vocabulary = trained_index.vocabulary
    names = [f"image {i}" for i in range(31)]
    at_once.add([words[i % 12] for i in range(31)], names=names)
    for i in range(31):
        index.add([words[i % 12]], names=[names[i]])
    # 10 singles -> one of 10; then 10 more, 10 more: [10, 10, 10, 1]
    assert index.n_segments == 4
    for w in words[:4]:
        a, b = index.query(w, k=31), at_once.query(w, k=31)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_warm_up_prepares_the_first_query(trained_index, tmp_path):
    """After warm_up, the first query of a loaded index computes no norms: the
    norms of the state are already there (the same state answers the same)."""
    trained_index.save(tmp_path / "index")
    index = Index.load(tmp_path / "index")
    store = index._current().store
    assert store._weights is None  # loading computes nothing
    assert index.warm_up() is index and store._weights is not None
    before = store._weights
    index.query(textured_image(3), k=2)
    assert index._current().store._weights is before


def test_changes_in_a_row_cost_their_own_images_not_the_index(trained_index,
                                                               image_files,
                                                               monkeypatch):
    """Adds and removes publish their state without its idf and norms (a pass over
    every posting of the index): a run of changes computes none, and the first
    query computes them once, for the last state only, answering as an index
    built at once."""
    from cvsearch.store import Store

    words = trained_index.image_words(image_files)
    computed = []
    norms_of = Store._norms
    monkeypatch.setattr(Store, "_norms", lambda store, *a: (
        computed.append(store), norms_of(store, *a))[1])
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    for i in range(0, 12, 3):
        index.add(words[i:i + 3], names=[f"image {j}" for j in range(i, i + 3)])
    index.remove(["image 4"])
    assert computed == []
    assert index._current().store._weights is None
    scores, ids = index.query(words[0], k=12)
    final = index._current().store
    assert len(final.segments) > 1 and computed == [final] * len(final.segments)
    at_once = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    at_once.vocabulary = trained_index.vocabulary
    at_once.add(words, names=[f"image {j}" for j in range(12)])
    at_once.remove(["image 4"])
    expected = at_once.query(words[0], k=12)
    assert np.array_equal(scores, expected[0]) and np.array_equal(ids, expected[1])


@pytest.mark.parametrize("bounded", [False, True])
def test_warm_changes_publishes_each_state_with_its_norms(trained_index, image_files,
                                                          monkeypatch, bounded):
    """With warm_changes (what the service sets), an add's state is visible only
    with its idf and norms computed (or bounds on the norms from the state
    before, where they cost less: at a large scale), so a query beside it never
    computes them."""
    from cvsearch import store as store_module

    if bounded:
        monkeypatch.setattr(store_module, "BOUND_SEGMENT_COST", 0)
        monkeypatch.setattr(store_module, "BOUND_ROW_COST", 0)
        monkeypatch.setattr(store_module, "BOUND_READ_COST", 0)
    words = trained_index.image_words(image_files[:4])
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    assert index.warm_changes is False
    index.warm_changes = True
    for i in range(4):
        index.add([words[i]], names=[f"image {i}"])
        store = index._current().store
        assert store._weights is not None or store._plan
    assert bool(store._plan) == bounded  # from the state before
    index.remove([0])
    store = index._current().store
    assert store._weights is not None or store._plan


def test_a_chunk_is_prepared_before_any_image_is_described(image_files, tmp_path,
                                                           monkeypatch):
    from cvsearch.features import PreparedImage
    from cvsearch.parallel import SkippedImage, extract_chunk

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a whole JPEG")
    extractor = FeatureExtractor("sift", max_side=300)
    inputs = [image_files[0], str(broken), cv2.imread(image_files[1]),
              extractor.extract(image_files[2])]
    expected = [extractor.extract(inputs[0]), None, extractor.extract(inputs[2]),
                inputs[3]]
    calls = []
    prepare, extract = FeatureExtractor.prepare, FeatureExtractor.extract

    def logged_prepare(self, image):
        calls.append("prepare")
        return prepare(self, image)

    def logged_extract(self, image, finer=False):
        calls.append("extract" if isinstance(image, PreparedImage) else "unprepared")
        return extract(self, image, finer)

    monkeypatch.setattr(FeatureExtractor, "prepare", logged_prepare)
    monkeypatch.setattr(FeatureExtractor, "extract", logged_extract)
    items = extract_chunk(extractor, None, inputs, ["a", "b", "c", "d"])
    # the path, the broken file and the array prepared, then the two described
    assert calls == ["prepare"] * 3 + ["extract"] * 2
    assert isinstance(items[1], SkippedImage) and items[1].name == "b"
    assert "broken.jpg" in items[1].reason
    for item, wanted in zip(items, expected):
        if wanted is not None:
            assert np.array_equal(item.keypoints, wanted.keypoints)
            assert np.array_equal(item.descriptors, wanted.descriptors)


WARM_UP_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import textured_image, warped
from cvsearch import FeatureExtractor, Index, _compiled, _simd, rerank, store

# what a large index compiles (this one is small): the scan of the words, the
# scoring loops, the verification's
store.COMPILED_FROM = store.COMPILED_KEYPOINTS = rerank.COMPILED_KEYPOINTS = 1

def compiled_so_far():
    loops = [d for d in _compiled._COMPILED.values() if d is not None]
    loops += [v for v in vars(_simd).values() if hasattr(v, "signatures")]
    return {repr(d): len(d.signatures) for d in loops}

images = [textured_image(seed) for seed in range(40)]
index = Index(FeatureExtractor("sift"), n_words=200, random_state=0,
              exact_below=0)
index.train(images[:8]).add(images, names=[str(i) for i in range(40)])
index.warm_up()
before = compiled_so_far()
query = index.extractor.extract(warped(images[3], rotation=20)[0], finer=True)
scores, ids, evidence = index.query(query, k=10, rerank=40, return_evidence=True)
new = {k: v for k, v in compiled_so_far().items() if v > before.get(k, 0)}
assert ids[0] == 3, ids
assert any(before.values()), "warm_up compiled nothing"
assert not new, f"the first search compiled {sorted(new)}"
print("ok")
"""


def test_warm_up_compiles_the_loops_a_search_runs(tmp_path):
    """numba compiles each loop at its first call (seconds on a fresh install, and
    a service's first searches waited 12-15 s, one-off, in benchmarks/serve.py): after
    warm_up, a search compiles nothing (a fresh numba cache, in a new process)."""
    pytest.importorskip("numba", reason="the loops are compiled with the 'fast' extra")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, tests], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_failed_warm_up_search_is_logged_and_the_index_still_served(
        trained_index, tmp_path, monkeypatch, caplog):
    """The synthetic search only compiles loops: if it fails, warm_up says so and
    returns the index, its norms computed, rather than stop a service starting."""
    import cvsearch.index as index_module

    trained_index.save(tmp_path / "index")
    index = Index.load(tmp_path / "index")
    monkeypatch.setattr(index_module, "_WARMED", set())

    def failing(*args, **kwargs):
        raise RuntimeError("no such loop")

    monkeypatch.setattr(Index, "query", failing)
    with caplog.at_level(logging.WARNING, logger="cvsearch.index"):
        assert index.warm_up() is index
    assert index._current().store._weights is not None
    assert "warming up the search" in caplog.text and "no such loop" in caplog.text
