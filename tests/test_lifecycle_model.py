"""Stateful property tests: random sequences of add / remove / compact / save /
load / merge, each followed by queries whose answers are compared with a
brute-force model of the live images (exact tf-idf for an ``Index``, exact
cosine for a ``GlobalIndex``). Names, not ids, are compared where a merge
renumbers."""

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from cvsearch import GlobalIndex, ImageWords, Index

N_WORDS = 400  # the conftest vocabulary
TF_POWER = 0.2  # the library's default


def image_words(index: Index, seed: int) -> ImageWords:
    """Synthetic words of one image: 20-80 keypoints over a few dozen words
    (repeats included, so tf_power matters), random positions and shapes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 80))
    words = rng.choice(rng.choice(N_WORDS, 30, replace=False), n).astype(np.int32)
    keypoints = np.column_stack([rng.uniform(0, 300, (n, 2)), rng.uniform(2, 30, n),
                                 rng.uniform(0, 360, n)]).astype(np.float32)
    return ImageWords(words, keypoints, (300, 300), index.vocabulary.fingerprint,
                      index.extractor.feature_params())


def tfidf_scores(model: dict, query: np.ndarray) -> dict:
    """Exact tf-idf cosine of the query's words with every live image (float64)."""
    names = sorted(model)
    counts = np.array([np.bincount(model[n], minlength=N_WORDS) for n in names],
                      np.float64).reshape(len(names), N_WORDS)
    df = (counts > 0).sum(0)
    idf = np.where(df > 0, np.log(max(len(names), 1) / np.maximum(df, 1)), 0.0)

    def vector(c):
        v = np.power(c, TF_POWER) * idf
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    q = vector(np.bincount(query, minlength=N_WORDS).astype(np.float64))
    return {n: float(vector(c) @ q) for n, c in zip(names, counts)}


class Lifecycle(RuleBasedStateMachine):
    """An index (``self.index``) and its model (``self.model``: live names to
    what they hold), changed alike; a folder to save to."""

    names = Bundle("names")

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="cvsearch-model-")
        self.saved = None  # the model as last saved

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(name=consumes(names))
    def remove(self, name):
        if name in self.model:  # not gone with a load of an older save
            self.index.remove([name])
            del self.model[name]

    @rule()
    def compact(self):
        self.index.compact()


class IndexLifecycle(Lifecycle):
    """An ``Index`` and a dict of live names to word arrays."""

    @initialize()
    def start(self):
        index = Index(TRAINED.extractor, TRAINED.n_words)
        index.vocabulary = TRAINED.vocabulary
        self.index, self.model, self.next_seed = index, {}, 0

    def _new(self, count: int):
        seeds = range(self.next_seed, self.next_seed + count)
        self.next_seed += count
        return [(f"img-{s}", image_words(self.index, s)) for s in seeds]

    @rule(target=Lifecycle.names, count=st.integers(1, 4))
    def add(self, count):
        batch = self._new(count)
        skipped = self.index.add([w for _, w in batch], names=[n for n, _ in batch])
        assert skipped == []
        for name, words in batch:
            self.model[name] = words.words
        return batch[0][0]

    @rule()
    def save(self):
        if len(self.model) or self.index.is_trained:
            self.index.save(self.folder)
            self.saved = dict(self.model)

    @rule(share=st.booleans())
    def load(self, share):
        """Load the folder, fresh or sharing what is unchanged with the index in
        memory (changed since its save, or not)."""
        if self.saved is not None:
            self.index = Index.load(self.folder,
                                    previous=self.index if share else None)
            self.model = dict(self.saved)

    @rule()
    def reader_reloads(self):
        """A second reader of the folder, reloading after the saves of this one
        with its own older state as previous, holds exactly what was saved last."""
        if self.saved is not None:
            self.reader = Index.load(self.folder, previous=getattr(self, "reader", None))
            self._answers_as(self.reader, self.saved)

    @rule(count=st.integers(1, 3))
    def merge(self, count):
        other = Index(TRAINED.extractor, TRAINED.n_words)
        other.vocabulary = TRAINED.vocabulary
        batch = self._new(count)
        other.add([w for _, w in batch], names=[n for n, _ in batch])
        self.index = Index.merge([self.index, other])
        for name, words in batch:
            self.model[name] = words.words
        # a merged index is a new one: its folder is written afresh
        shutil.rmtree(self.folder, ignore_errors=True)
        self.saved = None

    @invariant()
    def answers_as_the_model(self):
        self._answers_as(self.index, self.model)

    @staticmethod
    def _answers_as(index, model):
        assert len(index) == len(model)
        assert sorted(index.names.values()) == sorted(model)
        # the table from names to ids agrees with the ids' names
        assert {name: index.id_of(name) for name in model} == {
            name: int(id_) for id_, name in index.names.items()}
        if not model:
            return
        for seed in (10_000, 10_001):
            query = image_words(index, seed)
            expected = tfidf_scores(model, query.words)
            scores, ids = index.query(query, k=len(model))
            got = {index.names[int(i)]: float(s) for s, i in zip(scores, ids)}
            for name, score in got.items():
                assert score == pytest.approx(expected[name], abs=2e-5), name
            missing = {n for n, s in expected.items() if s > 1e-4} - set(got)
            assert not missing
            assert np.all(np.diff(scores) <= 1e-6)  # best first


class GlobalLifecycle(Lifecycle):
    """A ``GlobalIndex`` of random unit vectors and a dict of them."""

    def __init__(self):
        super().__init__()
        self.index, self.model, self.next_seed = GlobalIndex(_Refuses()), {}, 0

    @rule(target=Lifecycle.names, count=st.integers(1, 4))
    def add(self, count):
        rng = np.random.default_rng(self.next_seed)
        vectors = rng.normal(size=(count, 16)).astype(np.float32)
        names = [f"v-{self.next_seed}-{i}" for i in range(count)]
        self.next_seed += 1
        self.index.add_descriptors(vectors, names)
        for name, v in zip(names, vectors):
            self.model[name] = v / np.linalg.norm(v)
        return names[0]

    @rule()
    def save(self):
        if self.model:
            self.index.save(self.folder)
            self.saved = dict(self.model)

    @rule()
    def load(self):
        if self.saved is not None:
            self.index = GlobalIndex.load(self.folder, _Refuses())
            self.model = dict(self.saved)

    @invariant()
    def answers_as_the_model(self):
        assert sorted(self.index.names.values()) == sorted(self.model)
        if not self.model:
            return
        query = np.random.default_rng(99).normal(size=16).astype(np.float32)
        scores, ids = self.index.query(query, k=len(self.model))
        unit = query / np.linalg.norm(query)
        for score, id_ in zip(scores, ids):
            name = self.index.names[int(id_)]
            assert score == pytest.approx(float(self.model[name] @ unit), abs=1e-5)
        assert len(ids) == len(self.model)


class _Refuses:
    """A describer for an index queried by descriptors only."""

    def __repr__(self):
        return "_Refuses()"

    def describe_many(self, images):
        raise AssertionError("the model test queries descriptors only")


TRAINED = None


@pytest.fixture(autouse=True)
def _trained(trained_index):
    global TRAINED
    TRAINED = trained_index


TestIndexLifecycle = IndexLifecycle.TestCase
TestIndexLifecycle.settings = settings(max_examples=25, stateful_step_count=12,
                                       deadline=None)
TestGlobalLifecycle = GlobalLifecycle.TestCase
TestGlobalLifecycle.settings = settings(max_examples=25, stateful_step_count=12,
                                        deadline=None)
