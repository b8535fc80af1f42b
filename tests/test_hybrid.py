import numpy as np
import pytest
from conftest import warped
from test_global_index import Thumbnail

from cvsearch.global_index import GlobalIndex
from cvsearch.hybrid import verified_query


class Blurry(Thumbnail):
    """A global descriptor that cannot tell the textures apart: every image is
    about as near as any other, so its order says nothing of instances."""

    def describe_many(self, images):
        v = super().describe_many(images)
        return v * 0.05 + 1.0  # all rows close to one direction


def test_a_global_short_list_is_verified_by_local_features(trained_index, image_files,
                                                           images):
    global_index = GlobalIndex.build(image_files, Blurry())
    query = warped(images[5], 30, 0.8, 0.1)[0]
    _, global_ids = global_index.query(query, k=12)
    assert global_index.names[global_ids[0]] != image_files[5]  # not found alone
    scores, ids, inliers = verified_query(global_index, trained_index, query, k=4,
                                          rerank=12)
    assert global_index.names[ids[0]] == image_files[5] and inliers[0] >= 30
    assert np.all(inliers[1:] < inliers[0])
    assert len(ids) == 4 and len(set(ids.tolist())) == 4
    # the scores are the global cosines of the ids
    full_scores, full_ids = global_index.query(query, k=12)
    assert np.allclose(scores, [full_scores[list(full_ids).index(i)] for i in ids])
    # without verification: the global order, nothing verified
    plain = verified_query(global_index, trained_index, query, k=4, rerank=0)
    assert np.array_equal(plain[1], global_ids[:4]) and np.all(plain[2] == -1)


def test_images_the_local_index_lacks_keep_their_global_place(trained_index,
                                                              image_files, images):
    global_index = GlobalIndex.build(image_files, Thumbnail())
    global_index.add_descriptors(Thumbnail().describe_many([images[5]]), ["copy"])
    scores, ids, inliers = verified_query(global_index, trained_index, images[5],
                                          k=13, rerank=13)
    copy = global_index.id_of("copy")
    assert inliers[list(ids).index(copy)] == -1  # "copy" is not in the local index
    assert global_index.names[ids[0]] == image_files[5] and inliers[0] >= 30
    with pytest.raises(KeyError, match="no image named"):
        global_index.id_of("absent")
    with pytest.raises(ValueError, match="rerank"):
        verified_query(global_index, trained_index, images[5], rerank=-1)
