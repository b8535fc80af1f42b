"""Real photos: UKBench (first 56 images) instance retrieval."""

import json

import numpy as np
import pytest
from conftest import UKBENCH, requires

from cvsearch import FeatureExtractor, Index
from cvsearch.evaluation import ns_score

pytestmark = requires(UKBENCH)


@pytest.fixture(scope="module")
def ukbench():
    truth = json.loads((UKBENCH / "groundtruth.json").read_text())["object_of_image"]
    names = sorted(truth)
    paths = [str(UKBENCH / "images" / name) for name in names]
    labels = np.array([truth[name] for name in names])
    extractor = FeatureExtractor("sift")
    features = [extractor.extract(path) for path in paths]  # once: index and queries
    index = Index.build(features, extractor, n_words=5000, random_state=0, names=paths)
    return index, paths, labels, features


def test_ns_score_with_and_without_reranking(ukbench):
    index, paths, labels, features = ukbench
    _, bow = index.query_batch(features, k=4)
    _, reranked = index.query_batch(features, k=4, rerank=20)
    ns_bow, ns_rerank = ns_score(labels[bow], labels), ns_score(labels[reranked], labels)
    assert ns_bow >= 3.9
    assert ns_rerank >= ns_bow


def test_views_of_a_planar_object_are_verified(ukbench):
    index, paths, labels, _ = ukbench
    # Object 0 (a CD cover): its other three views get many inliers, others few.
    _, ids, inliers = index.query(paths[0], k=8, rerank=20, return_inliers=True)
    assert sorted(ids[:4].tolist()) == [0, 1, 2, 3]
    assert inliers[:4].min() >= 100 and inliers[4:].max() < 20


def test_real_short_lists_are_verified_alike_by_numba_and_numpy(ukbench, monkeypatch):
    # Every photo against all 56 (itself, its object's other views, the rest):
    # numba's verification loops give numpy's counts, exactness and inlier
    # pairs to the bit, with multiple assignment and without min_inliers too.
    pytest.importorskip("numba", reason="the compiled path needs numba ('fast' extra)")
    from cvsearch import rerank
    from cvsearch.rerank import multiple_assignment, verify_candidates

    index, paths, labels, features = ukbench
    store = index.searcher().store
    candidates = store.images(store.ids())
    for features_i in features[::5]:
        words = index.vocabulary.predict_two(features_i.descriptors)
        query_words, query_keypoints = multiple_assignment(words[0], features_i.keypoints,
                                                           *words[1:])
        for min_inliers in (10, None):
            found = {}
            for path in ("numba", "numpy"):
                with monkeypatch.context() as patch:
                    if path == "numba":
                        patch.setattr(rerank, "COMPILED_KEYPOINTS", 0)
                    else:
                        patch.setattr(rerank, "USE_COMPILED", False)
                    found[path] = verify_candidates(query_words, query_keypoints,
                                                    candidates, max_side=640,
                                                    min_inliers=min_inliers)
            numba, numpy = found["numba"], found["numpy"]
            assert numba.inliers.tolist() == numpy.inliers.tolist()
            assert numba.exact.tolist() == numpy.exact.tolist()
            assert numba.pairs.tolist() == numpy.pairs.tolist()
            assert numba.inliers.max() >= 20  # its own image, at least
            for (a, b), (c, d) in zip(numba.matched, numpy.matched, strict=True):
                assert np.array_equal(a, c) and np.array_equal(b, d)
