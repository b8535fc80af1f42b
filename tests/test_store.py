"""The segment store against the monolithic tf-idf of cvsearch.weighting: the
same scores, whatever the segments, adds, removes and compactions."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cvsearch.features import THUMBNAIL
from cvsearch.scoring import cosine_scores
from cvsearch.store import Store, decode_shape, encode_shape
from cvsearch.weighting import (
    inverse_document_frequency,
    spatial_bag_of_words,
    tfidf,
)

N_WORDS = 60


def random_images(n, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        k = int(rng.integers(0, 40))  # some images have no keypoints
        words = rng.zipf(1.6, k) % N_WORDS
        keypoints = np.column_stack([rng.random((k, 2)) * [300, 200],
                                     rng.random((k, 2)) * 10]).astype(np.float32)
        images.append((f"image {seed}-{i}", words.astype(np.int32), keypoints,
                       (200, 300)))
    return images


def store_of(batches, levels=0, power=1.0, tf_power=1.0):
    store = Store(N_WORDS, levels, power, tf_power=tf_power)
    for batch in batches:
        store, _ = store.add([b[0] for b in batch], [b[1] for b in batch],
                             [b[2] for b in batch], [b[3] for b in batch])
    return store


def reference_scores(images, query, levels, power, tf_power=1.0):
    """Scores by the monolithic functions the index used before segments."""
    words = np.concatenate([i[1] for i in images])
    keypoints = np.concatenate([i[2] for i in images])
    offsets = np.concatenate([[0], np.cumsum([len(i[1]) for i in images])])
    shapes = np.array([i[3] for i in images])
    counts = spatial_bag_of_words(words, keypoints, shapes, offsets, N_WORDS, levels)
    idf = inverse_document_frequency(counts)
    q = tfidf(spatial_bag_of_words(query[1], query[2], np.array([query[3]]),
                                   np.array([0, len(query[1])]), N_WORDS, levels),
              idf, power, tf_power)
    return (cosine_scores(tfidf(counts, idf, power, tf_power).T.tocsr(), q)[0], idf,
            q)


def store_query(store, query, idf):
    q = tfidf(spatial_bag_of_words(query[1], query[2], np.array([query[3]]),
                                   np.array([0, len(query[1])]), N_WORDS, store.levels),
              idf, store.power, store.tf_power)
    scores = store.scores(q.indices, q.data)
    return scores, store.ids_at(np.arange(len(scores)))


@pytest.mark.parametrize("levels, power, tf_power", [
    (0, 1.0, 1.0), (0, 0.5, 1.0), (2, 0.5, 1.0), (0, 1.0, 0.2), (2, 0.5, 0.3)])
def test_scores_equal_the_monolithic_tfidf(levels, power, tf_power):
    images = random_images(30)
    store = store_of([images[:10], images[10:25], images[25:]], levels, power, tf_power)
    for query in random_images(5, seed=9):
        expected, idf, _ = reference_scores(images, query, levels, power, tf_power)
        assert np.allclose(store.weights().idf, idf)
        scores, ids = store_query(store, query, store.weights().idf)
        assert ids.tolist() == list(range(30))
        assert np.allclose(scores, expected, atol=1e-6)


def test_segments_removals_and_compaction_score_exactly_alike():
    images = random_images(24)
    once = store_of([images])
    grown = store_of([images[:5], images[5:6], images[6:]])
    for query in random_images(4, seed=3):
        a = store_query(once, query, once.weights().idf)
        b = store_query(grown, query, grown.weights().idf)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # removing = never added, ids kept
    removed = grown.remove([0, 7, 23])
    never = store_of([[im for i, im in enumerate(images) if i not in (0, 7, 23)]])
    assert len(removed) == 21 and removed.ids().tolist() == [
        i for i in range(24) if i not in (0, 7, 23)]
    assert np.array_equal(removed.weights().idf, never.weights().idf)
    for query in random_images(4, seed=4):
        scores, ids = store_query(removed, query, removed.weights().idf)
        live = scores > -np.inf
        expected, _ = store_query(never, query, never.weights().idf)
        assert np.array_equal(scores[live], expected)
        assert ids[live].tolist() == removed.ids().tolist()
    compact = removed.compact()
    assert len(compact.segments) == 1 and compact.ids().tolist() == removed.ids().tolist()
    for query in random_images(3, seed=5):
        a, _ = store_query(removed, query, removed.weights().idf)
        b, _ = store_query(compact, query, compact.weights().idf)
        assert np.array_equal(a[a > -np.inf], b)


def test_stable_ids_names_and_geometry():
    images = random_images(10)
    store = store_of([images[:4], images[4:]])
    store = store.remove([1, 5])
    assert dict(zip(store.ids().tolist(), store.names_in_order())) == {
        i: images[i][0] for i in range(10) if i not in (1, 5)}
    assert store.position(6) == 6 and store.ids_at([4, 6]).tolist() == [4, 6]
    words, keypoints, shape = store.image(6)
    assert np.array_equal(words, images[6][1]) and shape == (200, 300)
    # positions kept to 1/65535 of the image's sides; size and angle in a byte
    assert np.allclose(keypoints[:, :2], images[6][2][:, :2], atol=300 / 65535)
    assert np.array_equal(keypoints[:, 2:], np.column_stack(
        decode_shape(encode_shape(*images[6][2][:, 2:].T, 300.0), 300.0)
    ).astype(np.float32))
    with pytest.raises(KeyError):
        store.image(5)  # deleted
    with pytest.raises(KeyError):
        store.remove([5])
    with pytest.raises(KeyError):
        store.locate(99)
    store, ids = store.add(["late"], [images[0][1]], [images[0][2]], [(200, 300)])
    assert ids.tolist() == [10]  # never reused


def test_postings_use_the_smallest_dtypes():
    store = store_of([random_images(30)])
    segment = store.segments[0]
    assert segment.post_rows.dtype == np.uint8 and segment.kp_words.dtype == np.uint8
    assert segment.post_tf.dtype == np.uint8 and segment.ids.dtype == np.uint8
    assert segment.kp_xy.dtype == np.uint16 and segment.kp_xy.shape[1] == 2
    assert segment.kp_shape.dtype == np.uint8
    assert segment.kp_shape.shape == segment.kp_words.shape  # one byte a keypoint


def test_shape_bytes_keep_size_and_angle_to_half_a_step():
    from cvsearch.store import SHAPE_UNKNOWN, decode_shape, encode_shape

    rng = np.random.default_rng(0)
    side = rng.choice([300.0, 640.0, 4000.0], 5000)
    size = side * np.exp2(rng.uniform(-9.9, -2.6, 5000))  # inside the byte's range
    angle = rng.uniform(0, 360, 5000)
    codes = encode_shape(size, angle, side)
    assert codes.dtype == np.uint8 and not np.any(codes == SHAPE_UNKNOWN)
    decoded_size, decoded_angle = decode_shape(codes, side)
    assert np.abs(np.log2(decoded_size / size)).max() <= 0.25 + 1e-9  # half a step
    turn = np.abs(np.mod(decoded_angle - angle + 180, 360) - 180)
    assert turn.max() <= 360 / 16 / 2 + 1e-9  # half a sector
    # what is decoded encodes to the same byte: compaction never drifts
    assert np.array_equal(encode_shape(decoded_size, decoded_angle, side), codes)
    # outside the range: clipped, never wrapped into another sector
    far = encode_shape(np.array([1e-9, 1e9]), np.array([10.0, 10.0]), np.array([640.0] * 2))
    assert (far >> 4).tolist() == [0, 0] and (far & 15).tolist() == [0, 14]
    unknown = encode_shape(np.array([0.0, -1.0, np.nan, 5.0]),
                           np.array([0.0, 0.0, 0.0, np.nan]), np.full(4, 640.0))
    assert unknown.tolist() == [SHAPE_UNKNOWN] * 4
    assert [v.tolist() for v in decode_shape(unknown, np.full(4, 640.0))] == [[0.0] * 4] * 2


def test_keypoints_without_shapes_keep_none_and_read_as_unknown():
    """Dense features are stored as positions only; merged with detected ones,
    their rows read as unknown shapes and the others keep theirs."""
    from cvsearch.store import SHAPE_UNKNOWN, Segment

    images = random_images(12, seed=4)
    shapeless = store_of([[(n, w, k[:, :2], s) for n, w, k, s in images[:6]]])
    assert len(shapeless.segments[0].kp_shape) == 0
    words, keypoints, _ = shapeless.image(1)
    assert len(keypoints) and np.all(keypoints[:, 2:] == 0)
    shaped = store_of([images[6:]]).segments[0]
    merged = Segment.merge([(shapeless.segments[0], None), (shaped, None)])
    n_first = int(shapeless.segments[0].kp_offsets[-1])
    assert np.all(merged.kp_shape[:n_first] == SHAPE_UNKNOWN)
    assert np.array_equal(merged.kp_shape[n_first:], shaped.kp_shape)


@pytest.mark.parametrize("path", ["numba", "numpy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_images_of_many_ids_are_each_ids_image_to_the_bit(monkeypatch, seed, path):
    """What verification reads for a short-list, decoded at once, is what each
    image decodes to alone: in any order, repeated, across segments with and
    without shapes, images of other sizes and images without keypoints; by
    numba's one loop (a large short-list's) as by numpy's calls."""
    from cvsearch import store as store_module
    from cvsearch.store import SHAPE_UNKNOWN, _decode

    if path == "numba":
        pytest.importorskip("numba", reason="the compiled path needs numba ('fast' extra)")
        monkeypatch.setattr(store_module, "COMPILED_KEYPOINTS", 0)
    else:
        monkeypatch.setattr(store_module, "USE_COMPILED", False)

    rng = np.random.default_rng(seed)
    images = [(n, w, k, (int(rng.integers(50, 900)), int(rng.integers(50, 900))))
              for n, w, k, _ in random_images(30, seed=seed)]
    for i in (5, 14):  # no keypoints
        images[i] = (images[i][0], images[i][1][:0], images[i][2][:0], images[i][3])
    shapeless = [(n, w, k[:, :2], s) for n, w, k, s in images[10:18]]
    store = store_of([images[:10], shapeless, images[18:]]).remove([3, 12, 25])
    live = store.ids()
    ids = rng.choice(live, 40)  # repeats, in no order
    many = store.images(ids)
    assert len(many) == len(ids)
    for id_, (words, keypoints, shape) in zip(ids.tolist(), many):
        # the reference: the row's own slices, scaled by its own sides
        index, row = store.locate(id_)
        segment = store.segments[index]
        lo, hi = (int(v) for v in segment.kp_offsets[row:row + 2])
        height, width = (int(v) for v in segment.shapes[row])
        alone = (segment.kp_words[lo:hi].astype(np.int32),
                 _decode(segment.kp_xy[lo:hi], np.array([[width, height]], float),
                         segment.kp_shape[lo:hi] if len(segment.kp_shape) else
                         np.full(hi - lo, SHAPE_UNKNOWN, np.uint8)), (height, width))
        assert store.image(id_)[1].tobytes() == alone[1].tobytes()
        assert words.dtype == alone[0].dtype and np.array_equal(words, alone[0])
        assert keypoints.dtype == alone[1].dtype and keypoints.shape == alone[1].shape
        assert keypoints.tobytes() == alone[1].tobytes()
        assert shape == alone[2] and all(type(v) is int for v in shape)
    assert len(store.images([])) == 0 and list(store.images([])) == []
    with pytest.raises(KeyError):
        store.images([int(live[0]), 12])  # removed


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_compiled_and_numpy_scoring_agree_exactly(monkeypatch, power):
    """With numba (the 'fast' extra) or without it, the same norms and scores to
    the bit."""
    from cvsearch import store as store_module

    pytest.importorskip("numba", reason="the compiled path needs numba ('fast' extra)")
    images = random_images(40)
    queries = random_images(4, seed=11)
    # these segments are small: numpy would score them (COMPILED_FROM)
    assert store_module._compiled(store_module._accumulate, 1000) is None
    monkeypatch.setattr(store_module, "COMPILED_FROM", 0)
    store = store_of([images[:15], images[15:]], levels=1, power=power).remove([3])
    compiled = [store_query(store, q, store.weights().idf) for q in queries]
    assert store_module._compiled(store_module._accumulate, 1000) is not None
    assert store_module._compiled(store_module._norm_squares, 1000) is not None
    monkeypatch.setattr(store_module, "USE_COMPILED", False)
    plain_store = store_of([images[:15], images[15:]], levels=1, power=power).remove([3])
    for a, b in zip(store.weights().inv_norms, plain_store.weights().inv_norms):
        assert np.array_equal(a, b)
    plain = [store_query(plain_store, q, plain_store.weights().idf) for q in queries]
    for (a, ids_a), (b, ids_b) in zip(compiled, plain):
        assert np.array_equal(a, b) and np.array_equal(ids_a, ids_b)


def test_merging_segments_moves_postings_exactly():
    """A merged segment, deleted rows dropped, equals the segment built from its
    live images at once: every array, to the dtype."""
    from cvsearch.store import Segment

    images = random_images(50, seed=2)
    store = store_of([images[:7], images[7:8], images[8:30], images[30:]], levels=1)
    store = store.remove([0, 7, 9, 31, 49])
    merged = Segment.merge(list(zip(store.segments, store.deleted)))
    live = [im for i, im in enumerate(images) if i not in (0, 7, 9, 31, 49)]
    direct = store_of([live], levels=1).segments[0]
    assert merged.names == direct.names
    assert np.array_equal(merged.ids, store.ids())
    for field in ("shapes", "kp_offsets", "kp_words", "kp_xy", "kp_shape",
                  "post_indptr", "post_rows", "post_tf"):
        a, b = getattr(merged, field), getattr(direct, field)
        assert a.dtype == b.dtype and np.array_equal(a, b), field


def test_tail_merging_bounds_the_segments_and_keeps_the_scores():
    """Images added one by one: the log merge policy keeps fewer than `factor`
    segments per size level, never merges past `max_images`, and the store
    scores exactly as one built at once."""
    images = random_images(140, seed=6)
    store = Store(N_WORDS)
    counts = []
    for i, (name, words, keypoints, shape) in enumerate(images):
        store, _ = store.add([name], [words], [keypoints], [shape])
        if i == 70:
            store = store.remove([3, 50, 69])
        store = store.merge_tail(factor=4, max_images=40)
        counts.append(len(store.segments))
        sizes = [len(s) for s in store.segments]
        assert all(size <= 40 for size in sizes)
    # levels 0..2 (<= 3 segments each below 40 images) plus full 40-image ones
    assert max(counts) <= 3 * 3 + 140 // 16
    assert len(store) == 137
    never = store_of([[im for i, im in enumerate(images) if i not in (3, 50, 69)]])
    for query in random_images(4, seed=8):
        a, ids = store_query(store, query, store.weights().idf)
        b, _ = store_query(never, query, never.weights().idf)
        assert np.array_equal(a[a > -np.inf], b)
        assert ids[a > -np.inf].tolist() == store.ids().tolist()


def test_best_equals_top_k_over_all_scores_with_ties_and_deletions():
    """Each segment keeps its own m best while it is scored; the merged result is
    top_k over every score (ties to the smaller id), deleted and excluded ids left
    out."""
    from cvsearch.scoring import top_k

    images = random_images(30, seed=12)
    images += [(f"copy {i}", *images[i][1:]) for i in range(0, 30, 3)]  # ties
    store = store_of([images[:9], images[9:10], images[10:27], images[27:]])
    store = store.remove([4, 11, 31])
    for query in random_images(6, seed=13):
        q = tfidf(spatial_bag_of_words(query[1], query[2], np.array([query[3]]),
                                       np.array([0, len(query[1])]), N_WORDS, 0),
                  store.weights().idf, 1.0)
        all_scores = store.scores(q.indices, q.data)
        for m, exclude in [(1, None), (5, None), (12, 6), (40, None), (40, 30)]:
            scores = all_scores.copy()
            if exclude is not None:
                scores[store.position(exclude)] = -np.inf
            expected_scores, rows = top_k(scores, m)
            n = min(m, len(store) - (exclude is not None))
            got_scores, got_ids = store.best(q.indices, q.data, m, exclude)
            assert got_ids.tolist() == store.ids_at(rows[:n]).tolist()
            assert np.array_equal(got_scores, expected_scores[:n])


@settings(max_examples=40, deadline=None)
# every image removed, then a merge: it made a segment of no image, which no
# state could hold (found by this test)
@example(steps=[("add", 0), ("add", 0), ("remove", 0), ("remove", 0), ("merge", 0)],
         asked=[0])
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "remove", "merge", "compact"]),
                                st.integers(0, 2**16)), max_size=12),
       asked=st.lists(st.integers(-3, 60), max_size=40))
def test_which_ids_are_live_is_what_a_set_of_ids_says(steps, asked):
    """``Store.live`` and the rows ``locate`` finds, after any adds, removes and
    merges, against a plain set of the ids added and not removed."""
    store, model = Store(N_WORDS), set()
    for action, seed in steps:
        rng = np.random.default_rng(seed)
        if action == "add":
            batch = random_images(int(rng.integers(1, 6)), seed=seed)
            store, ids = store.add(*zip(*batch))
            model.update(ids.tolist())
        elif action == "remove" and model:
            gone = rng.choice(sorted(model), int(rng.integers(1, len(model) + 1)),
                              replace=False)
            store = store.remove(gone)
            model.difference_update(gone.tolist())
        elif action == "merge":
            store = store.merge_tail(factor=2)
        elif action == "compact":
            store = store.compact()
    asked = np.array(asked, np.int64)
    assert store.live(asked).tolist() == [i in model for i in asked.tolist()]
    for id_ in asked.tolist():
        if id_ in model:
            index, row = store.locate(id_)
            assert int(store.segments[index].ids[row]) == id_
        else:
            with pytest.raises(KeyError):
                store.locate(id_)
    assert store.live(np.zeros(0, np.int64)).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "remove", "merge", "compact",
                                                  "reweight"]),
                                st.integers(0, 2**16)), min_size=1, max_size=10),
       levels=st.sampled_from([0, 1]), power=st.sampled_from([1.0, 0.5]))
def test_any_history_scores_exactly_as_its_live_images_built_at_once(steps, levels,
                                                                     power):
    """Adds, removes, tail merges, compactions and re-weightings in any order: the
    scores, ids, stored words and thumbnails are those of one segment of the live
    images, to the bit."""
    store, model, thumbs = Store(N_WORDS, levels, power), {}, {}
    for action, seed in steps:
        rng = np.random.default_rng(seed)
        if action == "add":
            batch = random_images(int(rng.integers(1, 6)), seed=seed)
            # thumbnails for some batches, some images: merges mix them
            smalls = None if rng.random() < 0.4 else [
                None if rng.random() < 0.3 else
                rng.integers(1, 256, (THUMBNAIL, THUMBNAIL)).astype(np.uint8)
                for _ in batch]
            store, ids = store.add(*zip(*batch), thumbnails=smalls)
            model.update(zip(ids.tolist(), batch))
            thumbs.update(zip(ids.tolist(), smalls or [None] * len(batch)))
        elif action == "remove" and model:
            gone = rng.choice(sorted(model), int(rng.integers(1, len(model) + 1)),
                              replace=False)
            store = store.remove(gone)
            for id_ in gone.tolist():
                del model[id_]
        elif action == "merge":
            store = store.merge_tail(factor=int(rng.integers(2, 4)))
        elif action == "compact":
            store = store.compact(max_segments=int(rng.integers(1, 4)))
        elif action == "reweight":
            levels, power = int(rng.integers(0, 2)), float(rng.choice([1.0, 0.5]))
            store = store.reweighted(levels, power, 1.0)
    live = sorted(model)
    assert store.ids().tolist() == live and len(store) == len(live)
    once = store_of([[model[i] for i in live]], levels, power) if live else None
    for query in random_images(3, seed=21):
        if once is None:
            scores = store.scores(np.zeros(0, np.int64), np.zeros(0, np.float32))
            assert (scores == -np.inf).all()  # removed rows only, if any
            break
        scores, ids = store_query(store, query, store.weights().idf)
        expected, _ = store_query(once, query, once.weights().idf)
        kept = scores > -np.inf
        assert np.array_equal(scores[kept], expected)
        assert ids[kept].tolist() == live
    for id_, (words, _, shape) in zip(live, store.images(live)):
        assert np.array_equal(words, model[id_][1]) and shape == model[id_][3]
        small = store.thumbnail(id_)
        assert (small is None) if thumbs[id_] is None else np.array_equal(small,
                                                                          thumbs[id_])


def test_a_short_list_holds_its_images_in_order_and_takes_any_of_them():
    """A ShortList made of images, or taken from one (any positions, repeated,
    none), holds exactly those images in that order, each one's arrays views
    of the shared ones."""
    from cvsearch.store import ShortList

    rng = np.random.default_rng(3)
    images = [(rng.integers(0, 50, n).astype(np.int32),
               rng.random((n, 4)).astype(np.float32),
               (int(rng.integers(1, 900)), int(rng.integers(1, 900))))
              for n in (5, 0, 9, 1, 7)]
    short = ShortList.of(images)
    assert ShortList.of(short) is short and len(short) == 5
    assert short.words.dtype == np.int32 and short.keypoints.shape == (22, 4)
    for positions in ([4, 0, 2], [1, 1, 3], [], [0, 1, 2, 3, 4], [3, 2, 1, 0, 4]):
        taken = short.take(positions)
        assert len(taken) == len(positions)
        assert taken.sizes.tolist() == [len(images[p][0]) for p in positions]
        for (words, keypoints, shape), p in zip(taken, positions, strict=True):
            assert np.array_equal(words, images[p][0]) and shape == images[p][2]
            assert keypoints.tobytes() == images[p][1].tobytes()
            assert np.shares_memory(keypoints, taken.keypoints) or not len(keypoints)
    assert short.take(range(5)) is short
    assert [w.tolist() for w, _, _ in short[3:0:-1]] == [
        images[p][0].tolist() for p in (3, 2, 1)]
    assert short[-1][2] == images[-1][2]
    with pytest.raises(IndexError):
        short[5]
    both = ShortList.concatenate([short.take([1, 2]), short.take([0])])
    assert [len(w) for w, _, _ in both] == [0, 9, 5] and len(ShortList.of([])) == 0


def _weighed_anew(store):
    """The same segments, deletions and ids with nothing computed and no earlier
    state to bound from: what every query answered before changes were bounded."""
    return Store(store.n_words, store.levels, store.power, tf_power=store.tf_power,
                 segments=store.segments, deleted=store.deleted, next_id=store.next_id)


def _best_of(store, query, m, exclude=None):
    q = tfidf(spatial_bag_of_words(query[1], query[2], np.array([query[3]]),
                                   np.array([0, len(query[1])]), N_WORDS, store.levels),
              store.idf_weights().idf, store.power, store.tf_power)
    return store.best(q.indices, q.data, m, exclude)


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "add", "remove", "merge",
                                                  "compact", "query", "query", "query",
                                                  "weigh"]),
                                st.integers(0, 2**16)), min_size=1, max_size=24),
       levels=st.sampled_from([0, 1]), power=st.sampled_from([1.0, 0.5]),
       compiled=st.booleans(), read=st.sampled_from([0.0, 0.125, 1.0]),
       rows_share=st.sampled_from([0.125, 1.0]))
def test_a_changed_state_answers_as_one_whose_norms_were_all_computed(
        steps, levels, power, compiled, read, rows_share):
    """After any history of changes, queries and computed states, a state whose
    norms are bounded from an earlier one's (and computed only for the rows a
    query needs) gives each query's best, scores and ids, to the bit, as the same
    state with every norm computed: numba or numpy, every share of columns summed
    exactly, rows computed one by one or a segment at once."""
    from unittest import mock

    from cvsearch import store as store_module

    if compiled:
        pytest.importorskip("numba", reason="the compiled path needs numba")
    store = Store(N_WORDS, levels, power, tf_power=0.5)
    queries = random_images(3, seed=5)
    with mock.patch.object(store_module, "COMPILED_FROM", 0 if compiled else 1 << 40), \
            mock.patch.object(store_module, "BOUND_POSTINGS", read), \
            mock.patch.object(store_module, "BOUND_SEGMENT_COST", 0), \
            mock.patch.object(store_module, "BOUND_ROW_COST", 0), \
            mock.patch.object(store_module, "BOUND_READ_COST", 0), \
            mock.patch.object(store_module, "EXACT_ROWS_SHARE", rows_share):
        for action, seed in steps:
            rng = np.random.default_rng(seed)
            if action == "add":
                batch = random_images(int(rng.integers(1, 3 if len(store) else 12)),
                                      seed=seed)
                store, _ = store.add(*zip(*batch))
            elif action == "remove" and len(store):
                ids = store.ids()
                store = store.remove(rng.choice(ids, int(rng.integers(1, min(4, len(ids))
                                                                    + 1)), replace=False))
            elif action == "merge":
                store = store.merge_tail(factor=int(rng.integers(2, 4)))
            elif action == "compact":
                store = store.compact(max_segments=int(rng.integers(1, 4)))
            elif action == "weigh":
                store.weights()
            elif action == "query" and len(store):
                query = queries[seed % 3]
                m = int(rng.integers(1, 10))
                exclude = int(rng.choice(store.ids())) if rng.random() < 0.3 else None
                scores, ids = _best_of(store, query, m, exclude)
                expected = _best_of(_weighed_anew(store), query, m, exclude)
                assert np.array_equal(scores, expected[0])
                assert np.array_equal(ids, expected[1])


def test_a_small_change_costs_its_own_segment_and_a_few_rows_not_a_pass(monkeypatch):
    """Adding one image to a state whose norms were computed: its first query
    computes the new segment's norms and, exactly, those of the few rows that
    can reach its best, not those of every image (a pass over every posting),
    and answers as that pass would."""
    from cvsearch import store as store_module

    # as at a large scale, where a segment's fixed cost, its rows' (images of
    # hundreds of words) and the columns read (one more image moves the weights
    # of a million by little) are small beside the pass
    monkeypatch.setattr(store_module, "BOUND_SEGMENT_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_ROW_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_READ_COST", 0)
    rng = np.random.default_rng(3)
    images = []
    for i in range(600):  # a vocabulary of 2,000 words, each image 30 of them
        words = rng.zipf(1.3, 30) % 2000
        keypoints = np.column_stack([rng.random((30, 2)) * [300, 200],
                                     rng.random((30, 2)) * 10]).astype(np.float32)
        images.append((f"image {i}", words.astype(np.int32), keypoints, (200, 300)))
    store = Store(2000, 0, 1.0, tf_power=0.2)
    for start in range(0, 600, 200):
        store, _ = store.add(*zip(*images[start:start + 200]))
    store.weights()
    changed, _ = store.add(*zip(images[7]))  # a copy of image 7
    whole, rows = [], []
    norms_of, rows_of = Store._norms, Store._rows_inverse
    monkeypatch.setattr(Store, "_norms", lambda self, segment, *a: (
        whole.append(len(segment)), norms_of(self, segment, *a))[1])
    monkeypatch.setattr(Store, "_rows_inverse", lambda self, index, some, *a: (
        rows.append(len(some)), rows_of(self, index, some, *a))[1])
    query = (None, images[7][1], images[7][2], images[7][3])
    q = tfidf(spatial_bag_of_words(query[1], query[2], np.array([query[3]]),
                                   np.array([0, 30]), 2000, 0),
              changed.idf_weights().idf, 1.0, 0.2)
    scores, ids = changed.best(q.indices, q.data, 10)
    assert whole == [1]  # the new segment only
    assert 0 < sum(rows) <= 60  # of 600 images
    assert changed._weights is None
    whole.clear()
    expected = _weighed_anew(changed).best(q.indices, q.data, 10)
    assert whole == [200, 200, 200, 1]
    assert np.array_equal(scores, expected[0]) and np.array_equal(ids, expected[1])
    assert ids[:2].tolist() == [7, 600] and scores[0] == scores[1]


@pytest.mark.parametrize("compiled", [False, True])
def test_bounded_norms_give_the_best_of_computed_ones_over_many_histories(monkeypatch,
                                                                          compiled):
    """300 random histories, each from a state whose norms were computed through
    a few adds, removes and merges to a query (pyramids, powers, tf powers,
    exclusions): the best, scores and ids, as with every norm computed, to the
    bit; and most of them answered from bounds."""
    from cvsearch import store as store_module

    if compiled:
        pytest.importorskip("numba", reason="the compiled path needs numba")
        monkeypatch.setattr(store_module, "COMPILED_FROM", 0)
    # small stores: bounds cost more than the pass, which would be chosen
    monkeypatch.setattr(store_module, "BOUND_SEGMENT_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_ROW_COST", 0)
    monkeypatch.setattr(store_module, "BOUND_READ_COST", 0)
    bounded = []
    scores_of = store_module._Bounds.scores
    monkeypatch.setattr(store_module._Bounds, "scores", lambda self, *a: (
        bounded.append(1), scores_of(self, *a))[1])
    queries = random_images(4, seed=99)
    for history in range(300):
        rng = np.random.default_rng(history)
        store = Store(N_WORDS, int(rng.integers(0, 2)), float(rng.choice([1.0, 0.5])),
                      tf_power=float(rng.choice([1.0, 0.2])))
        for size in rng.integers(5, 30, int(rng.integers(1, 4))):
            store, _ = store.add(*zip(*random_images(int(size), seed=1000 + history)))
        store.weights()
        for _ in range(int(rng.integers(1, 4))):
            action = rng.choice(["add", "remove", "merge"])
            if action == "add":
                batch = random_images(int(rng.integers(1, 3)), seed=history)
                store, _ = store.add(*zip(*batch))
            elif action == "remove" and len(store) > 1:
                store = store.remove(rng.choice(store.ids(), 1))
            else:
                store = store.merge_tail(factor=2)
        for query in queries[:int(rng.integers(1, 4))]:
            m = int(rng.integers(1, 8))
            exclude = int(rng.choice(store.ids())) if rng.random() < 0.3 else None
            scores, ids = _best_of(store, query, m, exclude)
            expected = _best_of(_weighed_anew(store), query, m, exclude)
            assert np.array_equal(scores, expected[0]), history
            assert np.array_equal(ids, expected[1]), history
    assert len(bounded) > 300  # segment scorings from bounds


def test_a_bounded_state_answers_threads_at_once_and_is_freed_when_dropped(
        monkeypatch):
    """Eight threads query one bounded state at once (each needing exact norms
    that another may be computing): every answer is the one of the same state
    with every norm computed. A dropped state is freed at once, without
    waiting for the garbage collector (its bounds do not refer back to it)."""
    import functools
    import gc
    import weakref
    from concurrent.futures import ThreadPoolExecutor

    from cvsearch import store as store_module

    for name in ("BOUND_SEGMENT_COST", "BOUND_ROW_COST", "BOUND_READ_COST"):
        monkeypatch.setattr(store_module, name, 0)
    monkeypatch.setattr(store_module, "EXACT_ROWS_SHARE", 1.0)  # row by row
    images = random_images(300, seed=4)
    store = store_of([images[:100], images[100:200], images[200:]])
    store.weights()
    changed, _ = store.add(*zip(*random_images(1, seed=5)))
    changed = changed.remove([7])
    queries = random_images(16, seed=8)
    expected = [_best_of(_weighed_anew(changed), q, 5) for q in queries]
    ask = functools.partial(_best_of, changed, m=5)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, queries))
    assert changed._weights is None and changed._plan
    for (scores, ids), (want_scores, want_ids) in zip(answers, expected):
        assert np.array_equal(scores, want_scores) and np.array_equal(ids, want_ids)
    gc.disable()
    try:
        dropped = weakref.ref(changed)
        del changed, ask, pool
        assert dropped() is None
    finally:
        gc.enable()
