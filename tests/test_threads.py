"""One budget of threads: the libraries' pools keep to the cores given."""

import cv2
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cvsearch import FeatureExtractor, Index, Vocabulary, _threads


def pool_sizes() -> set:
    """Threads of every BLAS/OpenMP pool of this process, and OpenCV's."""
    return {pool["num_threads"] for pool in threadpool_info()} | {cv2.getNumThreads()}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_the_budget_limits_every_pool_and_restores_it(n_jobs):
    before, pool = pool_sizes(), _threads.THREADS
    with _threads.budget(n_jobs) as cores:
        assert cores == n_jobs
        assert max(pool_sizes()) <= n_jobs and _threads.THREADS <= n_jobs
    assert pool_sizes() == before and _threads.THREADS == pool


def test_building_trains_the_vocabulary_within_n_jobs(monkeypatch, images):
    # scikit-learn's k-means starts one OpenMP thread per core of the machine
    # unless told otherwise: inside a build it keeps to n_jobs.
    seen = []
    fit = Vocabulary.fit

    def recording_fit(self, descriptors):
        seen.append(pool_sizes())
        return fit(self, descriptors)

    monkeypatch.setattr(Vocabulary, "fit", recording_fit)
    index = Index.build(images[:6], FeatureExtractor("sift"), 50,
                        names=[f"i{i}" for i in range(6)], random_state=0, n_jobs=1)
    assert len(index) == 6 and seen and max(seen[0]) == 1


def worker_pools(_):
    from cvsearch.parallel import extract_chunk

    extract_chunk(FeatureExtractor("sift"), None, [], [], in_worker=True)
    return sorted(pool_sizes()), _threads.THREADS


def test_worker_processes_keep_to_one_thread_each():
    from joblib import Parallel, delayed

    for sizes, pool in Parallel(n_jobs=2)(delayed(worker_pools)(i) for i in range(2)):
        assert sizes == [1] and pool == 1


def test_query_batch_in_threads_answers_as_one_at_a_time(trained_index, images):
    one = trained_index.query_batch(images[:6], k=5, rerank=5, return_inliers=True)
    many = trained_index.query_batch(images[:6], k=5, rerank=5, return_inliers=True,
                                     n_jobs=2)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_budgets_open_in_several_threads_restore_the_pools_whatever_the_order():
    # T1 opens 2, T2 opens 1, T1 closes, then T2: the smallest budget holds while
    # both are open, and once both are closed the pools are as before the first.
    import threading

    before, pool = pool_sizes(), _threads.THREADS
    steps = [threading.Event() for _ in range(4)]
    seen = {}

    def first():
        with _threads.budget(2):
            steps[0].set()
            steps[1].wait(10)
            # process-wide pools (OpenMP's thread count is per thread)
            seen["both"] = max(cv2.getNumThreads(), _threads.THREADS)
        steps[2].set()

    def second():
        steps[0].wait(10)
        with _threads.budget(1):
            steps[1].set()
            steps[2].wait(10)
            seen["after_first"] = max(cv2.getNumThreads(), _threads.THREADS)
        steps[3].set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"both": 1, "after_first": 1}
    assert pool_sizes() == before and _threads.THREADS == pool


def test_the_pools_are_found_once_and_again_after_an_import(monkeypatch):
    # finding the pools reads every loaded library (a good part of what a
    # one-image add costs above its features): budgets reuse what was found,
    # until a module is imported (which may load another pool)
    import sys
    import types

    monkeypatch.setattr(_threads, "_CONTROLLER", [])
    before, found = pool_sizes(), []
    for _ in range(3):
        with _threads.budget(1):
            assert max(pool_sizes()) == 1
            found.append(_threads._CONTROLLER[1])
    assert found[0] is found[1] is found[2] and pool_sizes() == before
    monkeypatch.setitem(sys.modules, "cvsearch_test_new_module",
                        types.ModuleType("cvsearch_test_new_module"))
    with _threads.budget(1):
        assert max(pool_sizes()) == 1
        assert _threads._CONTROLLER[1] is not found[0]
    assert pool_sizes() == before


@pytest.mark.parametrize("batch", ["query_batch", "duplicates"])
def test_a_batch_computes_the_norms_on_every_core_it_was_given(trained_index,
                                                               image_files, batch,
                                                               monkeypatch):
    """A changed state's idf and norms wait for its first query (a pass over every
    posting); a batch's searches run one thread each, so the batch computes them
    first, on the cores it was given, not inside its first search's one."""
    from cvsearch.store import Store

    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    index.add(image_files[:6])  # in memory: duplicates searches it in threads
    index.add(image_files[6:8])
    expected = min(2, _threads.THREADS)
    seen = []
    norms_of = Store._norms
    monkeypatch.setattr(Store, "_norms", lambda store, *a: (
        seen.append(_threads.THREADS), norms_of(store, *a))[1])
    if batch == "query_batch":
        index.query_batch(image_files[:4], k=3, n_jobs=2)
    else:
        index.duplicates(rerank=5, n_jobs=2)
    assert seen == [expected] * index.n_segments
