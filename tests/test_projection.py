import numpy as np
import pytest

from cvsearch.evaluation import mean_average_precision, relevance
from cvsearch.projection import PCAProjection, TripletProjection, _triplet_gradient


def leave_one_out_map(embeddings, labels) -> float:
    """mAP of each row as a query against all the others, by cosine."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = e @ e.T
    np.fill_diagonal(scores, -np.inf)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
    n_relevant = np.array([np.sum(labels == y) - 1 for y in labels])
    return mean_average_precision(relevance(ranked, labels, labels), n_relevant)


def classes_in_noise(seed, n_classes=20, per_class=20, dim=64, signal=8):
    """Classes that differ only in ``signal`` dimensions, hidden under noise of
    larger variance in the others: raw cosine finds them poorly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (n_classes, signal))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(0, 2.0, (len(labels), dim))
    x[:, :signal] = centres[labels] + rng.normal(0, 0.35, (len(labels), signal))
    mixing, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # not axis-aligned
    return (x @ mixing).astype(np.float32), labels


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard"])
@pytest.mark.parametrize("hidden, similarity_weight", [(0, 0.0), (7, 0.0), (7, 2.0)])
def test_gradient_matches_finite_differences(mining, hidden, similarity_weight):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 10))
    labels = np.repeat(np.arange(6), 4)
    targets = rng.normal(size=(24, 10))
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    params = {"weights": rng.normal(size=(10, 5))}
    if hidden:
        params.update(hidden_weights=rng.normal(size=(10, hidden)),
                      hidden_bias=rng.normal(size=hidden),
                      output_weights=rng.normal(size=(hidden, 5)))

    def loss(p):
        return _triplet_gradient(x, labels, p, 0.5, mining, targets,
                                 similarity_weight)[0]

    total, gradients = _triplet_gradient(x, labels, params, 0.5, mining, targets,
                                         similarity_weight)
    assert total > 0 and set(gradients) == set(params)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(*value.shape):
            step = np.zeros_like(value)
            step[index] = 1e-6
            numeric[index] = (loss({**params, name: value + step})
                              - loss({**params, name: value - step})) / 2e-6
        assert np.allclose(gradients[name], numeric, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard"])
def test_learned_projection_finds_classes_hidden_under_noise(mining):
    """Trained on half of each class, searched on the other half: far above the
    raw descriptors and the principal components it starts from."""
    x, labels = classes_in_noise(0)
    train = np.tile(np.arange(20) < 10, 20)
    projection = TripletProjection(8, mining=mining, steps=600, classes_per_batch=10,
                                   learning_rate=0.01, hidden=0,
                                   similarity_weight=0.0).fit(x[train], labels[train])
    held_out = ~train
    raw = leave_one_out_map(x[held_out], labels[held_out])
    pca = leave_one_out_map(PCAProjection(8).fit(x[train]).transform(x[held_out]),
                            labels[held_out])
    learned = leave_one_out_map(projection.transform(x[held_out]), labels[held_out])
    assert learned > max(raw, pca) + 0.2, (raw, pca, learned)
    assert projection.losses_[-100:].mean() < 0.5 * projection.losses_[:100].mean()


def test_embeddings_are_unit_vectors_and_training_is_reproducible():
    x, labels = classes_in_noise(1, n_classes=6, per_class=6, dim=16, signal=4)
    a = TripletProjection(4, steps=50, classes_per_batch=4, random_state=3)
    b = TripletProjection(4, steps=50, classes_per_batch=4, random_state=3)
    ea, eb = a.fit(x, labels).transform(x), b.fit(x, labels).transform(x)
    assert ea.shape == (36, 4) and ea.dtype == np.float32
    assert np.allclose(np.linalg.norm(ea, axis=1), 1, atol=1e-6)
    assert np.array_equal(ea, eb)
    assert np.allclose(a.transform(x[0]), ea[0], atol=1e-6)  # one descriptor alone
    copy = TripletProjection.from_state(a.get_params(), a.get_state())
    assert np.array_equal(copy.transform(x), ea)


def test_bad_input_is_refused_clearly():
    x, labels = classes_in_noise(2, n_classes=3, per_class=3, dim=8, signal=2)
    with pytest.raises(ValueError, match="not fitted"):
        TripletProjection(4).transform(x)
    with pytest.raises(ValueError, match="dim 9 is larger"):
        TripletProjection(9).fit(x, labels)
    with pytest.raises(ValueError, match="two classes"):
        TripletProjection(4).fit(x[:3], labels[:3])  # one class
    with pytest.raises(ValueError, match="do not match"):
        TripletProjection(4).fit(x, labels[:-1])
    fitted = TripletProjection(4, steps=5).fit(x, labels)
    with pytest.raises(ValueError, match="fitted on 8"):
        fitted.transform(x[:, :5])
    state = fitted.get_state()
    with pytest.raises(ValueError, match="do not make a 4-d projection"):
        TripletProjection.from_state(fitted.get_params(),
                                     {**state, "weights": state["weights"][:, :3]})
    with pytest.raises(ValueError, match="mining"):
        TripletProjection(4, mining="random")
    with pytest.raises(ValueError, match="averaging must be below 1"):
        TripletProjection(4, averaging=1.0)
    with pytest.raises(ValueError, match=r"hidden_weights is \(8, 512\)"):
        TripletProjection.from_state(TripletProjection(4, hidden=3).get_params(),
                                     state)
    with pytest.raises(ValueError, match="dim 8 needs more than 8"):
        PCAProjection(8).fit(x[:8])


def test_pca_projection_keeps_the_largest_variance_and_can_whiten():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 6)) * np.array([10, 5, 1, 1, 0.1, 0.1])
    pca = PCAProjection(2).fit(x)
    assert np.allclose(np.abs(pca.weights_[:2]), np.eye(2), atol=0.1)
    whitened = PCAProjection(2, whiten=True).fit(x)
    z = (x - whitened.mean_) @ whitened.weights_
    assert np.allclose(z.std(axis=0), 1, atol=0.01)  # unit variance each
    copy = PCAProjection.from_state(whitened.get_params(), whitened.get_state())
    assert np.array_equal(copy.transform(x), whitened.transform(x))
