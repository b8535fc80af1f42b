import cv2
import numpy as np
import pytest
from conftest import warped

from cvsearch.rerank import count_inliers, reorder, word_correspondences


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


@pytest.mark.parametrize("rotation, scale, perspective", [
    (45, 1.0, 0.0), (-45, 0.5, 0.0), (30, 2.0, 0.0), (45, 0.5, 0.3), (-20, 1.5, 0.4),
    (10, 1.0, 0.6)])
def test_warped_copy_ranks_first_with_most_inliers(trained_index, images, rotation,
                                                    scale, perspective):
    query, _ = warped(images[3], rotation, scale, perspective)
    scores, ids, inliers = trained_index.query(query, k=5, rerank=12,
                                               return_inliers=True)
    assert trained_index.names[ids[0]].endswith("texture_03.png")
    assert inliers[0] >= 30
    assert inliers[0] == inliers.max()
    all_inliers = trained_index.inliers(query, range(len(trained_index)))
    assert all_inliers.argmax() == ids[0]
    assert np.sort(all_inliers)[-2] < 20  # no other image is verified


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
