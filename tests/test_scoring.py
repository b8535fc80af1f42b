import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from cvsearch.scoring import cosine_scores, top_k
from cvsearch.weighting import bag_of_words, inverse_document_frequency, tfidf


def test_bag_of_words_counts():
    words = np.array([0, 2, 2, 1, 3, 3, 3], np.int32)
    offsets = np.array([0, 3, 3, 7])  # the middle image has no keypoints
    counts = bag_of_words(words, offsets, 4).toarray()
    assert counts.tolist() == [[1, 0, 2, 0], [0, 0, 0, 0], [0, 1, 0, 3]]


def test_idf_by_hand():
    counts = sp.csr_matrix(np.array([[1, 0, 2, 0], [1, 1, 0, 0], [3, 0, 0, 0]],
                                    np.float32))
    idf = inverse_document_frequency(counts)
    assert np.allclose(idf, [np.log(3 / 3), np.log(3 / 1), np.log(3 / 1), 0.0])
    weighted = tfidf(counts, idf).toarray()
    expected = np.array([[0, 0, 2 * np.log(3), 0], [0, np.log(3), 0, 0], [0, 0, 0, 0]])
    assert np.allclose(weighted, normalize(expected), atol=1e-6)


def test_sparse_scores_equal_dense_cosine():
    rng = np.random.default_rng(0)
    db = sp.random(60, 500, density=0.05, random_state=1, dtype=np.float32).tocsr()
    queries = sp.random(5, 500, density=0.05, random_state=2, dtype=np.float32).tocsr()
    idf = inverse_document_frequency(db)
    db_vectors, query_vectors = tfidf(db, idf), tfidf(queries, idf)
    scores = cosine_scores(db_vectors.T.tocsr(), query_vectors)
    dense_db = normalize(db.toarray() * idf)
    dense_q = normalize(queries.toarray() * idf)
    assert scores.shape == (5, 60)
    assert np.allclose(scores, dense_q @ dense_db.T, atol=1e-6)
    assert rng is not None


def test_top_k_orders_and_breaks_ties_by_id():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.0, 0.0, 0.0, 0.3], [1, 2, 3, 4]],
                      np.float32)
    values, ids = top_k(scores, 3)
    assert ids.tolist() == [[1, 3, 2], [3, 0, 1], [3, 2, 1]]
    assert np.allclose(values[0], [0.9, 0.9, 0.5])


def test_top_k_pads_and_single_row():
    values, ids = top_k(np.array([0.2, 0.7], np.float32), 4)
    assert ids.tolist() == [1, 0, -1, -1]
    assert values[2] == -np.inf


@pytest.mark.parametrize("k, error", [(0, ValueError), (-3, ValueError),
                                      (2.0, TypeError), ("3", TypeError)])
def test_top_k_rejects_bad_k(k, error):
    with pytest.raises(error, match="k"):
        top_k(np.zeros(5), k)


def test_spatial_pyramid_columns():
    from cvsearch.weighting import pyramid_size, spatial_bag_of_words

    words = np.array([1, 1, 2], np.int32)
    # image 100 high, 200 wide: points top-left, bottom-right, bottom-left
    keypoints = np.array([[10, 10], [190, 90], [10, 90]], np.float32)
    shapes = np.array([[100, 200]])
    offsets = np.array([0, 3])
    counts = spatial_bag_of_words(words, keypoints, shapes, offsets, 3, 1)
    assert counts.shape == (1, 3 * pyramid_size(1)) == (1, 15)
    # level 0: words 1, 1, 2; level 1 cells (row-major 2x2): 0, 3, 2
    expected = {1: 2, 2: 1, 3 + 0 * 3 + 1: 1, 3 + 3 * 3 + 1: 1, 3 + 2 * 3 + 2: 1}
    assert dict(zip(counts.indices.tolist(), counts.data.tolist())) == expected
    plain = spatial_bag_of_words(words, keypoints, shapes, offsets, 3, 0)
    assert (plain != bag_of_words(words, offsets, 3)).nnz == 0


def test_power_law_normalisation():


    counts = sp.csr_matrix(np.array([[4.0, 1.0, 0.0]], np.float32))
    vector = tfidf(counts, np.ones(3, np.float32), power=0.5).toarray()[0]
    assert np.allclose(vector, np.array([2.0, 1.0, 0.0]) / np.sqrt(5))


def test_tf_power_damps_the_counts_but_not_the_idf():
    counts = sp.csr_matrix(np.array([[4.0, 1.0, 0.0]], np.float32))
    idf = np.array([1.0, 3.0, 2.0], np.float32)
    vector = tfidf(counts, idf, tf_power=0.5).toarray()[0]
    assert np.allclose(vector, np.array([2.0, 3.0, 0.0]) / np.sqrt(13))
    # the whole-vector power applies on top: (tf ** 0.5 * idf) ** 0.5
    both = tfidf(counts, idf, power=0.5, tf_power=0.5).toarray()[0]
    assert np.allclose(both, np.sqrt([2.0, 3.0, 0.0]) / np.sqrt(5))
