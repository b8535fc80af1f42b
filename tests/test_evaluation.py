import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cvsearch.evaluation import (
    average_precision,
    mean_average_precision,
    ns_score,
    per_class_map,
    precision_at_k,
    precision_recall_curve,
    recall_at_k,
    relevance,
    top_k_accuracy,
)


def test_average_precision_matches_sklearn_on_random_full_rankings():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(5, 60))
        truth = rng.random(n) < rng.uniform(0.1, 0.6)
        truth[rng.integers(n)] = True
        scores = rng.random(n)  # distinct with probability 1
        ranked = truth[np.argsort(-scores)]
        ours = average_precision(ranked[np.newaxis])[0]
        assert ours == pytest.approx(average_precision_score(truth, scores))


def test_hand_worked_average_precision():
    # relevant at ranks 1, 3, 6 of 3 relevant: (1/1 + 2/3 + 3/6) / 3
    ranked = np.array([[1, 0, 1, 0, 0, 1]], bool)
    assert average_precision(ranked)[0] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # truncated ranking: 4 relevant in the database, 2 found at ranks 2 and 4
    ranked = np.array([[0, 1, 0, 1]], bool)
    assert average_precision(ranked, n_relevant=4)[0] == pytest.approx(
        (1 / 2 + 2 / 4) / 4)
    # nothing relevant: 0, not NaN
    assert average_precision(np.zeros((1, 3), bool))[0] == 0.0
    assert mean_average_precision([[1, 1], [0, 1]]) == pytest.approx((1 + 0.5) / 2)


def test_n_relevant_smaller_than_found_is_an_error():
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision([[1, 1, 0]], n_relevant=1)


def test_precision_recall_and_top_k_accuracy():
    ranked = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], bool)
    assert precision_at_k(ranked, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert precision_at_k(ranked, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert recall_at_k(ranked, 1, n_relevant=[4, 1]) == pytest.approx((1 / 4 + 0) / 2)
    assert recall_at_k(ranked, 4) == pytest.approx(1.0)
    assert top_k_accuracy(ranked, 1) == 0.5
    assert top_k_accuracy(ranked, 4) == 1.0
    with pytest.raises(ValueError):
        precision_at_k(ranked, 0)


def test_relevance_treats_padding_as_not_relevant():
    ids = np.array([[2, 0, -1], [1, -1, -1]])
    rel = relevance(ids, query_labels=np.array([7, 5]),
                    database_labels=np.array([7, 5, 7]))
    assert rel.tolist() == [[True, True, False], [True, False, False]]


def test_per_class_map_and_ns_score():
    assert per_class_map([1.0, 0.5, 0.2], [0, 0, 1]) == {0: 0.75, 1: 0.2}
    labels = np.array([[3, 3, 1, 3], [2, 0, 0, 0]])
    assert ns_score(labels, np.array([3, 2])) == pytest.approx((3 + 1) / 2)


def test_interpolated_precision_recall_curve():
    # relevant at ranks 1 and 3 of 2: P=1 at R=0.5, P=2/3 at R=1
    recall, precision = precision_recall_curve([[1, 0, 1, 0]], levels=5)
    assert recall.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert precision == pytest.approx([1, 1, 1, 2 / 3, 2 / 3])
    # half the relevant items never retrieved: precision 0 beyond recall 0.5
    _, precision = precision_recall_curve([[1, 0]], n_relevant=2, levels=3)
    assert precision == pytest.approx([1, 1, 0])
