import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import homogeneity_score

from cvsearch.vocabulary import Vocabulary, coarse_cells, sample_rows

X, _ = make_blobs(n_samples=6000, n_features=128, centers=300, random_state=42)
X = X.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    """1000 words learnt on ``X`` once for the tests below (a fit takes seconds),
    in both forms: an inverted file over 32 cells, and exact (no cells)."""
    return {0: Vocabulary(1000, exact_below=0, random_state=0).fit(X),
            4096: Vocabulary(1000, exact_below=4096, random_state=0).fit(X)}


def with_params(vocabulary, **params):
    """``vocabulary`` with other search parameters (``n_probe``), as loaded."""
    return Vocabulary.from_state({**vocabulary.get_params(), **params},
                                 vocabulary.get_state())


def is_nearest(data, centers, words):
    """True where words[i] is a nearest centre of data[i] (ties allowed)."""
    d = ((data[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return np.isclose(d[np.arange(len(d)), words], d.min(1), rtol=1e-4, atol=1e-3)


def test_exact_assignment_is_the_nearest_centre():
    vocabulary = Vocabulary(50, random_state=0).fit(X)
    assert vocabulary.centers_.shape == (50, 128)
    words = vocabulary.predict(X[:500])
    assert words.dtype == np.int32
    assert is_nearest(X[:500], vocabulary.centers_, words).all()


def test_inverted_file_search_agrees_with_exact(fitted):
    vocabulary = with_params(fitted[0], n_probe=4)
    assert len(vocabulary.cell_centers_) == 32
    exact = vocabulary.predict_exact(X)
    assert is_nearest(X[:300], vocabulary.centers_, exact[:300]).all()
    assert (vocabulary.predict(X) == exact).mean() >= 0.9
    with pytest.raises(AttributeError, match="n_probe"):
        vocabulary.n_probe = 1  # would change words under an index that used it
    everywhere = Vocabulary.from_state(  # probing every cell is exact
        {**vocabulary.get_params(), "n_probe": len(vocabulary.cell_centers_)},
        vocabulary.get_state())
    assert np.array_equal(everywhere.predict(X), exact)
    with pytest.raises(ValueError, match="already fitted"):
        vocabulary.fit(X)


def test_reproducible_with_random_state():
    a = Vocabulary(40, random_state=3).fit(X)
    b = Vocabulary(40, random_state=3).fit(X)
    assert np.array_equal(a.centers_, b.centers_)


def test_binary_orb_vocabulary():
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    # Each descriptor: a prototype with a few bits flipped.
    data = prototypes[rng.integers(0, 20, 3000)]
    flips = np.packbits(rng.random((3000, 256)) < 0.03, axis=1)
    data = data ^ flips
    vocabulary = Vocabulary(30, random_state=0).fit(data)
    assert vocabulary.binary_ and vocabulary.centers_.shape == (30, 256)
    assert vocabulary.descriptor_dim == 32
    # Every word holds the noisy copies of a single prototype.
    owner = np.argmin(np.unpackbits(data[:, None] ^ prototypes[None], axis=2).sum(2), 1)
    assert homogeneity_score(owner, vocabulary.predict(data)) > 0.99
    with pytest.raises(ValueError, match="dim 32"):
        vocabulary.predict(X[:5])



def test_orb_words_from_the_inverted_file_are_the_float64_nearest(monkeypatch):
    # ORB's bits, unpacked, are integers too (256 of 0 or 1): where the CPU has
    # them, the 16-bit scan, 256 coordinates long. With every cell probed each
    # string gets its float64 nearest word, as the numpy path gives it.
    import cvsearch.vocabulary as vocabulary_module

    rng = np.random.default_rng(7)
    prototypes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    data = prototypes[rng.integers(0, 300, 4000)] ^ np.packbits(
        rng.random((4000, 256)) < 0.05, axis=1)
    vocabulary = Vocabulary(400, exact_below=0, random_state=0).fit(data)
    everywhere = with_params(vocabulary, n_probe=len(vocabulary.cell_centers_))
    bits = np.unpackbits(data[:500], axis=1).astype(np.float32)
    expected = float64_reference(bits, vocabulary.centers_)
    assert np.array_equal(everywhere.predict(data[:500]), expected)
    fast = vocabulary.predict_two(data[:500])
    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", False)
    plain = vocabulary.predict_two(data[:500])
    assert np.array_equal(fast[0], plain[0])
    assert (fast[1] == plain[1]).mean() >= 0.99

def test_errors(fitted):
    with pytest.raises(ValueError, match="n_words"):
        Vocabulary(1)
    with pytest.raises(TypeError, match="n_words"):
        Vocabulary("100")
    with pytest.raises(ValueError, match=r"got 6000 training descriptors.*n_words=7000"):
        Vocabulary(7000).fit(X)
    with pytest.raises(NotFittedError):
        Vocabulary(10).predict(X)
    vocabulary = Vocabulary(10, random_state=0).fit(X)
    with pytest.raises(ValueError, match="dim 128"):
        vocabulary.predict(X[:, :64])
    # a NaN, or a value beyond float32, has no nearest word: refused, not word 0
    for bad in (np.nan, np.inf, 1e39):
        data = X[:5].astype(np.float64)
        data[2, 7] = bad
        for vocab in (vocabulary, fitted[0]):  # exact, and the inverted file
            for predict in (vocab.predict, vocab.predict_two, vocab.predict_exact):
                with pytest.raises(ValueError, match="NaN or infinity"):
                    predict(data)


def test_the_coarse_cells_can_be_more_than_the_square_root(fitted):
    vocabulary = Vocabulary(1000, exact_below=0, n_cells=64, n_probe=8,
                            random_state=0).fit(X)
    assert len(vocabulary.cell_centers_) == 64 and vocabulary.get_params()["n_cells"] == 64
    exact = vocabulary.predict_exact(X)
    assert (vocabulary.predict(X) == exact).mean() >= 0.9
    everywhere = Vocabulary.from_state({**vocabulary.get_params(), "n_probe": 64},
                                       vocabulary.get_state())
    assert np.array_equal(everywhere.predict(X), exact)
    # the same words, cells made again over them: another coarse quantiser
    default = with_params(fitted[0], n_probe=4)
    cell_centers, word_cells = coarse_cells(default.centers_, 64, 0)
    assert cell_centers.shape == (64, 128) and word_cells.shape == (1000,)
    with pytest.raises(ValueError, match="n_cells"):
        coarse_cells(default.centers_, 0)
    with pytest.raises(ValueError, match="n_cells"):
        Vocabulary(1000, n_cells=0)
    recelled = Vocabulary.from_state(
        {**default.get_params(), "n_cells": 64, "n_probe": 64},
        {**default.get_state(), "cell_centers": cell_centers, "word_cells": word_cells})
    assert np.array_equal(recelled.predict(X), default.predict_exact(X))
    # parameters saved before n_cells existed: the cells are the saved ones
    old = default.get_params()
    del old["n_cells"]
    assert np.array_equal(Vocabulary.from_state(old, default.get_state()).predict(X),
                          default.predict(X))


def test_state_round_trip_and_validation():
    vocabulary = Vocabulary(300, exact_below=0, random_state=0).fit(X)
    state = vocabulary.get_state()
    copy = Vocabulary.from_state(vocabulary.get_params(), state)
    assert np.array_equal(copy.predict(X), vocabulary.predict(X))
    bad = dict(state, word_cells=state["word_cells"] + 1000)
    with pytest.raises(ValueError, match="word_cells"):
        Vocabulary.from_state(vocabulary.get_params(), bad)
    bad = dict(state, centers=state["centers"][:10])
    with pytest.raises(ValueError, match="centers"):
        Vocabulary.from_state(vocabulary.get_params(), bad)


def test_sample_rows_is_bounded_and_drawn_from_the_inputs():
    arrays = [np.full((n, 2), i, np.float32) for i, n in enumerate([5, 50, 500])]
    rng = np.random.default_rng(0)
    sample = sample_rows(arrays, 100, rng)
    assert sample.shape == (100, 2)
    counts = np.bincount(sample[:, 0].astype(int), minlength=3)
    assert counts[2] > counts[1] > counts[0] - 1
    assert len(sample_rows(arrays, 10_000, rng)) == 555


def tied_descriptors(vocabulary, pairs):
    """Midpoints of pairs of centres, rounded to float32: in exact arithmetic each
    is as far from one centre as from the other (up to the rounding of the
    midpoint, which the float64 reference below measures)."""
    c = vocabulary.centers_.astype(np.float64)
    return ((c[pairs[:, 0]] + c[pairs[:, 1]]) / 2).astype(np.float32)


def float64_reference(data, centers):
    """Nearest centre in float64; ties go to the smaller word id."""
    d = ((data.astype(np.float64)[:, None, :]
          - centers.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1)


@pytest.mark.parametrize("exact_below", [4096, 0])
def test_near_ties_are_decided_in_float64_whatever_the_blas_rounding(exact_below,
                                                                     fitted):
    # float32 distances from a matrix product round differently with the BLAS
    # thread count, so a descriptor almost equally far from two centres could get
    # either word in a serial and a parallel build. Such near ties are decided in
    # float64 instead: the words are those of the float64 reference, everywhere.
    vocabulary = with_params(fitted[exact_below], n_probe=32)
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, 1000, (400, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    data = tied_descriptors(vocabulary, pairs)
    # n_probe covers every cell, so the inverted file is exact too
    expected = float64_reference(data, vocabulary.centers_)
    assert np.array_equal(vocabulary.predict(data), expected)
    assert np.array_equal(vocabulary.predict_exact(data), expected)
    # and the answer of a row does not depend on the rows around it
    order = rng.permutation(len(data))
    assert np.array_equal(vocabulary.predict(data[order]), expected[order])


def twin_vocabulary(vocabulary):
    """``vocabulary`` with words made (nearly) identical in threes, as k-means
    leaves them where its training held repeated descriptors (screenshots, text,
    synthetic pictures): in each of 20 cells, two more words moved onto its
    first word (one 1e-4 away per coordinate, one exactly on it), and one word
    of another cell moved 1e-4 away. Returns it and the 20 twinned centres."""
    state = dict(vocabulary.get_state())
    centers = state["centers"].copy()
    cells = state["word_cells"]
    rng = np.random.default_rng(4)
    twinned = []
    for cell in range(20):
        members = np.flatnonzero(cells == cell)
        first, near, same = members[:3]
        other = np.flatnonzero(cells == cell + 1)[-1]
        centers[near] = centers[first] + rng.choice([-1e-4, 1e-4], centers.shape[1])
        centers[same] = centers[first]
        centers[other] = centers[first] + rng.choice([-1e-4, 1e-4], centers.shape[1])
        twinned.append(first)
    state["centers"] = centers
    return Vocabulary.from_state(vocabulary.get_params(), state), centers[twinned]


@pytest.mark.parametrize("use_compiled", [True, False])
def test_words_that_are_nearly_one_centre_are_settled_in_float64(monkeypatch, fitted,
                                                                 use_compiled):
    # Descriptors near three (nearly) identical centres of one cell tie between
    # all three, not only between the cell's two nearest: each still gets the
    # float64 nearest word (the smaller id where two centres are equal).
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    twins, twinned = twin_vocabulary(fitted[0])
    rng = np.random.default_rng(5)
    data = (np.repeat(twinned, 25, axis=0)
            + rng.normal(0, 0.3, (25 * len(twinned), 128))).astype(np.float32)
    expected = float64_reference(data, twins.centers_)
    assert len(np.unique(expected)) > 40  # the ties go several ways
    vocabulary = with_params(twins, n_probe=32)  # every cell: a twin is elsewhere
    assert np.array_equal(vocabulary.predict(data), expected)
    assert np.array_equal(vocabulary.predict_two(data)[0], expected)


@pytest.mark.parametrize("use_compiled", [True, False])
def test_near_ties_at_the_probe_boundary_use_the_float64_cells(fitted, monkeypatch,
                                                               use_compiled):
    # With few probes, which cells a descriptor searches is itself a decision on
    # float32 distances; near ties there are settled in float64 as well, in the
    # compiled loop and in numpy alike.
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    vocabulary = with_params(fitted[0], n_probe=1, probe_ratio=None)
    cells = vocabulary.cell_centers_.astype(np.float64)
    rng = np.random.default_rng(2)
    pairs = rng.integers(0, len(cells), (300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    data = ((cells[pairs[:, 0]] + cells[pairs[:, 1]]) / 2).astype(np.float32)
    cell_d = ((data.astype(np.float64)[:, None] - cells[None]) ** 2).sum(-1)
    probed = cell_d.argmin(1)  # ties: the smaller cell
    centers = vocabulary.centers_.astype(np.float64)
    expected = []
    for row, cell in zip(data, probed):
        members = np.flatnonzero(vocabulary.word_cells_ == cell)
        d = ((row.astype(np.float64) - centers[members]) ** 2).sum(-1)
        expected.append(members[d.argmin()])
    assert np.array_equal(vocabulary.predict(data), expected)


def probed_in_float64(vocabulary, data):
    """The cells each row of ``data`` probes, by the rule in float64: of the
    cells that hold words, its ``n_probe`` nearest and those within
    ``probe_ratio`` of its nearest's squared distance, up to ``4 * n_probe``
    (ties: the smaller cell)."""
    held = np.unique(vocabulary.word_cells_)  # cells without words are not probed
    cells = vocabulary.cell_centers_[held].astype(np.float64)
    d = ((data.astype(np.float64)[:, None] - cells[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    fewest = min(vocabulary.n_probe, len(cells))
    count = np.clip((d <= vocabulary.probe_ratio * d.min(1, keepdims=True)).sum(1),
                    fewest, min(4 * vocabulary.n_probe, len(cells)))
    return [held[order[i, :count[i]]] for i in range(len(data))]


def nearest_in_cells(vocabulary, data, probed):
    """Each row's float64 nearest word among the words of its ``probed`` cells
    (ties: the smaller word)."""
    centers = vocabulary.centers_.astype(np.float64)
    found = []
    for row, cells in zip(data, probed):
        members = np.flatnonzero(np.isin(vocabulary.word_cells_, cells))
        found.append(members[((row.astype(np.float64) - centers[members]) ** 2
                              ).sum(-1).argmin()])
    return np.array(found)


@pytest.mark.parametrize("use_compiled", [True, False])
def test_cells_at_the_probe_ratios_limit_are_chosen_in_float64(fitted, monkeypatch,
                                                             use_compiled):
    # A descriptor on the line between two cell centres, where the farther one's
    # squared distance is probe_ratio times the nearer's: whether that cell is
    # searched is a near tie of float32 distances, settled in float64.
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    vocabulary = with_params(fitted[0], n_probe=1, probe_ratio=1.45)
    cells = vocabulary.cell_centers_.astype(np.float64)
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, len(cells), (400, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    share = 1 / (1 + np.sqrt(1.45))  # |x - c1|^2 * 1.45 = |x - c2|^2
    data = (cells[pairs[:, 0]] + share * (cells[pairs[:, 1]] - cells[pairs[:, 0]])
            ).astype(np.float32)
    probed = probed_in_float64(vocabulary, data)
    assert len({len(p) for p in probed}) > 1  # the limit goes both ways
    assert np.array_equal(vocabulary.predict(data),
                          nearest_in_cells(vocabulary, data, probed))


@pytest.mark.parametrize("use_compiled", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 1.2, 1.45, 3.0])
def test_the_probe_ratio_searches_the_cells_of_its_rule(fitted, monkeypatch, ratio,
                                                        use_compiled):
    # Descriptors near the training data and far from it: the words are the
    # float64 nearest among the cells the rule chooses in float64, in the
    # compiled loop and in numpy alike.
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    vocabulary = with_params(fitted[0], n_probe=2, probe_ratio=ratio)
    rng = np.random.default_rng(4)
    data = np.concatenate([X[rng.choice(len(X), 150, replace=False)]
                           + rng.normal(0, 0.5, (150, 128)),
                           rng.normal(0, 3, (50, 128))]).astype(np.float32)
    probed = probed_in_float64(vocabulary, data)
    assert np.array_equal(vocabulary.predict(data),
                          nearest_in_cells(vocabulary, data, probed))


@pytest.mark.parametrize("root", [False, True])
def test_the_tie_tolerance_covers_float32_rounding_with_room_to_spare(root):
    # Near ties are settled in float64 when two float32 distances are closer than
    # Vocabulary._tolerance. That is safe only if two roundings of the float32
    # product (with any BLAS split) differ by less: each is within the maximum
    # error measured here, so their difference is within twice it, which must
    # stay below a quarter of the tolerance. Descriptors: SIFT-like (non-negative,
    # unit norm clipped at 0.2, scaled to OpenCV's norm 512) or RootSIFT.
    rng = np.random.default_rng(3)
    raw = rng.gamma(0.3, size=(3000, 128))
    sift = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    sift = np.minimum(sift, 0.2)
    sift = 512 * sift / np.linalg.norm(sift, axis=1, keepdims=True)
    data = np.sqrt(sift / sift.sum(1, keepdims=True)) if root else sift
    data = data.astype(np.float32)
    # centres: means of random groups of descriptors, as k-means makes them
    groups = rng.permutation(np.arange(len(data)) % 500)  # six per centre
    centers = np.stack([data[groups == g].mean(0) for g in range(500)]).astype(
        np.float32)
    vocabulary = Vocabulary.from_state(
        {**Vocabulary(500).get_params()},
        {"centers": centers, "cell_centers": np.zeros((0, 128), np.float32),
         "word_cells": np.zeros(0, np.int32), "binary": np.array(False)})
    float32 = data @ vocabulary._centers_times_minus_2.T + vocabulary._center_sqnorms
    exact = (-2 * data.astype(np.float64) @ centers.astype(np.float64).T
             + (centers.astype(np.float64) ** 2).sum(1))
    error = np.abs(float32 - exact).max(1)
    tolerance = vocabulary._tolerance(vocabulary._row_sqnorms(data),
                                      vocabulary._center_sqnorms)
    assert np.all(2 * error <= tolerance / 4)
    # the compiled scan sums in two chains of 64 products per word (numba: the
    # [test] extra): its two nearest words' distances are as close
    cells = Vocabulary.from_state(
        {**Vocabulary(500).get_params(), "n_probe": 1},
        {"centers": centers, "cell_centers": centers.mean(0, keepdims=True),
         "word_cells": np.zeros(500, np.int32), "binary": np.array(False)})
    words, second, best, second_best = cells.predict_two(data)
    rows = np.arange(len(data))
    exact += (data.astype(np.float64) ** 2).sum(1, keepdims=True)
    for found, distance in ((words, best), (second, second_best)):
        assert np.all(2 * np.abs(distance - exact[rows, found]) <= tolerance / 4)


@pytest.mark.parametrize("exact_below, n_probe", [(4096, 8), (0, 32)])
def test_predict_two_gives_the_word_and_the_next_nearest(exact_below, n_probe, fitted):
    """The first word is predict's; the second the next nearest centre (all
    cells probed: exact), with their squared distances."""
    vocabulary = with_params(fitted[exact_below], n_probe=n_probe)
    data = X[:400]
    words, second, best, second_best = vocabulary.predict_two(data)
    assert np.array_equal(words, vocabulary.predict(data))
    d = ((data[:, None, :].astype(np.float64)
          - vocabulary.centers_[None].astype(np.float64)) ** 2).sum(-1)
    ranked = np.sort(d, axis=1)
    assert np.all(second != words) and second.min() >= 0
    assert np.isclose(d[np.arange(400), second], ranked[:, 1], rtol=1e-3).all()
    assert np.allclose(best, ranked[:, 0], rtol=1e-3, atol=1e-2)
    assert np.allclose(second_best, ranked[:, 1], rtol=1e-3, atol=1e-2)
    empty = vocabulary.predict_two(np.zeros((0, 128), np.float32))
    assert all(len(a) == 0 for a in empty)


def test_words_of_many_descriptors_at_once_are_the_words_of_each():
    # Adding assigns a chunk of images in one call (ImageWords.of_many): a
    # descriptor's word must not depend on which others share the call, although
    # the matrix products that compare them round differently.
    rng = np.random.default_rng(3)
    X = rng.random((6000, 128), dtype=np.float32) * 100
    vocabulary = Vocabulary(1000, exact_below=0, n_probe=4, random_state=0).fit(X)
    queries = rng.random((900, 128), dtype=np.float32) * 100
    together = vocabulary.predict_two(queries)
    for start, stop in [(0, 1), (1, 40), (40, 900)]:
        alone = vocabulary.predict_two(queries[start:stop])
        np.testing.assert_array_equal(together[0][start:stop], alone[0])
        # distances round with the product's shape; the words do not move
        np.testing.assert_allclose(together[2][start:stop], alone[2], rtol=1e-5)
    # and the inverted file finds what brute force over its probed cells does:
    # exact when every cell is probed
    everything = Vocabulary.from_state(
        {**vocabulary.get_params(), "n_probe": len(vocabulary.cell_centers_)},
        vocabulary.get_state())
    first, second, _, _ = everything.predict_two(queries)
    exact = everything.predict_exact(queries)
    np.testing.assert_array_equal(first, exact)
    assert (second != first).all() and (second >= 0).all()


def test_the_compiled_scan_assigns_the_words_numpy_assigns(monkeypatch, fitted):
    """numba's scan of the inverted file sums in another order than BLAS; the
    near ties it could order otherwise are settled in float64, so every word is
    the same, ties included."""
    import cvsearch.vocabulary as vocabulary_module

    assert vocabulary_module._compiled_scan() is not None  # numba: [test]
    vocabulary = with_params(fitted[0], n_probe=4)
    everywhere = with_params(vocabulary, n_probe=32)
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, 1000, (300, 2))
    tied = tied_descriptors(vocabulary, pairs[pairs[:, 0] != pairs[:, 1]])
    data = np.concatenate([X, tied])
    answers = {}
    for use in (True, False):
        monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use)
        answers[use] = (vocabulary.predict_two(data), everywhere.predict(tied))
    (fast, fast_tied), (plain, plain_tied) = answers[True], answers[False]
    assert np.array_equal(fast[0], plain[0])
    assert np.array_equal(fast_tied, plain_tied)
    assert np.array_equal(fast_tied, float64_reference(tied, vocabulary.centers_))
    # the second words are not settled: where two words nearly tie, or the
    # second and third, they may differ (not more than that)
    assert (fast[1][:len(X)] == plain[1][:len(X)]).mean() >= 0.999
    np.testing.assert_allclose(fast[2], plain[2], rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("n_rows", [1, 2, 3, 5, 13])
@pytest.mark.parametrize("use_compiled", [True, False])
def test_cells_and_blocks_of_any_size_give_the_two_nearest_words(monkeypatch, n_rows,
                                                                  use_compiled):
    # The compiled scan takes four descriptors against a group of 8 or 16 words
    # at a time: cells of one to 33 words, and descriptors that are not a
    # multiple of four, leave partial blocks and padded groups whose repeated
    # rows and padding must not be kept (a word kept twice would be its own
    # second word).
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    rng = np.random.default_rng(n_rows)
    sizes = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33])
    word_cells = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    centers = rng.normal(0, 10, (len(word_cells), 128)).astype(np.float32)
    cell_centers = np.stack([centers[word_cells == cell].mean(0)
                             for cell in range(len(sizes))]).astype(np.float32)
    vocabulary = Vocabulary.from_state(
        {**Vocabulary(len(word_cells)).get_params(), "n_probe": len(sizes)},
        {"centers": centers, "cell_centers": cell_centers, "word_cells": word_cells,
         "binary": np.array(False)})
    data = rng.normal(0, 10, (n_rows, 128)).astype(np.float32)
    distances = ((data.astype(np.float64)[:, None] - centers[None]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1)
    words, second, best, second_best = vocabulary.predict_two(data)
    assert np.array_equal(words, nearest[:, 0])
    assert np.array_equal(second, nearest[:, 1])
    rows = np.arange(n_rows)
    np.testing.assert_allclose(best, distances[rows, nearest[:, 0]], rtol=1e-4)
    np.testing.assert_allclose(second_best, distances[rows, nearest[:, 1]], rtol=1e-4)


@pytest.mark.parametrize("use_compiled", [True, False])
def test_cells_without_words_are_never_probed(monkeypatch, use_compiled):
    # A coarse k-means over centres with fewer distinct points than cells (a
    # vocabulary of repeated descriptors), or a vocabulary loaded from arrays, can
    # leave cells without words. Probing one found no word, and a descriptor
    # whose probed cells were all empty got word 0, with no error: the probed
    # cells are the nearest that hold words.
    import warnings

    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    rng = np.random.default_rng(4)
    centers = rng.normal(0, 10, (3000, 128)).astype(np.float32)
    word_cells = (np.arange(3000) % 10).astype(np.int32) * 2  # odd cells empty
    cell_centers = np.stack([centers[word_cells == c].mean(0) if c % 2 == 0
                             else np.full(128, 40.0 + c) for c in range(20)]
                            ).astype(np.float32)
    state = {"centers": centers, "cell_centers": cell_centers,
             "word_cells": word_cells, "binary": np.array(False)}
    data = np.concatenate([np.full((3, 128), 41.0), np.full((2, 128), 45.0),
                           centers[:5] + 0.1]).astype(np.float32)
    for n_probe, expected in [(10, float64_reference(data, centers)),
                              (1, None), (20, float64_reference(data, centers))]:
        vocabulary = Vocabulary.from_state({**Vocabulary(3000).get_params(),
                                            "n_probe": n_probe, "probe_ratio": None},
                                           state)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no inf - inf on the way
            words, second, best, _ = vocabulary.predict_two(data)
        if expected is None:  # one probe: the nearest cell that holds words
            cells = cell_centers.astype(np.float64)[::2]
            nearest = ((data[:, None].astype(np.float64) - cells[None]) ** 2
                       ).sum(-1).argmin(1) * 2
            members = [np.flatnonzero(word_cells == c) for c in nearest]
            expected = [m[((centers[m].astype(np.float64) - x) ** 2).sum(1).argmin()]
                        for m, x in zip(members, data.astype(np.float64))]
        assert np.array_equal(words, expected)
        assert np.array_equal(vocabulary.predict(data), expected)
        assert np.isfinite(best).all() and (second >= 0).all()
    # the vocabulary's own arrays are as given: saved and loaded alike
    assert np.array_equal(vocabulary.get_state()["cell_centers"], cell_centers)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n_cells=st.integers(1, 12),
       distinct=st.integers(1, 40), scale=st.sampled_from([1.0, 100.0, 512.0]),
       integers=st.booleans())
def test_with_every_cell_probed_the_inverted_file_is_the_float64_nearest(
        seed, n_cells, distinct, scale, integers):
    # Any vocabulary (repeated centres, cells without words, one cell) and any
    # descriptors (centres themselves, midpoints, far points, zeros): probing
    # every cell gives the float64 nearest word, ties to the smaller id, in the
    # compiled scan (in float32, or in 16-bit integers for integer descriptors)
    # and in numpy alike; one probe, the nearest word of the nearest
    # cell that holds words; one probe and a ratio, the nearest word of the cells
    # the rule chooses in float64.
    import cvsearch.vocabulary as vocabulary_module

    rng = np.random.default_rng(seed)
    n_words = 64
    base = rng.normal(0, 1, (distinct, 128)) * scale / 10
    centers = np.abs(base[rng.integers(0, distinct, n_words)]).astype(np.float32)
    held = rng.choice(n_cells, int(rng.integers(1, n_cells + 1)), replace=False)
    word_cells = rng.choice(held, n_words).astype(np.int32)  # some cells empty
    cell_centers = (np.abs(rng.normal(0, 1, (n_cells, 128))) * scale / 10).astype(
        np.float32)
    state = {"centers": centers, "cell_centers": cell_centers,
             "word_cells": word_cells, "binary": np.array(False)}
    pairs = rng.integers(0, n_words, (20, 2))
    data = np.concatenate([centers[:10], (centers[pairs[:, 0]] + centers[pairs[:, 1]]) / 2,
                           rng.random((20, 128)) * scale, np.zeros((2, 128))]
                          ).astype(np.float32)
    if integers:  # as SIFT's: the 16-bit scan where the CPU has it
        data = np.rint(data)
    expected = float64_reference(data, centers)
    # one probe: the float64 nearest word of the float64 nearest cell with words
    cells = np.unique(word_cells)
    cell = cells[float64_reference(data, cell_centers[cells])]
    nearest_in_one_cell = [np.flatnonzero(word_cells == c)[float64_reference(
        x[None], centers[word_cells == c])[0]] for c, x in zip(cell, data)]
    params = Vocabulary(n_words).get_params()
    for use in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(vocabulary_module, "USE_COMPILED", use)
            everything = Vocabulary.from_state({**params, "n_probe": n_cells}, state)
            words, second, _, _ = everything.predict_two(data)
            assert np.array_equal(words, expected)
            assert np.array_equal(everything.predict(data), expected)
            assert ((second >= 0) & (second != words)).all()
            one = Vocabulary.from_state({**params, "n_probe": 1, "probe_ratio": None},
                                        state).predict(data)
            assert np.array_equal(one, nearest_in_one_cell)
            ratio = Vocabulary.from_state({**params, "n_probe": 1, "probe_ratio": 1.45},
                                          state)
            assert np.array_equal(ratio.predict(data), nearest_in_cells(
                ratio, data, probed_in_float64(ratio, data)))


def test_the_scan_products_are_each_row_against_each_word_of_a_group():
    # The compiled scan's block of products (LLVM vector IR): four rows against a
    # group of words laid out coordinate by coordinate, plus the words' norms,
    # each row's distances written where asked, nothing beyond them; the bits
    # returned are the words below each row's threshold.
    numba = pytest.importorskip("numba")  # the 'fast' extra; [test] has it
    from cvsearch import _simd

    @numba.njit
    def block(rows, group, sqnorms, thresholds, out):
        addresses = np.empty(_simd.ROWS, np.int64)
        for r in range(_simd.ROWS):
            addresses[r] = rows.ctypes.data + r * rows.shape[1] * 4
        return _simd.dot_rows(addresses.ctypes.data, group.ctypes.data,
                              sqnorms.ctypes.data, thresholds.ctypes.data,
                              out.ctypes.data, out.shape[1], rows.shape[1])

    rng = np.random.default_rng(0)
    for dim in (2, 128, 256):
        rows = rng.normal(0, 100, (_simd.ROWS, dim)).astype(np.float32)
        group = rng.normal(0, 100, (dim, _simd.LANES)).astype(np.float32)
        sqnorms = rng.normal(0, 100 * dim, _simd.LANES).astype(np.float32)
        out = np.full((_simd.ROWS, _simd.LANES + 5), -7.0, np.float32)
        exact = rows.astype(np.float64) @ group.astype(np.float64) + sqnorms
        thresholds = np.median(exact, axis=1).astype(np.float32)
        bits = block(rows, group, sqnorms, thresholds, out)
        scale = np.abs(rows).astype(np.float64) @ np.abs(group).astype(np.float64)
        assert np.all(np.abs(out[:, :_simd.LANES] - exact)
                      <= 2.0 ** -16 * (scale + np.abs(sqnorms)))
        assert np.all(out[:, _simd.LANES:] == -7.0)
        below = out[:, :_simd.LANES] < thresholds[:, None]
        assert 0 < below.sum() < below.size
        expected = sum(1 << (r * _simd.LANES + lane) for r, lane in zip(*np.nonzero(below)))
        assert bits & (2 ** 64 - 1) == expected


@pytest.mark.parametrize("kept", [3, 4])
def test_the_scan_keeps_each_rows_nearest_words_equal_ones_by_position(kept):
    # The compiled scan keeps each row's three nearest words of its probed
    # cells (four for the second word), nearest first and, where distances are
    # equal, the smaller position first; a fourth column it does not keep is
    # left as it was. Small integers: every distance exact, and many equal.
    numba = pytest.importorskip("numba")  # noqa: F841 (the 'fast' extra)
    from cvsearch import _simd

    rng = np.random.default_rng(kept)
    sizes = np.array([1, 3, 5, 16, 17, 33, 2])
    word_cells = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    centers = np.zeros((len(word_cells), 128), np.float32)  # 16 distinct words
    centers[:, :4] = rng.integers(0, 2, (len(word_cells), 4))
    vocabulary = Vocabulary.from_state(
        {**Vocabulary(len(word_cells)).get_params(), "n_probe": 3, "probe_ratio": None},
        {"centers": centers, "cell_centers": rng.normal(1, 1, (len(sizes), 128))
         .astype(np.float32), "word_cells": word_cells, "binary": np.array(False)})
    data = rng.integers(0, 3, (11, 128)).astype(np.float32)
    data[:, 4:] = 0
    slot_rows, slot_cells = vocabulary._probed_cells(data, vocabulary._row_sqnorms(data))
    order = np.argsort(slot_cells, kind="stable")
    bounds = np.searchsorted(slot_cells[order], np.arange(len(sizes) + 1))
    group_bounds, groups, group_sqnorms = vocabulary._word_groups(_simd.LANES)
    best = np.full((len(data), _simd.KEPT), np.inf, np.float32)
    position = np.full((len(data), _simd.KEPT), -1, np.int32)
    scan = _simd.scan_cells_four if kept == 4 else _simd.scan_cells
    scan(data, slot_rows[order], bounds.astype(np.int64), vocabulary._cell_bounds,
         group_bounds, groups, group_sqnorms, 0.0, best, position)
    sorted_words = centers[vocabulary._cell_order].astype(np.float64)
    for row in range(len(data)):
        cells = slot_cells[slot_rows == row]
        positions = np.concatenate([np.arange(vocabulary._cell_bounds[c],
                                              vocabulary._cell_bounds[c + 1])
                                    for c in cells])
        d = (sorted_words[positions] ** 2).sum(1) - 2 * sorted_words[positions] @ data[row]
        nearest = np.lexsort((positions, d))[:kept]
        assert np.array_equal(position[row, :len(nearest)], positions[nearest])
        assert np.array_equal(best[row, :len(nearest)], d[nearest])
        assert np.all(position[row, len(nearest):] == -1)
        assert np.all(best[row, len(nearest):] == np.inf)
    assert sum(len(set(row)) < kept for row in best[:, :kept]) > 5  # ties were there


def test_lowest_bit_is_the_position_of_the_lowest_set_bit():
    # The scan finds each flagged word with it: every bit of an int64, the sign
    # bit included, and 64 where no bit is set.
    numba = pytest.importorskip("numba")
    from cvsearch import _simd

    lowest = numba.njit(lambda x: _simd.lowest_bit(x))
    rng = np.random.default_rng(0)
    values = [0, 1, -1, -2 ** 63, 2 ** 62, 3 << 40]
    values += [int(v) for v in rng.integers(-2 ** 63, 2 ** 63 - 1, 200, dtype=np.int64)]
    for value in values:
        unsigned = value & (2 ** 64 - 1)
        expected = 64 if unsigned == 0 else (unsigned & -unsigned).bit_length() - 1
        assert lowest(value) == expected


@pytest.mark.parametrize("n_groups", [1, 2])
def test_the_quantized_products_are_exact_integer_sums(n_groups):
    # The 16-bit products (AVX-512BW or AVX2): each row's pairs of coordinates
    # against each word's, summed exactly in int32 at the largest magnitudes the
    # scan allows, then scaled and added to the norms in float32; one group of
    # words at a time, or two side by side (the second's bits written apart).
    numba = pytest.importorskip("numba")
    from cvsearch import _simd

    if not _simd.QUANTIZED:
        pytest.skip("this CPU has neither AVX-512BW nor AVX2")

    @numba.njit
    def block(rows, groups, sqnorms, scale, thresholds, out, second_bits):
        addresses = np.empty(_simd.ROWS, np.int64)
        for r in range(_simd.ROWS):
            addresses[r] = rows.ctypes.data + r * rows.shape[1] * 2
        if groups.shape[0] == 1:
            return _simd.dot_rows_quantized(
                addresses.ctypes.data, groups.ctypes.data, sqnorms.ctypes.data, scale,
                thresholds.ctypes.data, out.ctypes.data, out.shape[1], rows.shape[1])
        return _simd.dot_rows_quantized_two(
            addresses.ctypes.data, groups.ctypes.data, sqnorms.ctypes.data, scale,
            thresholds.ctypes.data, out.ctypes.data, out.shape[1], rows.shape[1],
            second_bits.ctypes.data)

    rng = np.random.default_rng(1)
    lanes = _simd.LANES
    for dim in (2, 128):
        largest = min((2 ** 31 - 1) // (dim * 32767), 32767)
        rows = rng.integers(-largest, largest + 1, (_simd.ROWS, dim)).astype(np.int16)
        rows[0] = largest  # the largest sums there can be
        words = rng.integers(-32767, 32768, (n_groups * lanes, dim)).astype(np.int16)
        words[0] = 32767
        groups = np.ascontiguousarray(words.reshape(n_groups, lanes, dim // 2, 2)
                                      .transpose(0, 2, 1, 3))
        sqnorms = rng.normal(0, 1e6, n_groups * lanes).astype(np.float32)
        sums = rows.astype(np.int64) @ words.T.astype(np.int64)
        assert np.abs(sums).max() < 2 ** 31 and sums[0, 0] > 2 ** 30
        expected = (sums.astype(np.float32) * np.float32(-2 / 128)) + sqnorms
        thresholds = np.median(expected, axis=1).astype(np.float32)
        width = n_groups * lanes
        out = np.full((_simd.ROWS, width + 3), -7.0, np.float32)
        second_bits = np.full(1, -1, np.int64)
        bits = [block(rows, groups, sqnorms, -2 / 128, thresholds, out, second_bits)]
        if n_groups == 2:
            bits.append(second_bits[0])
        assert np.array_equal(out[:, :width], expected)
        assert np.all(out[:, width:] == -7.0)
        below = expected < thresholds[:, None]
        for g in range(n_groups):
            assert int(bits[g]) & (2 ** 64 - 1) == sum(
                1 << int(r * lanes + lane)
                for r, lane in zip(*np.nonzero(below[:, g * lanes:(g + 1) * lanes])))


def one_cell(centers):
    """A vocabulary of ``centers`` in one coarse cell, searched whole."""
    centers = np.asarray(centers, np.float32)
    return Vocabulary.from_state(
        {**Vocabulary(len(centers)).get_params(), "n_probe": 1, "probe_ratio": None},
        {"centers": centers, "cell_centers": centers.mean(0, keepdims=True),
         "word_cells": np.zeros(len(centers), np.int32), "binary": np.array(False)})


@pytest.mark.parametrize("unit", [1.0, 1 / 729.3], ids=["integers", "scaled"])
@pytest.mark.parametrize("use_compiled", [True, False])
def test_words_the_rounding_cannot_tell_apart_are_decided_in_float64(monkeypatch,
                                                                    use_compiled, unit):
    # Descriptors are compared with the words rounded to 16-bit integers: 1/128
    # apart here for integer descriptors (SIFT's), 1/65536 for others, which are
    # rounded too (at unit 1/729.3, as RootSIFT's). Four words within that
    # rounding of a fifth look the same to it, yet a descriptor far from them
    # all is nearer to some of them than to the fifth by more than float32's
    # tolerance: the three words a row keeps from the rounded scan (four with
    # the second word) miss its nearest, and the nearest of those is beyond that
    # tolerance below the last's rounded distance. Each row still gets the
    # float64 nearest word, and the next nearest with it.
    import cvsearch.vocabulary as vocabulary_module

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    dim = 128
    far = np.zeros(dim)
    far[0] = 255.0 * unit  # the largest coordinate: it sets the rounding
    twins = unit * np.array([np.full(dim, step)
                             for step in (0.0, 0.0005, 0.0025, 0.003, 0.0038)])
    data = np.full((6, dim), 255.0 * unit, np.float32)
    data[:, 0] = 0
    data[np.arange(1, 6), np.arange(1, 6)] = 200 * unit  # a few more rows like it
    quantum = 128 if unit == 1 else 65536
    assert np.all(np.rint(twins * quantum) == 0)  # one word, once rounded
    vocabulary = one_cell(np.concatenate([[far], twins]))
    if use_compiled and vocabulary_module._compiled_scan() is not None:
        assert vocabulary._rounded_words().quantum == quantum
    expected = float64_reference(data, vocabulary.centers_)
    assert np.all(expected == 5)  # the last twin
    d = ((data[0].astype(np.float64) - vocabulary.centers_) ** 2).sum(1)
    tolerance = ((data[0].astype(np.float64) ** 2).sum()
                 + (vocabulary.centers_.astype(np.float64) ** 2).sum(1).max()) * 2.0 ** -16
    assert d[1] - d[3] > tolerance and d[5] < d[4] < d[3]  # as described above
    assert np.array_equal(vocabulary.predict(data), expected)
    assert np.array_equal(vocabulary.predict_two(data)[0], expected)
    # a word much nearer than all of them: the twins are the second words
    exact_match = one_cell(np.concatenate([[far], twins, data[:1] + unit]))
    words, second, _, _ = exact_match.predict_two(data)
    assert np.all(words == 6) and np.all(second == 5)


def test_a_descriptor_its_rounding_moves_to_another_word_keeps_its_own():
    # Non-integer descriptors are rounded too (here to 1/16384), and so are the
    # words (here exactly on their grid, so only the data's rounding counts).
    # The first word holds 64 coordinates, the second the other 64; the
    # descriptor's coordinates round down by 0.45 of a step on the first's and
    # up by 0.45 on the second's. Rounded, the descriptor is nearer to the
    # second word, by far more than twice float32's tolerance; it is truly
    # nearer to the first. The bound on the rounding must send it to float64.
    pytest.importorskip("numba")
    from cvsearch import _simd

    if not _simd.QUANTIZED:
        pytest.skip("this CPU has neither AVX-512BW nor AVX2")
    dim, step = 128, 1 / 16384
    first, second = np.arange(64), np.arange(64, 128)
    words = np.zeros((2, dim))
    words[0, first] = words[1, second] = 1414 * step  # equal norms
    steps = np.full(dim, 1000.0)
    steps[second[:57]] += 1  # rounded: 57 steps more on the second's side
    x = steps * step
    x[first] += 0.45 * step  # truly: 0.6 steps more on the first's
    x[second] -= 0.45 * step
    x = x.astype(np.float32)[None]
    vocabulary = one_cell(words)
    row_sqnorms = (x.astype(np.float64) ** 2).sum(1)
    integers, quantum, error, table = vocabulary._as_int16(x, row_sqnorms)
    assert quantum == 16384 and table.error == 0
    exact = ((x.astype(np.float64) - words) ** 2).sum(1)
    rounded = (words ** 2).sum(1) - 2 * (integers / quantum) @ words.T
    tolerance = (row_sqnorms[0] + (words ** 2).sum(1).max()) * 2.0 ** -16
    assert exact[0] < exact[1]
    assert rounded[0, 0] - rounded[0, 1] > 10 * tolerance
    assert vocabulary.predict(x)[0] == 0
    assert vocabulary.predict_two(x)[0][0] == 0


def test_which_descriptors_take_the_quantized_scan(monkeypatch, fitted):
    # Integers (SIFT's) take the 16-bit scan as they are; other values
    # (RootSIFT's, integers too large for its sums, halves) scaled and rounded;
    # with the second word too. The words are numpy's either way.
    pytest.importorskip("numba")
    import cvsearch.vocabulary as vocabulary_module
    from cvsearch import _simd

    if not _simd.QUANTIZED:
        pytest.skip("this CPU has neither AVX-512BW nor AVX2")
    scales = []

    def spy(name, scan):
        def spied(*args):
            scales.append((name, args[7]))
            return scan(*args)
        return spied

    for name in ("scan_cells", "scan_cells_four"):
        monkeypatch.setattr(_simd, name, spy(name, getattr(_simd, name)))
    vocabulary = with_params(fitted[0], n_probe=4)
    rng = np.random.default_rng(6)
    integers = np.rint(X[:300] + rng.normal(0, 2, X[:300].shape)).astype(np.float32)
    cases = [integers, X[:300], integers * 1000, integers + 0.5]
    found = []
    for data in cases:  # each call's first scan (rows it cannot decide go to
        scales.clear()  # the float32 scan after it, which keeps three)
        words = vocabulary.predict(data)
        assert scales[0][0] == "scan_cells" and scales[0][1] != 0
        scales.clear()
        found.append((words, vocabulary.predict_two(data)[:2]))
        assert scales[0][0] == "scan_cells_four" and scales[0][1] != 0
    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", False)
    for data, (words, (first, second)) in zip(cases, found):
        assert np.array_equal(words, vocabulary.predict(data))
        assert np.array_equal(first, words)
        assert np.array_equal(second, vocabulary.predict_two(data)[1])


#: Haswell's features, as NUMBA_CPU_FEATURES names them: AVX2 without AVX-512
HASWELL = ("+avx,+avx2,+bmi,+bmi2,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse2,+sse3,"
           "+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="compiles for older x86 CPUs")
@pytest.mark.parametrize("cpu, features, quantized", [
    ("haswell", "", "False"), ("x86-64", "", "False"), ("haswell", HASWELL, "True")])
def test_the_scan_compiled_for_older_cpus_assigns_the_same_words(tmp_path, cpu, features,
                                                                 quantized):
    # Without AVX-512 the groups hold 8 words; without FMA (x86-64: SSE2 only)
    # LLVM multiplies and adds apart; with AVX2's features named, integer
    # descriptors take 8 words' 16-bit products. Each runs on this machine, in
    # a process of its own that numba compiles for that CPU: the same words as
    # numpy's.
    if features:
        binding = pytest.importorskip("llvmlite.binding")
        if "+avx2" not in binding.get_host_cpu_features().flatten().split(","):
            pytest.skip("this CPU has no AVX2 to run Haswell's instructions")
    script = """
import numpy as np
import cvsearch.vocabulary as vocabulary_module
from cvsearch import _simd
from cvsearch.vocabulary import Vocabulary
rng = np.random.default_rng(1)
centers = np.abs(rng.normal(0, 30, (700, 128))).astype(np.float32)
centers[350:400] = centers[300:350]  # equal words: ties
vocabulary = Vocabulary(700, n_probe=5, exact_below=0, random_state=0).fit(
    np.repeat(centers, 3, axis=0) + rng.normal(0, 1, (2100, 128)).astype(np.float32))
data = np.concatenate([np.abs(rng.normal(0, 30, (300, 128))),
                       vocabulary.centers_[:100]]).astype(np.float32)
assert len(vocabulary.word_cells_) and vocabulary_module._compiled_scan() is not None
fast = [vocabulary.predict_two(data), vocabulary.predict(np.rint(data))]
vocabulary_module.USE_COMPILED = False
plain = [vocabulary.predict_two(data), vocabulary.predict(np.rint(data))]
assert np.array_equal(fast[0][0], plain[0][0])
assert (fast[0][1] == plain[0][1]).mean() >= 0.99
assert np.array_equal(fast[1], plain[1])
print(_simd.LANES, _simd.QUANTIZED)
"""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["8", quantized]


def test_with_numbas_jit_off_words_come_from_the_numpy_scan(tmp_path):
    # NUMBA_DISABLE_JIT (for debugging) runs numba's loops as Python; the scan's
    # LLVM products cannot run so, and the numpy path takes over.
    script = """
import numpy as np
import cvsearch.vocabulary as vocabulary_module
from cvsearch.vocabulary import Vocabulary
rng = np.random.default_rng(2)
centers = np.abs(rng.normal(0, 30, (300, 128))).astype(np.float32)
vocabulary = Vocabulary(300, n_probe=3, exact_below=0, random_state=0).fit(
    np.repeat(centers, 3, axis=0) + rng.normal(0, 1, (900, 128)).astype(np.float32))
data = np.abs(rng.normal(0, 30, (50, 128))).astype(np.float32)
assert vocabulary_module._compiled_scan() is None
print(" ".join(map(str, vocabulary.predict(data))))
"""
    done = subprocess.run([sys.executable, "-c", script],
                          env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rng = np.random.default_rng(2)
    centers = np.abs(rng.normal(0, 30, (300, 128))).astype(np.float32)
    vocabulary = Vocabulary(300, n_probe=3, exact_below=0, random_state=0).fit(
        np.repeat(centers, 3, axis=0) + rng.normal(0, 1, (900, 128)).astype(np.float32))
    data = np.abs(rng.normal(0, 30, (50, 128))).astype(np.float32)
    assert done.stdout.split() == [str(w) for w in vocabulary.predict(data)]


@pytest.mark.parametrize("use_compiled", [True, False])
def test_a_batchs_summary_is_numpys_and_whole_numbers_only_are_taken_as_int16(
        monkeypatch, use_compiled):
    # What the 16-bit scan needs of a batch (|x|^2 per row; and where every
    # value is a whole number within int16, the rows in int16 and |x|_1): the
    # same numbers as numpy's, and whole only where every value is, in every
    # row (a value off in the last row, at the edges of the range, -0.0).
    from cvsearch import vocabulary as vocabulary_module
    from cvsearch.vocabulary import _row_summary

    monkeypatch.setattr(vocabulary_module, "USE_COMPILED", use_compiled)
    if use_compiled:
        pytest.importorskip("numba", reason="the compiled pass needs numba ('fast' extra)")
    rng = np.random.default_rng(0)
    whole = rng.integers(-300, 300, (40, 128)).astype(np.float32)
    whole[3, :4] = [32767, -32767, -0.0, 0]
    expected_sq = (whole.astype(np.float64) ** 2).sum(1)
    sqnorms, integers, l1 = _row_summary(whole)
    assert sqnorms.tobytes() == expected_sq.tobytes()
    if use_compiled:
        assert integers.dtype == np.int16 and np.array_equal(integers, whole)
        assert l1.tobytes() == np.abs(whole).sum(1, dtype=np.float64).tobytes()
    else:
        assert integers is None and l1 is None
    for value in (0.5, 32768, -32768, 1e-3):
        other = whole.copy()
        other[-1, -1] = value
        other_sq, integers, l1 = _row_summary(other)
        assert integers is None and l1 is None
        assert other_sq.tobytes() == (other.astype(np.float64) ** 2).sum(1).tobytes()
    root = np.sqrt(np.abs(whole) / np.abs(whole).sum(1, keepdims=True)).astype(np.float32)
    assert _row_summary(root)[0].tobytes() == (
        root.astype(np.float64) ** 2).sum(1).tobytes()
