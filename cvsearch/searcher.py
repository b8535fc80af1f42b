"""Where a query is ranked: a :class:`Searcher` answers from one state of an
index (its store and vocabulary), whatever writers do meanwhile.

As Lucene's IndexSearcher over a reader of one commit: ``Index`` (the facade)
hands out a searcher of its current state for each query (:meth:`Index.searcher`);
adding, removing, saving and loading (the lifecycle) stay in
:mod:`cvsearch.index`. A searcher takes features, or words already assigned, and
ranks by tf-idf cosine (:mod:`cvsearch.scoring`), verifies the short-list
geometrically (:mod:`cvsearch.rerank`) and expands the query if asked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cvsearch import rerank as _rerank
from cvsearch._validation import check_choice, check_int
from cvsearch.features import Features
from cvsearch.parallel import ImageWords
from cvsearch.store import Store
from cvsearch.vocabulary import Vocabulary
from cvsearch.weighting import average_vectors, query_tfidf

#: How re-ranking verifies (see Index.query).
VERIFICATIONS = ("shapes", "ransac")


class Ranking(NamedTuple):
    """The ranking arguments of a search (see :meth:`cvsearch.Index.query`)."""

    k: int
    rerank: int
    min_inliers: int
    verification: str
    multiple_assignment: bool
    expand: int


def check_ranking(k, rerank, min_inliers, verification, multiple_assignment,
                  expand) -> Ranking:
    """The ranking arguments, checked: a :class:`Ranking`, or a clear error."""
    ranking = Ranking(
        check_int(k, "k", minimum=1, hint="ask for at least one result"),
        check_int(rerank, "rerank", minimum=0),
        check_int(min_inliers, "min_inliers", minimum=1),
        check_choice(verification, "verification", VERIFICATIONS),
        check_assignment(multiple_assignment),
        check_int(expand, "expand", minimum=0))
    if ranking.expand and not ranking.rerank:
        raise ValueError("expand needs rerank > 0: only verified results expand "
                         "the query")
    return ranking


def check_assignment(multiple_assignment) -> bool:
    if not isinstance(multiple_assignment, (bool, np.bool_)):
        raise TypeError(f"multiple_assignment must be True or False, got "
                        f"{type(multiple_assignment).__name__}")
    return bool(multiple_assignment)


class Searcher:
    """Queries over one state of an index.

    Parameters
    ----------
    store : Store
        The images (segments, tombstones, weights) of that state.
    vocabulary : Vocabulary
        Assigns a query's descriptors to words.
    max_side : int
        The extractor's ``max_side`` (verification's tolerances are relative
        to it).
    """

    def __init__(self, store: Store, vocabulary: Vocabulary, max_side: int):
        if not len(store):
            raise ValueError("the index holds no images; add images before querying")
        self.store, self.vocabulary, self.max_side = store, vocabulary, max_side

    def __len__(self) -> int:
        return len(self.store)

    # ---------------------------------------------------------------- queries
    def search(self, features: Features | ImageWords, ranking: Ranking):
        """Rank the images for a query's features (or words).

        Returns
        -------
        scores : ndarray of shape (m,), float32
        ids : ndarray of shape (m,), int64
        inliers : ndarray of shape (m,), int32, -1 where not verified
            ``m = min(ranking.k, len(self))``; see :meth:`cvsearch.Index.query`.
        """
        words, verify_with = self.query_words(
            features, ranking.rerank > 0 and ranking.multiple_assignment)
        return self.rank(words, features.keypoints, features.image_shape, ranking,
                         verify_with=verify_with)

    def similar(self, id_: int, ranking: Ranking):
        """:meth:`search` with image ``id_``'s own words, itself left out."""
        id_ = self.check_id(id_, "similar")
        return self.rank(*self.store.image(id_), ranking, exclude=id_)

    def inliers(self, features, ids, verification: str,
                multiple_assignment: bool) -> np.ndarray:
        """Inlier counts of a query against images ``ids``: (len(ids),) int32."""
        ids = np.asarray([self.check_id(i, "inliers") for i in ids], np.int64)
        _, verify_with = self.query_words(features, multiple_assignment)
        return self.verify(*verify_with, ids, verification)

    def matches(self, features, id_: int, verification: str,
                multiple_assignment: bool):
        """``(query_xy, db_xy)``: the inlier correspondences with image ``id_``,
        each (n_inliers, 2) float32."""
        id_ = self.check_id(id_, "matches")
        _, verify_with = self.query_words(features, multiple_assignment)
        _, query_xy, db_xy = _rerank.inlier_pairs(
            *verify_with, *self.store.image(id_), max_side=self.max_side,
            use_shapes=verification == "shapes")
        return query_xy, db_xy

    # ---------------------------------------------------------------- stages
    def words_of(self, features) -> np.ndarray:
        """The query's words, (n_keypoints,) int32."""
        if isinstance(features, ImageWords):
            return np.asarray(features.words, np.int32)
        return self.vocabulary.predict(features.descriptors)

    def query_words(self, features, multiple: bool):
        """The query's words, and the ``(words, keypoints)`` that verification
        matches: with multiple assignment, keypoints repeated with their next
        nearest word where it is nearly as near (one search gives both)."""
        if not multiple or not isinstance(features, Features):
            words = self.words_of(features)
            return words, (words, features.keypoints)
        words, second, best, second_best = self.vocabulary.predict_two(
            features.descriptors)
        return words, _rerank.multiple_assignment(words, features.keypoints, second,
                                                  best, second_best)

    def rank(self, words, keypoints, image_shape, ranking: Ranking,
             exclude: int | None = None, verify_with=None):
        """Score by tf-idf cosine, verify the short-list, expand if asked."""
        k, rerank, min_inliers, verification, _, expand = ranking
        store = self.store
        columns, values = query_tfidf(words, keypoints, image_shape, store.n_words,
                                      store.levels, store.weights().idf, store.power,
                                      store.tf_power)
        top_scores, ids = store.best(columns, values, max(k, rerank), exclude)
        n = len(ids)
        inliers = np.full(n, -1, np.int32)
        if rerank:
            short = ids[:rerank]
            verified = self.verify(*(verify_with or (words, keypoints)), short,
                                   verification, min_inliers)
            order = _rerank.reorder(verified, min_inliers)
            ids[:len(short)] = short[order]
            top_scores[:len(short)] = top_scores[:len(short)][order]
            inliers[:len(short)] = verified[order]
            if expand:
                top_scores, ids, inliers = self.expand(
                    (columns, values), top_scores, ids, inliers, ranking, exclude)
        m = min(k, n)
        return top_scores[:m], ids[:m], inliers[:m]

    def expand(self, query_vector, scores, ids, inliers, ranking: Ranking,
               exclude: int | None):
        """Average query expansion of a re-ranked list (same length): the
        verified results first, as they are, then the others in the order of the
        query averaged with the best ``ranking.expand`` verified ones."""
        store = self.store
        verified = inliers >= ranking.min_inliers
        if not verified.any():
            return scores, ids, inliers
        idf = store.weights().idf
        vectors = [query_vector] + [
            query_tfidf(words, keypoints, shape, store.n_words, store.levels, idf,
                        store.power, store.tf_power)
            for words, keypoints, shape in store.images(
                ids[verified][:ranking.expand])]
        n, kept = len(ids), int(verified.sum())
        new_scores, new_ids = store.best(*average_vectors(vectors), n + kept, exclude)
        known = dict(zip(ids.tolist(), inliers.tolist()))  # counts below the bar too
        fresh = ~np.isin(new_ids, ids[verified])
        new_scores, new_ids = new_scores[fresh][:n - kept], new_ids[fresh][:n - kept]
        return (np.concatenate([scores[verified], new_scores]),
                np.concatenate([ids[verified], new_ids]),
                np.concatenate([inliers[verified], np.array(
                    [known.get(i, -1) for i in new_ids.tolist()], np.int32)]))

    def verify(self, words, keypoints, ids, verification: str,
               min_inliers: int | None = None) -> np.ndarray:
        """Inliers of the query against each image of ``ids``: (len(ids),) int32."""
        return _rerank.verify_shortlist(words, keypoints, self.store.images(ids),
                                        max_side=self.max_side,
                                        min_inliers=min_inliers,
                                        use_shapes=verification == "shapes")

    def check_id(self, id_, what: str) -> int:
        """An image id of this state, as an int, or a clear error."""
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
            raise TypeError(f"{what} takes an integer image id, got "
                            f"{type(id_).__name__} {id_!r}")
        try:
            if not 0 <= int(id_) < 2**63:  # ids are int64
                raise KeyError(id_)
            self.store.locate(int(id_))
        except KeyError:
            raise ValueError(f"id {id_} is out of range: no image of the index (of "
                             f"{len(self.store)}) has it") from None
        return int(id_)
