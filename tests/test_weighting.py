"""The query's weighted vector, computed without sparse matrices, against the
matrix path of cvsearch.weighting."""

import numpy as np
import pytest

from cvsearch.weighting import pyramid_size, query_tfidf, spatial_bag_of_words, tfidf


@pytest.mark.parametrize("levels, power, tf_power", [
    (0, 1.0, 1.0), (0, 0.5, 1.0), (2, 1.0, 1.0), (2, 0.5, 1.0), (0, 1.0, 0.2),
    (2, 0.5, 0.3)])
def test_query_vector_equals_the_matrix_path_to_the_bit(levels, power, tf_power):
    """A query's vector without scipy: the same columns and float32 values."""
    rng = np.random.default_rng(levels)
    n_words = 50
    for _ in range(20):
        n = int(rng.integers(0, 300))
        words = (rng.zipf(1.5, n) % n_words).astype(np.int32)
        keypoints = np.column_stack([rng.random(n) * 640, rng.random(n) * 480,
                                     np.zeros((n, 2))]).astype(np.float32)
        keypoints[:3, 0] = [0, 639.99, 320]  # on cell borders too
        idf = rng.random(n_words * pyramid_size(levels)).astype(np.float32)
        idf[rng.random(len(idf)) < 0.2] = 0  # words no image holds
        expected = tfidf(spatial_bag_of_words(words, keypoints, np.array([(480, 640)]),
                                              np.array([0, n]), n_words, levels),
                         idf, power, tf_power)
        columns, values = query_tfidf(words, keypoints, (480, 640), n_words, levels,
                                      idf, power, tf_power)
        assert columns.tolist() == expected.indices.tolist()
        assert values.dtype == np.float32 and np.array_equal(values, expected.data)
