import cv2
import numpy as np
import pytest
from conftest import warped
from hypothesis import given, settings
from hypothesis import strategies as st

from cvsearch.rerank import (
    count_inliers,
    reorder,
    similarity_inliers,
    word_correspondences,
)
from cvsearch.store import decode_shape, encode_shape


def test_word_correspondences_by_hand():
    query = np.array([5, 7, 7, 9, 1])
    db = np.array([7, 5, 3, 9, 9, 9, 9])
    q, d = word_correspondences(query, db, max_per_word=3)
    pairs = sorted(zip(q.tolist(), d.tolist()))
    # word 5: one pair; word 7: twice in the query, once in db: two pairs;
    # word 9 occurs 4 times in db (> 3): ignored; word 1: not in db.
    assert pairs == [(0, 1), (1, 0), (2, 0)]
    q, d = word_correspondences(query, db, max_per_word=1)
    assert sorted(zip(q.tolist(), d.tolist())) == [(0, 1)]
    q, d = word_correspondences(np.array([], int), db)
    assert len(q) == len(d) == 0


def test_count_inliers_finds_the_true_homography():
    rng = np.random.default_rng(0)
    H = np.array([[0.9, -0.3, 40], [0.25, 1.1, -10], [2e-4, 1e-4, 1]])
    points = rng.uniform(0, 500, (80, 2)).astype(np.float32)
    mapped = cv2.perspectiveTransform(points[None], H)[0]
    outliers = rng.uniform(0, 500, (120, 2)).astype(np.float32)
    n, mask = count_inliers(np.vstack([points, rng.uniform(0, 500, (120, 2))]),
                            np.vstack([mapped, outliers]))
    assert 80 <= n <= 84  # the 80 true pairs, and perhaps a lucky outlier
    assert mask[:80].all()
    assert count_inliers(points[:3], mapped[:3])[0] == 0


def test_reorder_moves_verified_up_and_keeps_the_rest_in_order():
    inliers = np.array([3, 50, 0, 50, 25, 1])
    assert reorder(inliers, min_inliers=20).tolist() == [1, 3, 4, 0, 2, 5]
    assert reorder(np.array([1, 2]), min_inliers=20).tolist() == [0, 1]


def test_reorder_counts_the_results_decided_as_verified():
    """A small crop's few inliers can be far beyond chance: decided the same
    object, it ranks with the verified, by its inliers, above the rest."""
    inliers = np.array([3, 50, 8, 12, 25, 1])
    decided = np.array([False, True, True, False, True, False])
    assert reorder(inliers, 20, decided).tolist() == [1, 4, 2, 0, 3, 5]
    assert reorder(inliers, 10, decided).tolist() == [1, 4, 3, 2, 0, 5]
    assert reorder(inliers, 20, np.zeros(6, bool)).tolist() == reorder(
        inliers, 20).tolist()


@pytest.mark.parametrize("verification", ["shapes", "ransac"])
@pytest.mark.parametrize("rotation, scale, perspective", [
    (45, 1.0, 0.0), (-45, 0.5, 0.0), (30, 2.0, 0.0), (45, 0.5, 0.3), (-20, 1.5, 0.4),
    (10, 1.0, 0.6)])
def test_warped_copy_ranks_first_with_most_inliers(trained_index, images, rotation,
                                                    scale, perspective, verification):
    query, _ = warped(images[3], rotation, scale, perspective)
    scores, ids, inliers = trained_index.query(query, k=5, rerank=12,
                                               verification=verification,
                                               return_inliers=True)
    assert trained_index.names[ids[0]].endswith("texture_03.png")
    assert inliers[0] >= 30
    assert inliers[0] == inliers.max()
    all_inliers = trained_index.inliers(query, range(len(trained_index)),
                                        verification=verification)
    assert all_inliers.argmax() == ids[0]
    assert np.sort(all_inliers)[-2] < 20  # no other image is verified


def shaped_pairs(rng, n_true, n_false, transform, turn, side=800.0):
    """Query and database keypoints ``(x, y, size, angle)`` whose first
    ``n_true`` rows correspond through ``transform`` (2 x 3, affine), a scale
    change of ``sqrt(det)`` and a rotation of ``turn`` degrees, the rest at
    random; database shapes quantised as the store keeps them."""
    n = n_true + n_false
    query = np.column_stack([rng.uniform(0, 600, (n, 2)), np.exp2(rng.uniform(1, 5, n)),
                             rng.uniform(0, 360, n)])
    db = np.column_stack([rng.uniform(0, 600, (n, 2)), np.exp2(rng.uniform(1, 5, n)),
                          rng.uniform(0, 360, n)])
    scale = np.sqrt(abs(np.linalg.det(transform[:, :2])))
    db[:n_true, :2] = query[:n_true, :2] @ transform[:, :2].T + transform[:, 2]
    db[:n_true, :2] += rng.normal(0, 0.7, (n_true, 2))
    db[:n_true, 2] = query[:n_true, 2] * scale * np.exp2(rng.normal(0, 0.1, n_true))
    db[:n_true, 3] = np.mod(query[:n_true, 3] + turn + rng.normal(0, 3, n_true), 360)
    sides = np.full(n, side)
    db[:, 2], db[:, 3] = decode_shape(encode_shape(db[:, 2], db[:, 3], sides), sides)
    return query.astype(np.float32), db.astype(np.float32)


@pytest.mark.parametrize("scale, turn, shear", [(1.0, 0, 0.0), (1.7, 35, 0.0),
                                                (0.45, -150, 0.0), (1.2, 80, 0.15)])
def test_similarity_hypotheses_find_the_true_pairs(scale, turn, shear):
    """Quantised shapes (a 16th of a turn, half an octave) are enough to propose
    the transform; local optimisation recovers every true pair, even under
    shear, and no random one."""
    rng = np.random.default_rng(int(scale * 100) + abs(turn))
    angle = np.deg2rad(turn)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)],
                               [np.sin(angle), np.cos(angle)]]) @ [[1, shear], [0, 1]]
    transform = np.column_stack([linear, [40.0, -25.0]])
    query, db = shaped_pairs(rng, 60, 140, transform, turn)
    pairs = np.arange(200)
    n, mask = similarity_inliers(query, db, pairs, pairs, threshold=6.0)
    assert mask[:60].sum() >= 58
    assert mask[60:].sum() <= 2 and 58 <= n <= 62
    # pairs with no geometry in common: nothing like a model
    noise, _ = similarity_inliers(query[60:], db[60:], pairs[:140], pairs[:140],
                                  threshold=6.0)
    assert noise <= 6


def test_similarity_needs_shapes_and_enough_pairs():
    rng = np.random.default_rng(1)
    query, db = shaped_pairs(rng, 30, 0, np.array([[1.0, 0, 5], [0, 1, 5]]), 0)
    pairs = np.arange(30)
    unknown = db.copy()
    unknown[:, 2:] = 0  # sizes 0: no shapes (dense features, older indexes)
    assert similarity_inliers(query, unknown, pairs, pairs, threshold=6.0) is None
    assert similarity_inliers(query, db, pairs[:2], pairs[:2], threshold=6.0)[0] == 0
    assert similarity_inliers(query, db, pairs, pairs, threshold=6.0)[0] == 30


def test_iterations_needed_follow_the_smallest_model_worth_keeping():
    from cvsearch.rerank import iterations_needed

    assert iterations_needed(3, 20) == 0  # no homography from 3 pairs
    assert iterations_needed(20, 20) == 1  # all pairs must be inliers
    assert iterations_needed(60, 20) == 427  # log(0.005) / log(1 - (1/3) ** 4)
    assert iterations_needed(400, 20) == 2000  # capped: as before
    # and the cap still finds a true homography hidden among mostly wrong pairs
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 500, (25, 2))
    truth = np.array([[0.9, -0.2, 30], [0.15, 1.1, -20], [1e-4, 2e-4, 1]])
    mapped = cv2.perspectiveTransform(points[None], truth)[0]
    query = np.vstack([points, rng.uniform(0, 500, (35, 2))])
    db = np.vstack([mapped, rng.uniform(0, 500, (35, 2))])
    n, _ = count_inliers(query.astype(np.float32), db.astype(np.float32),
                         max_iters=iterations_needed(60, 20))
    assert n >= 23


def test_dense_features_keep_no_shapes_and_are_verified_by_ransac(image_files, images):
    """Grid keypoints' sizes and angles are the grid's, not the object's: the
    index keeps none, and re-ranking falls back to RANSAC for them."""
    from cvsearch import FeatureExtractor, Index

    assert FeatureExtractor("sift").covariant
    extractor = FeatureExtractor("sift", dense_step=12, max_side=240)
    assert not extractor.covariant
    index = Index.build(image_files[:6], extractor, n_words=500, random_state=0)
    assert all(len(s.kp_shape) == 0 for s in index._current().store.segments)
    query = images[2][20:-20, 10:-30]  # a crop: the same grid no longer fits
    shapes = index.query(query, k=3, rerank=6, return_inliers=True)
    ransac = index.query(query, k=3, rerank=6, verification="ransac",
                         return_inliers=True)
    assert all(np.array_equal(a, b) for a, b in zip(shapes, ransac))
    assert index.names[shapes[1][0]].endswith("texture_02.png")
    assert shapes[2][0] >= 20  # verified


def synthetic_candidates(rng, n_query=300, n_words=400):
    """A query's words and keypoints, and database images: some show it
    (words kept, keypoints moved by a random similarity plus noise), the others
    are random; database shapes quantised as the store keeps them."""
    query_words = rng.integers(0, n_words, n_query)
    query = np.column_stack([rng.uniform(0, 640, (n_query, 2)),
                             np.exp2(rng.uniform(1, 5, n_query)),
                             rng.uniform(0, 360, n_query)]).astype(np.float32)
    candidates = []
    for i in range(12):
        n = int(rng.integers(20, 400))
        words = rng.integers(0, n_words, n)
        keypoints = np.column_stack([rng.uniform(0, 640, (n, 2)),
                                     np.exp2(rng.uniform(1, 5, n)),
                                     rng.uniform(0, 360, n)])
        if i % 3 == 0:  # shows the query: a share of its keypoints, moved
            shown = rng.choice(n_query, min(n, int(rng.integers(8, 120))), replace=False)
            turn, scale = rng.uniform(-180, 180), np.exp2(rng.uniform(-1, 1))
            angle = np.deg2rad(turn)
            rotation = scale * np.array([[np.cos(angle), -np.sin(angle)],
                                         [np.sin(angle), np.cos(angle)]])
            m = len(shown)
            words[:m] = query_words[shown]
            keypoints[:m, :2] = query[shown, :2] @ rotation.T + [30, -10]
            keypoints[:m, :2] += rng.normal(0, 0.7, (m, 2))
            keypoints[:m, 2] = query[shown, 2] * scale
            keypoints[:m, 3] = np.mod(query[shown, 3] + turn, 360)
        side = np.full(n, 640.0)
        keypoints[:, 2], keypoints[:, 3] = decode_shape(
            encode_shape(keypoints[:, 2], keypoints[:, 3], side), side)
        candidates.append((words.astype(np.int32), keypoints.astype(np.float32),
                           (640, 640)))
    return query_words.astype(np.int32), query, candidates


def test_a_short_list_verified_at_once_equals_one_image_at_a_time():
    """verify_shortlist works on all candidates together; each count is what
    the image alone gets, and with min_inliers it skips refining only images
    that stay below it."""
    from cvsearch.rerank import inlier_pairs, verify_shortlist

    rng = np.random.default_rng(5)
    query_words, query, candidates = synthetic_candidates(rng)
    full = verify_shortlist(query_words, query, candidates, max_side=640)
    alone = [inlier_pairs(query_words, query, *c, max_side=640)[0] for c in candidates]
    assert full.tolist() == alone
    assert (full[::3] >= 8).all() and (np.delete(full, np.s_[::3]) <= 4).all()
    for min_inliers in (5, 10, 30):
        quick = verify_shortlist(query_words, query, candidates, max_side=640,
                                 min_inliers=min_inliers)
        assert (quick <= full).all()
        assert np.array_equal(quick[quick >= min_inliers], full[quick >= min_inliers])
        assert np.array_equal(quick >= min_inliers, full >= min_inliers)


def test_multiple_assignment_repeats_keypoints_whose_next_word_is_near():
    from cvsearch.rerank import multiple_assignment

    keypoints = np.arange(16, dtype=np.float32).reshape(4, 4)
    words, repeated = multiple_assignment(
        np.array([5, 6, 7, 8]), keypoints, second=np.array([9, 10, -1, 11]),
        distances=np.array([1.0, 1.0, 1.0, 1.0]),
        second_distances=np.array([1.1, 1.5, np.inf, 1.2]))
    assert words.tolist() == [5, 6, 7, 8, 9, 11]  # 1.1 and 1.2 are within 1.2x
    assert np.array_equal(repeated, keypoints[[0, 1, 2, 3, 0, 3]])


def test_multiple_assignment_is_a_switch(trained_index, images):
    query, _ = warped(images[4], 30, 0.7, 0.2)
    single = trained_index.query(query, k=3, rerank=12, multiple_assignment=False,
                                 return_inliers=True)
    both = trained_index.query(query, k=3, rerank=12, return_inliers=True)
    assert trained_index.names[both[1][0]].endswith("texture_04.png")
    assert trained_index.names[single[1][0]].endswith("texture_04.png")
    assert np.array_equal(single[0], both[0])  # the same bag-of-words scores
    with pytest.raises(TypeError, match="multiple_assignment"):
        trained_index.query(query, rerank=5, multiple_assignment=2)


def test_query_expansion_averages_the_query_with_its_verified_results(
        trained_index, images, image_files):
    """With one verified result (image 4), the others follow the order of the
    query's vector plus image 4's: scores proportional to the sum of the two
    searches' cosines."""
    index, n = trained_index, len(trained_index)
    query, _ = warped(images[4], 30, 0.8, 0.1)
    plain = index.query(query, k=n, rerank=n, return_inliers=True)
    expanded = index.query(query, k=n, rerank=n, expand=3, return_inliers=True)
    verified = plain[2] >= 10
    assert index.names[plain[1][0]].endswith("texture_04.png") and verified.sum() == 1
    # the verified result stays first, as it was
    assert expanded[1][0] == plain[1][0] and expanded[2][0] == plain[2][0]
    assert sorted(expanded[1].tolist()) == sorted(plain[1].tolist())
    by_query = dict(zip(*index.query(query, k=n)[::-1]))
    by_result = dict(zip(*index.query(image_files[4], k=n)[::-1]))
    rest = expanded[1][1:]
    summed = np.array([by_query[i] + by_result[i] for i in rest], np.float64)
    assert np.all(np.diff(summed) <= 1e-6)  # in the expanded query's order
    ratio = expanded[0][1:] / summed
    assert np.allclose(ratio, ratio[0], rtol=1e-4)  # its cosine, up to the norm
    assert np.all(expanded[2][1:] == plain[2][np.argsort(plain[1])][
        np.searchsorted(np.sort(plain[1]), rest)])  # counts kept with their images


def test_query_expansion_without_a_verified_result_changes_nothing(trained_index,
                                                                   images):
    query, _ = warped(images[2], 20, 0.9)
    plain = trained_index.query(query, k=6, rerank=8, min_inliers=10**6,
                                return_inliers=True)
    expanded = trained_index.query(query, k=6, rerank=8, min_inliers=10**6,
                                   expand=5, return_inliers=True)
    for a, b in zip(plain, expanded):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="expand needs rerank"):
        trained_index.query(query, expand=2)
    with pytest.raises(ValueError, match="expand"):
        trained_index.query(query, rerank=5, expand=-1)


def test_pairs_that_agree_on_no_rotation_and_scale_verify_nothing():
    """Three pairs, each turned by another quarter: no two share a (rotation,
    scale) cell, so no transform is proposed, and the count is an exact 0 (this
    used to fail on the empty set of hypotheses)."""
    from cvsearch.rerank import verify_candidates

    query = np.array([[50, 50, 10, 0], [150, 50, 10, 0], [50, 150, 10, 0]], np.float32)
    db = query.copy()
    db[:, 3] = [0, 120, 240]
    words = np.array([1, 2, 3])
    verified = verify_candidates(words, query, [(words, db, (200, 200))],
                                 max_side=200, min_inliers=None)
    assert verified.inliers.tolist() == [0] and verified.exact.tolist() == [True]


def verification_path(monkeypatch, path):
    """Verify by numba's loops for any short-list ("numba"; skipped without
    numba), or by numpy alone ("numpy")."""
    from cvsearch import rerank

    if path == "numba":
        pytest.importorskip("numba", reason="the compiled path needs numba ('fast' extra)")
        monkeypatch.setattr(rerank, "COMPILED_KEYPOINTS", 0)
    else:
        monkeypatch.setattr(rerank, "USE_COMPILED", False)


@pytest.mark.parametrize("path", ["numba", "numpy"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), max_per_word=st.integers(1, 4),
       n_words=st.integers(1, 30), n_query=st.integers(0, 40))
def test_a_short_lists_word_pairs_are_each_images_own(path, seed, max_per_word, n_words,
                                                      n_query):
    # The pairs of all candidates at once (one gather, in verify_candidates) are
    # each image's own: a word pairs where it occurs 1..max_per_word times on
    # each side, every query keypoint of it with every one of the image's; in
    # the query's order of keypoints, for numba's loop as for numpy's sort.
    from cvsearch.rerank import QueryWords, _pairs

    rng = np.random.default_rng(seed)
    query_words = rng.integers(0, n_words, n_query)
    images = [rng.integers(0, n_words + 3, int(rng.integers(0, 30))) for _ in range(6)]
    sizes = [len(w) for w in images]
    words = np.concatenate(images).astype(np.int32)
    labels = np.repeat(np.arange(len(images)), sizes)
    with pytest.MonkeyPatch.context() as patch:  # hypothesis reuses fixtures
        verification_path(patch, path)
        query_idx, db_idx = _pairs(QueryWords.of(query_words), words, labels,
                                   max_per_word)
    assert (np.diff(db_idx) >= 0).all()  # ordered by database keypoint
    expected, first = set(), 0
    for image in images:
        for w in set(image.tolist()):
            q, d = np.flatnonzero(query_words == w), np.flatnonzero(image == w)
            if 1 <= len(q) <= max_per_word and len(d) <= max_per_word:
                expected |= {(int(a), int(b) + first) for a in q for b in d}
        first += len(image)
    assert len(query_idx) == len(expected)
    assert set(zip(query_idx.tolist(), db_idx.tolist())) == expected
    runs = np.flatnonzero(np.diff(db_idx) != 0) + 1  # each keypoint's query ones
    assert all((np.diff(run) > 0).all() for run in np.split(query_idx, runs))
    assert query_idx.dtype == db_idx.dtype == np.int64


@pytest.mark.parametrize("path", ["numba", "numpy"])
def test_a_word_beyond_a_large_max_per_word_pairs_nothing(monkeypatch, path):
    # max_per_word above a byte's range: a word the query holds 300 times stays
    # out at 256, one it holds twice pairs
    from cvsearch.rerank import QueryWords, _pairs

    verification_path(monkeypatch, path)
    query_words = np.array([0] * 300 + [1, 1])
    words, labels = np.array([0, 1], np.int32), np.zeros(2, np.int64)
    query_idx, db_idx = _pairs(QueryWords.of(query_words), words, labels, 256)
    assert query_idx.tolist() == [300, 301] and db_idx.tolist() == [1, 1]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), min_inliers=st.sampled_from([None, 5, 12]),
       odd=st.lists(st.sampled_from(["empty", "shapeless", "foreign", "tiny"]),
                    max_size=4))
def test_any_short_list_verified_at_once_is_each_image_alone(seed, min_inliers, odd):
    # Short-lists of images that show the query and images that do not, with odd
    # ones among them (no keypoint, no shapes, no shared word, two keypoints):
    # each count, exactness and inlier pairs are what the image gets alone.
    from cvsearch.rerank import verify_candidates

    rng = np.random.default_rng(seed)
    query_words, query, candidates = synthetic_candidates(rng, n_query=120)
    for kind in odd:
        words, keypoints, shape = candidates[int(rng.integers(len(candidates)))]
        if kind == "empty":
            words, keypoints = words[:0], keypoints[:0]
        elif kind == "shapeless":
            keypoints = keypoints.copy()
            keypoints[:, 2:] = 0  # size 0: no shape, verified by RANSAC
        elif kind == "foreign":
            words = words + 10_000
        else:
            words, keypoints = words[:2], keypoints[:2]
        candidates.insert(int(rng.integers(len(candidates) + 1)),
                          (words, keypoints, shape))
    together = verify_candidates(query_words, query, candidates, max_side=640,
                                 min_inliers=min_inliers)
    for i, candidate in enumerate(candidates):
        alone = verify_candidates(query_words, query, [candidate], max_side=640,
                                  min_inliers=min_inliers)
        assert together.inliers[i] == alone.inliers[0]
        assert together.exact[i] == alone.exact[0]
        assert together.pairs[i] == alone.pairs[0]
        for a, b in zip(together.matched[i], alone.matched[0]):
            assert np.array_equal(a, b)


def compiled_or_skip(loop):
    """numba's version of one of verification's loops; skipped without numba."""
    from cvsearch._compiled import compiled

    found = compiled(loop)
    if found is None:
        pytest.skip("the compiled path needs numba ('fast' extra)")
    return found


@pytest.mark.parametrize("min_inliers", [None, 5, 12])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_numbas_verification_is_numpys_to_the_bit(monkeypatch, seed, min_inliers):
    # A large short-list is verified in numba's loops (the word pairs, the
    # peaks of rotation and scale, the hypotheses' support): the same counts,
    # exactness, thresholds and inlier pairs as numpy's calls give, with odd
    # images among them (no keypoint, no shapes, two keypoints).
    pytest.importorskip("numba", reason="the compiled path needs numba ('fast' extra)")
    from cvsearch import rerank

    rng = np.random.default_rng(seed)
    query_words, query, candidates = synthetic_candidates(rng, n_query=200)
    words, keypoints, shape = candidates[4]
    shapeless = keypoints.copy()
    shapeless[:, 2:] = 0
    candidates[5:5] = [(words[:0], keypoints[:0], shape), (words, shapeless, shape),
                       (words[:2], keypoints[:2], shape)]
    found = {}
    for path in ("numba", "numpy"):
        with monkeypatch.context() as patch:
            verification_path(patch, path)
            found[path] = rerank.verify_candidates(query_words, query, candidates,
                                                   max_side=640,
                                                   min_inliers=min_inliers)
    numba, numpy = found["numba"], found["numpy"]
    for field in ("inliers", "pairs", "exact", "thresholds"):
        assert np.array_equal(getattr(numba, field), getattr(numpy, field)), field
    assert (numba.inliers[::4] > 0).any()  # images that show the query verify
    for (a, b), (c, d) in zip(numba.matched, numpy.matched, strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, d)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n_images=st.integers(1, 5))
def test_the_peak_of_rotation_and_scale_by_loop_is_numpys(seed, n_images):
    # Pairs crowded into a few cells, across the rotation's wrap (sector 15 next
    # to 0), so that windows tie: numba's loop picks numpy's first densest.
    from cvsearch.rerank import ROTATION_BINS, SCALE_BINS, _peak, _peak_loop

    loop = compiled_or_skip(_peak_loop)
    rng = np.random.default_rng(seed)
    label = np.sort(rng.integers(0, n_images, int(rng.integers(0, 60))))
    sector = rng.choice([0, 1, 2, 14, 15], len(label)).astype(np.int64)
    step = rng.choice([0, 1, 2, 15, 16, SCALE_BINS - 1], len(label)).astype(np.int64)
    expected = _peak(label, sector, step, n_images)
    assert np.array_equal(loop(label, sector, step, ROTATION_BINS, SCALE_BINS), expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_the_hypotheses_support_by_loop_is_numpys(seed):
    # Keypoints on a grid of whole pixels and turns by quarters: the errors are
    # whole, some exactly at the radius (not within it), and supports tie (the
    # first of the largest is the best): numba's loop finds what numpy does.
    from cvsearch.rerank import _support, _support_loop

    loop = compiled_or_skip(_support_loop)
    rng = np.random.default_rng(seed)
    grouped = rng.choice([0, 2, 3, 5, 8], int(rng.integers(1, 6)))
    grouped[rng.integers(len(grouped))] = 4  # a hypothesis at least (as verified)
    n_images, n_members = len(grouped), grouped.sum()
    member_start = np.cumsum(grouped) - grouped
    member_query = rng.integers(0, 4, (n_members, 2)).astype(float)
    member_db = member_query + rng.integers(-2, 3, (n_members, 2))
    n_hyp = np.minimum(grouped, rng.integers(1, 4, n_images))
    hyp_label = np.repeat(np.arange(n_images), n_hyp)
    hyp = np.concatenate([member_start[i] + rng.choice(grouped[i], n_hyp[i], replace=False)
                          for i in range(n_images)]).astype(np.int64)
    turn = rng.integers(0, 4, len(hyp))
    cos, sin = np.array([1.0, 0, -1, 0])[turn], np.array([0.0, 1, 0, -1])[turn]
    radius = rng.integers(1, 4, n_images).astype(float)
    expected = _support(member_query, member_db, member_start, grouped, hyp_label, hyp,
                        cos, sin, radius)
    found = loop(member_query, member_db, member_start, grouped, hyp_label, hyp, cos,
                 sin, radius)
    for a, b in zip(found, expected, strict=True):
        assert np.array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), least=st.integers(3, 6))
def test_the_changes_of_shape_by_loop_are_numpys(seed, least):
    # Images with pairs just below and at the number that can verify, and
    # keypoints without shapes on either side: numba's two passes choose the
    # pairs numpy chooses, with their changes of angle and size to the bit.
    from cvsearch.rerank import _shape_changes, _shape_changes_loop

    loop = compiled_or_skip(_shape_changes_loop)
    rng = np.random.default_rng(seed)
    query = np.column_stack([rng.random((30, 2)), rng.choice([0, 1.5, 7.25], 30),
                             rng.random(30) * 360]).astype(np.float32)
    db = np.column_stack([rng.random((40, 2)), rng.choice([0, 3.1, 2.0], 40),
                          rng.random(40) * 360]).astype(np.float32)
    sizes = rng.integers(0, least + 2, int(rng.integers(1, 8)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    query_idx = rng.integers(0, 30, len(labels))
    db_idx = rng.integers(0, 40, len(labels))
    expected = _shape_changes(query, db, query_idx, db_idx, labels, len(sizes), least)
    found = loop(query, db, query_idx, db_idx, labels, len(sizes), least)
    for a, b in zip(found, expected, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _refine_every_step(query_xy, db_xy, inliers, threshold):
    # _refine as it was before it skipped repeated fits: every step, always
    from cvsearch.rerank import LOOSE

    source = np.column_stack([query_xy, np.ones(len(query_xy))])
    for radius in (LOOSE * threshold / 2, threshold, threshold):
        if inliers.sum() < 3:
            return np.zeros(len(query_xy), bool)
        affine, *_ = np.linalg.lstsq(source[inliers], db_xy[inliers], rcond=None)
        inliers = ((source @ affine - db_xy) ** 2).sum(axis=1) < radius ** 2
    for _ in range(2):
        if inliers.sum() < 8:
            break
        homography, _ = cv2.findHomography(query_xy[inliers], db_xy[inliers], 0)
        if homography is None:
            break
        projected = cv2.perspectiveTransform(query_xy[None], homography)[0]
        widened = ((projected - db_xy) ** 2).sum(axis=1) < threshold ** 2
        if widened.sum() < inliers.sum():
            break
        inliers = widened
    return inliers


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), share=st.floats(0.1, 1.0), noise=st.floats(0, 4),
       loose_start=st.booleans())
def test_refinement_skips_only_fits_that_would_repeat(seed, share, noise, loose_start):
    # Refining a hypothesis' inliers skips a least-squares fit of the same
    # points with the same radius: the inliers are those of every step done,
    # also where the first, loose fit keeps the points it was given (then the
    # tighter radius must still be fitted).
    from cvsearch.rerank import LOOSE, _refine

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    query_xy = rng.uniform(0, 640, (n, 2))
    turn = rng.uniform(-np.pi, np.pi)
    rotation = rng.uniform(0.5, 2) * np.array([[np.cos(turn), -np.sin(turn)],
                                               [np.sin(turn), np.cos(turn)]])
    db_xy = query_xy @ rotation.T + rng.uniform(-50, 50, 2)
    db_xy += rng.normal(0, noise, db_xy.shape)
    wrong = rng.random(n) > share
    db_xy[wrong] = rng.uniform(0, 640, (wrong.sum(), 2))
    threshold = float(rng.uniform(2, 8))
    start = rng.random(n) < 0.7
    if loose_start:  # the points the true transform puts within the loose radius
        source = np.column_stack([query_xy, np.ones(n)])
        affine, *_ = np.linalg.lstsq(source[~wrong], db_xy[~wrong], rcond=None)
        start = ((source @ affine - db_xy) ** 2).sum(axis=1) < (LOOSE * threshold / 2) ** 2
    assert np.array_equal(_refine(query_xy, db_xy, start.copy(), threshold),
                          _refine_every_step(query_xy, db_xy, start.copy(), threshold))


def test_positions_given_in_float64_are_verified_in_float64():
    # Far from the origin float32 holds only whole pixels: positions given in
    # float64 are verified as given (a pure shift: every pair an inlier at a
    # tenth of a pixel), not narrowed to float32 first (then few are).
    rng = np.random.default_rng(0)
    n = 40
    query = np.column_stack([1e7 + 3 * np.arange(n) + rng.random(n),
                             1e7 + 3 * rng.permutation(n) + rng.random(n),
                             np.full(n, 8.0), np.full(n, 30.0)])
    db = query.copy()
    db[:, :2] += [10.25, -4.5]
    pairs = np.arange(n)
    count, mask = similarity_inliers(query, db, pairs, pairs, threshold=0.1)
    assert count == n and mask.all()
    narrowed, _ = similarity_inliers(query.astype(np.float32), db.astype(np.float32),
                                     pairs, pairs, threshold=0.1)
    assert narrowed < n // 2
