import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import homogeneity_score

from cvsearch.vocabulary import Vocabulary, sample_rows

X, _ = make_blobs(n_samples=6000, n_features=128, centers=300, random_state=42)
X = X.astype(np.float32)


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


def test_inverted_file_search_agrees_with_exact():
    vocabulary = Vocabulary(1000, exact_below=0, n_probe=4, random_state=0).fit(X)
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


def test_errors():
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
