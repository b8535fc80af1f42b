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

import threading
from typing import NamedTuple

import numpy as np

from cvsearch import decision as _decision
from cvsearch import rerank as _rerank
from cvsearch._validation import check_choice, check_flag, check_int
from cvsearch.decision import Evidence
from cvsearch.features import Features, can_mirror, mirror_features, mirror_keypoints
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
    mirror: bool = False


class View(NamedTuple):
    """One way of looking at the query: its words for scoring, and the words and
    keypoints that verification matches (repeated with multiple assignment)."""

    words: np.ndarray
    keypoints: np.ndarray
    image_shape: tuple
    verify_words: np.ndarray
    verify_keypoints: np.ndarray
    mirrored: bool = False
    thumbnail: np.ndarray | None = None
    finer: bool = False


def check_ranking(k, rerank, min_inliers, verification, multiple_assignment,
                  expand, mirror=False) -> Ranking:
    """The ranking arguments, checked: a :class:`Ranking`, or a clear error."""
    ranking = Ranking(
        check_int(k, "k", minimum=1, hint="ask for at least one result"),
        check_int(rerank, "rerank", minimum=0),
        check_int(min_inliers, "min_inliers", minimum=1),
        check_choice(verification, "verification", VERIFICATIONS),
        check_assignment(multiple_assignment),
        check_int(expand, "expand", minimum=0),
        check_flag(mirror, "mirror"))
    if ranking.expand and not ranking.rerank:
        raise ValueError("expand needs rerank > 0: only verified results expand "
                         "the query")
    return ranking


def check_assignment(multiple_assignment) -> bool:
    return check_flag(multiple_assignment, "multiple_assignment")


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
    mirror_permutation : ndarray of shape (128,), int, optional
        How the extractor's descriptors mirror (:func:`cvsearch.features.
        mirror_permutation`): lets :meth:`similar` mirror an indexed image's words.
    upright : bool
        Whether the keypoints are upright patches (dense features).
    """

    def __init__(self, store: Store, vocabulary: Vocabulary, max_side: int,
                 mirror_permutation: np.ndarray | None = None, upright: bool = False):
        if not len(store):
            raise ValueError("the index holds no images; add images before querying")
        self.store, self.vocabulary, self.max_side = store, vocabulary, max_side
        self.mirror_permutation, self.upright = mirror_permutation, upright

    def __len__(self) -> int:
        return len(self.store)

    # ---------------------------------------------------------------- queries
    def search(self, features: Features | ImageWords, ranking: Ranking,
               coverage: bool = True, exclude: int | None = None):
        """Rank the images for a query's features (or words); ``coverage``
        False leaves the results' coverage unmeasured (0, and so no "copy"
        decision), for callers that use the ranking only; ``exclude``: an
        image id left out (an indexed image searched with its own features).

        Returns
        -------
        scores : ndarray of shape (m,), float32
        ids : ndarray of shape (m,), int64
        evidence : Evidence of m results (not verified outside the short-list)
            ``m = min(ranking.k, len(self))``; see :meth:`cvsearch.Index.query`.
        """
        return self.rank(self.views(features, ranking), ranking, exclude=exclude,
                         coverage=coverage)

    def views(self, features: Features | ImageWords, ranking: Ranking) -> list:
        """The :class:`View` s a search of ``features`` ranks and verifies: the
        query, its features at twice its size where it is small (``finer``), and
        the mirror image of each with ``ranking.mirror``."""
        multiple = ranking.rerank > 0 and ranking.multiple_assignment
        seen = []  # (features, mirrored, finer)
        # a small query's features at twice its size are one more view of it
        # (a thumbnail's detail is finer in its original), mirrored too
        finer = getattr(features, "finer", None)
        for described, is_finer in ((features, False), (finer, True)):
            if described is None:
                continue
            seen.append((described, False, is_finer))
            if ranking.mirror and isinstance(described, Features) and can_mirror(
                    described):
                seen.append((mirror_features(described), True, is_finer))
        # every view's descriptors assigned in one search: each cell's words are
        # read once for all of them, and the search's fixed costs paid once
        # (the words are each descriptor's own, as one by one)
        described = [f for f, _, _ in seen if isinstance(f, Features)]
        assigned = iter(self.assign(described, multiple))
        return [self.view(f, multiple, mirrored=mirrored, finer=is_finer,
                          assigned=next(assigned) if isinstance(f, Features) else None)
                for f, mirrored, is_finer in seen]

    def assign(self, described: list, multiple: bool) -> list:
        """The words of each of ``described`` (Features), from one search:
        :meth:`Vocabulary.predict_two`'s four arrays each with ``multiple``,
        else :meth:`Vocabulary.predict`'s words."""
        if not described:
            return []
        counts = np.cumsum([len(f.descriptors) for f in described])[:-1]
        together = (described[0].descriptors if len(described) == 1 else
                    np.concatenate([f.descriptors for f in described]))
        if not multiple:
            return np.split(self.vocabulary.predict(together), counts)
        parts = [np.split(values, counts)
                 for values in self.vocabulary.predict_two(together)]
        return list(zip(*parts))

    def similar(self, id_: int, ranking: Ranking, coverage: bool = True):
        """:meth:`search` with image ``id_``'s own words, itself left out.

        With ``ranking.mirror``, the mirror image is searched for too, its words
        those of the mirrored vocabulary (:meth:`mirrored_words`: no descriptors
        are kept to permute)."""
        id_ = self.check_id(id_, "similar")
        return self.rank(self.stored_views(id_, ranking), ranking, exclude=id_,
                         coverage=coverage)

    def stored_views(self, id_: int, ranking: Ranking) -> list:
        """The :class:`View` s of :meth:`similar`: image ``id_``'s stored words,
        and its mirror image's with ``ranking.mirror``."""
        id_ = self.check_id(id_, "stored_views")
        views = [self.stored_view(id_)]
        if ranking.mirror and self.mirror_permutation is not None:
            views.append(self.stored_view(id_, mirrored=True))
        return views

    def stored_view(self, id_: int, mirrored: bool = False) -> View:
        """Indexed image ``id_`` as a query, from its stored words; ``mirrored``:
        its mirror image, its words those of the mirrored vocabulary (both
        nearest, for verification)."""
        words, keypoints, shape = self.store.image(id_)
        small = self.store.thumbnail(id_)
        if not mirrored:
            return View(words, keypoints, shape, words, keypoints, False, small)
        first, second = self.mirrored_words()
        flipped = mirror_keypoints(keypoints, shape[1], self.upright)
        return View(first[words], flipped, shape,
                    np.concatenate([first[words], second[words]]),
                    np.concatenate([flipped, flipped]), True,
                    None if small is None else small[:, ::-1])

    def mirrored_words(self):
        """``(first, second)``, each (n_words,) int32: the two words nearest to
        each word's centre mirrored (its bins permuted). An image's words mapped
        through them are nearly those of its mirror image: fewer of a mirrored
        copy's keypoints match than with permuted descriptors, enough to verify
        it (tests/test_decision.py)."""
        return _mirrored_words(self.vocabulary, self.mirror_permutation)

    def inliers(self, features, ids, verification: str,
                multiple_assignment: bool) -> np.ndarray:
        """Inlier counts of a query against images ``ids``: (len(ids),) int32."""
        ids = self.check_ids(ids, "inliers")
        return self.verify(self.view(features, multiple_assignment), ids,
                           verification).inliers

    def matches(self, features, id_: int, verification: str,
                multiple_assignment: bool, mirrored: bool = False,
                finer: bool = False):
        """``(query_xy, db_xy)``: the inlier correspondences with image ``id_``,
        each (n_inliers, 2) float32, in the query's own pixels (also when it
        matched ``mirrored``, or with its ``finer`` features); the same
        verification as :meth:`search`'s."""
        id_ = self.check_id(id_, "matches")
        if finer:
            features = features.finer
        if mirrored:
            features = mirror_features(features)
        return self._inlier_pairs(self.view(features, multiple_assignment,
                                            mirrored=mirrored), id_, verification)

    def matches_between(self, a: int, b: int, verification: str = "shapes",
                        mirrored: bool = False):
        """``(a_xy, b_xy)``: the inlier correspondences of two indexed images,
        image ``a``'s stored words (its mirror image's, ``mirrored``) against
        image ``b``, as :meth:`similar` verifies, each (n_inliers, 2) float32 in
        its image's pixels."""
        a, b = self.check_id(a, "matches_between"), self.check_id(b, "matches_between")
        if mirrored and self.mirror_permutation is None:
            raise ValueError("mirrored matches need SIFT or RootSIFT features")
        return self._inlier_pairs(self.stored_view(a, mirrored=bool(mirrored)), b,
                                  verification)

    def _inlier_pairs(self, view: View, id_: int, verification: str):
        """``(view_xy, db_xy)``: the inlier correspondences of ``view`` with image
        ``id_``, the view's points in its image as given (not mirrored)."""
        _, view_xy, db_xy = _rerank.inlier_pairs(
            view.verify_words, view.verify_keypoints, *self.store.image(id_),
            max_side=self.max_side, use_shapes=verification == "shapes")
        if view.mirrored:  # back to the image as it was given
            view_xy = view_xy.copy()
            view_xy[:, 0] = view.image_shape[1] - 0.5 - view_xy[:, 0]
        return view_xy, db_xy

    # ---------------------------------------------------------------- stages
    def view(self, features, multiple: bool, mirrored: bool = False,
             finer: bool = False, assigned=None) -> View:
        """The query's words, and the ``(words, keypoints)`` that verification
        matches: with multiple assignment, keypoints repeated with their next
        nearest word where it is nearly as near (one search gives both).
        ``assigned``: the words of ``features`` already found (:meth:`assign`;
        None: found here)."""
        small = features.thumbnail
        if not isinstance(features, Features):  # words given: no descriptors
            words = np.asarray(features.words, np.int32)
            return View(words, features.keypoints, features.image_shape, words,
                        features.keypoints, mirrored, small, finer)
        if assigned is None:
            assigned = self.assign([features], multiple)[0]
        if not multiple:
            return View(assigned, features.keypoints, features.image_shape, assigned,
                        features.keypoints, mirrored, small, finer)
        words, second, best, second_best = assigned
        verify_words, verify_keypoints = _rerank.multiple_assignment(
            words, features.keypoints, second, best, second_best)
        return View(words, features.keypoints, features.image_shape, verify_words,
                    verify_keypoints, mirrored, small, finer)

    def query_vector(self, view: View):
        store = self.store
        return query_tfidf(view.words, view.keypoints, view.image_shape, store.n_words,
                           store.levels, store.idf_weights().idf, store.power,
                           store.tf_power)

    def rank(self, views: list, ranking: Ranking, exclude: int | None = None,
             coverage: bool = True):
        """Score by tf-idf cosine (each view; an image keeps its best score),
        verify each view's own short-list (its ``rerank`` best), expand if asked;
        measure the coverage of the results returned if ``coverage``.

        Returns ``(scores, ids, evidence)`` as :meth:`search`."""
        return self.rank_shared(views, ranking, exclude, coverage)[:3]

    def rank_shared(self, views: list, ranking: Ranking, exclude: int | None = None,
                    coverage: bool = True, shared_by: float | None = None):
        """:meth:`rank`, and what the results decided the same object share of
        the query: its keypoints whose words at least ``shared_by`` of them hold
        (a page layout that many images repeat, each with its own picture); None
        (as :meth:`rank`): not looked for.

        Returns
        -------
        scores, ids, evidence
            As :meth:`rank`'s.
        shared : list of ndarray of shape (len(view.keypoints),), bool
            For each view, in the order given, over the results in its own
            short-list (all False without ``rerank`` or ``shared_by``).
        """
        k, rerank, min_inliers, verification, _, expand, _ = ranking
        m = max(k, rerank)
        vectors = [self.query_vector(view) for view in views]
        lists = [self.store.best(*vector, m, exclude) for vector in vectors]
        top_scores, ids = lists[0] if len(views) == 1 else _best_of(lists, len(views) * m)
        evidence = Evidence.unverified(len(ids))
        shared = [np.zeros(len(view.keypoints), bool) for view in views]
        if rerank:
            # each view verifies its own short-list: in one shared list, a
            # mirrored copy near the top of the mirror view's ranking is crowded
            # out by the plain view's images, and the reverse
            own = [view_ids[:rerank] for _, view_ids in lists]
            in_short = np.isin(ids, np.concatenate(own))
            top_scores = np.concatenate([top_scores[in_short], top_scores[~in_short]])
            ids = np.concatenate([ids[in_short], ids[~in_short]])
            short = ids[:int(in_short.sum())]
            candidates = self.store.images(short)
            positions = [np.flatnonzero(np.isin(short, view_ids)) for view_ids in own]
            # each view's own candidates, gathered once (an identity take is free)
            owned = [candidates.take(where) for where in positions]
            verified = [self.verified(view, mine, verification, min_inliers)
                        for view, mine in zip(views, owned)]

            def evidence_of_view(number, rows=()):
                """The evidence of view ``number`` over the whole short-list
                (unverified where it did not verify), coverage for ``rows``."""
                where = positions[number]
                local = np.flatnonzero(np.isin(where, rows))
                found = self.evidence(views[number], verified[number], owned[number],
                                      local, short[where])
                spread = Evidence.unverified(len(short))
                for field, values in zip(spread, found):
                    field[where] = values
                return spread

            # first without coverage: the order needs only the inliers
            found = evidence_of_view(0)
            chosen = np.zeros(len(short), np.int64)
            for number in range(1, len(views)):
                other = evidence_of_view(number)
                better = _decision.stronger(found, other)
                found = Evidence(*(np.where(better, b, a) for a, b in zip(found, other)))
                chosen[better] = number
            # each view is one more chance of a chance match
            found = found._replace(log_nfa=found.log_nfa + np.log10(len(views)))
            order = _rerank.reorder(found.inliers, min_inliers, found.same_object)
            same = found.same_object
            for number, where in enumerate(positions if shared_by is not None else ()):
                held = [candidates[j][0] for j in where if same[j]]
                shared[number] = _shared_words(views[number].words, held,
                                               shared_by * len(held))
            # coverage of the results shown, from the view each matched best
            for number in range(len(views) if coverage else 0):
                rows = order[:k][chosen[order[:k]] == number]
                if len(rows):
                    measured = evidence_of_view(number, rows)
                    for field in _decision.MEASURED_FIELDS:
                        getattr(found, field)[rows] = getattr(measured, field)[rows]
            ids[:len(short)] = short[order]
            top_scores[:len(short)] = top_scores[:len(short)][order]
            evidence = Evidence.concatenate([found.take(order),
                                             evidence.take(slice(len(short), None))])
            if expand:
                top_scores, ids, evidence = self.expand(
                    vectors[0], top_scores, ids, evidence, ranking, exclude)
        m = min(k, len(ids))
        return top_scores[:m], ids[:m], evidence.take(slice(0, m)), shared

    def expand(self, query_vector, scores, ids, evidence: Evidence, ranking: Ranking,
               exclude: int | None):
        """Average query expansion of a re-ranked list (same length): the
        verified results first, as they are, then the others in the order of the
        query averaged with the best ``ranking.expand`` verified ones."""
        store = self.store
        verified = evidence.inliers >= ranking.min_inliers
        if not verified.any():
            return scores, ids, evidence
        idf = store.idf_weights().idf
        vectors = [query_vector] + [
            query_tfidf(words, keypoints, shape, store.n_words, store.levels, idf,
                        store.power, store.tf_power)
            for words, keypoints, shape in store.images(
                ids[verified][:ranking.expand])]
        n, kept = len(ids), int(verified.sum())
        new_scores, new_ids = store.best(*average_vectors(vectors), n + kept, exclude)
        # what was verified keeps its evidence, below the bar too
        known = {id_: row for row, id_ in enumerate(ids.tolist())}
        fresh = ~np.isin(new_ids, ids[verified])
        new_scores, new_ids = new_scores[fresh][:n - kept], new_ids[fresh][:n - kept]
        rows = np.array([known.get(i, -1) for i in new_ids.tolist()], np.int64)
        padded = Evidence.concatenate([evidence, Evidence.unverified(1)])
        return (np.concatenate([scores[verified], new_scores]),
                np.concatenate([ids[verified], new_ids]),
                Evidence.concatenate([evidence.take(verified), padded.take(rows)]))

    def verify(self, view: View, ids, verification: str,
               min_inliers: int | None = None) -> Evidence:
        """The evidence of the query's ``view`` against each image of ``ids``."""
        candidates = self.store.images(ids)
        return self.evidence(view, self.verified(view, candidates, verification,
                                                 min_inliers), candidates, None, ids)

    def verified(self, view: View, candidates, verification: str,
                 min_inliers: int | None = None):
        """:func:`cvsearch.rerank.verify_candidates` of ``view``."""
        return _rerank.verify_candidates(view.verify_words, view.verify_keypoints,
                                         candidates, max_side=self.max_side,
                                         min_inliers=min_inliers,
                                         use_shapes=verification == "shapes")

    def evidence(self, view: View, verified, candidates, rows=None,
                 ids=None) -> Evidence:
        """:func:`cvsearch.decision.evidence_of` of ``view`` (coverage for
        ``rows`` only, if given; pixel agreement where ``ids``, the candidates'
        ids, are given)."""
        ids = None if ids is None else np.asarray(ids, np.int64).ravel()
        # the chances of a chance match are the images verified: one left out
        # of the short-list cannot be one, however many the index holds
        return _decision.evidence_of(
            verified, view.verify_keypoints, view.image_shape, candidates,
            len(candidates), view.mirrored, rows, view.thumbnail,
            None if ids is None else (lambda i: self.store.thumbnail(int(ids[i]))),
            view.finer)

    def check_id(self, id_, what: str) -> int:
        """An image id of this state, as an int, or a clear error."""
        return int(self.check_ids([id_], what)[0])

    def check_ids(self, ids, what: str) -> np.ndarray:
        """Image ids of this state, (n,) int64, checked at once; the error names
        the first that is not one (TypeError: not an integer; ValueError: no
        live image has it)."""
        ids = list(ids)
        for id_ in ids:
            if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
                raise TypeError(f"{what} takes an integer image id, got "
                                f"{type(id_).__name__} {id_!r}")
        # ids are int64: one beyond it is no image's (and must not overflow)
        fits = [0 <= int(i) < 2**63 for i in ids]
        values = np.array([int(i) if ok else 0 for i, ok in zip(ids, fits)], np.int64)
        live = self.store.live(values) & np.array(fits, bool)
        if not live.all():
            id_ = ids[int(np.argmin(live))]
            raise ValueError(f"id {id_} is out of range: no image of the index (of "
                             f"{len(self.store)}) has it")
        return values


def _shared_words(words: np.ndarray, held: list, at_least: float) -> np.ndarray:
    """Which of the query's ``words`` (n,) are among the words of ``at_least``
    of the images ``held`` (each image's word ids), and of one at least:
    (n,) bool. Wherever a layout puts them (text reflows around each page's
    picture), its words are in every page; a picture's are only in its copies."""
    counts = np.zeros(len(words), np.int64)
    for other in held:
        counts += np.isin(words, other)
    return counts >= max(at_least, 1)


def _best_of(lists, m: int):
    """Merge ``(scores, ids)`` lists, best first, each image once with its best
    score; ties go to the smaller id. Returns the ``m`` best."""
    scores = np.concatenate([scores for scores, _ in lists])
    ids = np.concatenate([ids for _, ids in lists])
    order = np.lexsort((ids, -scores))
    scores, ids = scores[order], ids[order]
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)[:m]
    return scores[keep], ids[keep]


_MIRRORED: dict = {}
_MIRRORED_LOCK = threading.Lock()


def _mirrored_words(vocabulary: Vocabulary, permutation: np.ndarray):
    """:meth:`Searcher.mirrored_words`, computed once per vocabulary (searches
    in several threads wait for the first)."""
    key = (vocabulary.fingerprint, permutation.tobytes())
    with _MIRRORED_LOCK:
        if key not in _MIRRORED:
            centres = np.ascontiguousarray(vocabulary.centers_[:, permutation])
            first, second, _, _ = vocabulary.predict_two(centres)
            second = np.where(second >= 0, second, first)
            if len(_MIRRORED) >= 4:  # a few vocabularies at a time at most
                _MIRRORED.clear()
            _MIRRORED[key] = (first.astype(np.int32), second.astype(np.int32))
        return _MIRRORED[key]
