"""Building apart and joining: words assigned elsewhere, merged shards, and a
build on a Dask cluster, each equal to a serial build."""

import os
import sys

import numpy as np
import pytest
from conftest import process_alive
from test_index import assert_same_results, results

from cvsearch import FeatureExtractor, ImageWords, Index


def shares(trained_index):
    """An empty index sharing the fixture's extractor and vocabulary."""
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    return index


def test_words_assigned_elsewhere_add_like_images(trained_index, image_files, images):
    words = shares(trained_index).image_words(image_files[:6], n_jobs=2)
    assert all(isinstance(w, ImageWords) for w in words)
    index = shares(trained_index)
    assert index.add(words, names=image_files[:6]) == []
    direct = shares(trained_index)
    direct.add(image_files[:6])
    assert_same_results(results(index, images[:3]), results(direct, images[:3]))
    other = Index.build(image_files, FeatureExtractor("sift", max_side=1024),
                        n_words=300, random_state=1)
    with pytest.raises(ValueError, match="another vocabulary"):
        other.add(words[:1], names=["x"])
    bad = words[0]._replace(words=np.full_like(words[0].words, 10**6))
    with pytest.raises(ValueError, match="outside"):
        shares(trained_index).add([bad], names=["x"])
    # the thumbnails the copy decision compares travel with the words
    expected = trained_index.extractor.extract(image_files[2]).thumbnail
    store = index.searcher().store
    assert np.array_equal(store.thumbnail(index.id_of(image_files[2])), expected)
    wrong = words[0]._replace(thumbnail=np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="thumbnail"):
        shares(trained_index).add([wrong], names=["x"])
    unknown = shares(trained_index)
    unknown.add([words[1]._replace(thumbnail=None)], names=["x"])
    assert unknown.searcher().store.thumbnail(unknown.id_of("x")) is None



def test_words_that_no_image_could_have_are_refused(trained_index, image_files, images):
    # Words and features described elsewhere (another machine, a file) are checked before an
    # index keeps or searches them: word ids must be integers (1.5 was word 1),
    # the image's shape two sides of at least a pixel (0 x 0 was stored, and
    # divided by), the keypoints finite (NaN was stored as the corner).
    (words,) = shares(trained_index).image_words(image_files[:1])
    n = len(words.words)
    odd_words = {
        "integers": words._replace(words=words.words.astype(np.float32) + 0.5),
        "shape": words._replace(image_shape=(0, 0)),
        "finite": words._replace(keypoints=np.where(
            np.arange(n)[:, None] == 3, np.nan, words.keypoints)),
        "shape ": words._replace(image_shape=(480, 640, 3)),
        "finite ": words._replace(keypoints=words.keypoints * np.inf),
        "keypoints of shape": words._replace(keypoints=words.keypoints[:-1])}
    # features computed elsewhere likewise (a keypoint short of its descriptors
    # raised IndexError in a query; NaN descriptors were given words)
    features = trained_index.extractor.extract(image_files[0])
    n = len(features.descriptors)
    holed = np.where(np.arange(n)[:, None] == 2, np.nan, features.descriptors)
    odd_features = {
        "finite": features._replace(descriptors=holed.astype(np.float32)),
        "finite ": features._replace(keypoints=features.keypoints * np.nan),
        "shape": features._replace(image_shape=(0, 0)),
        "keypoints of shape": features._replace(keypoints=features.keypoints[:-1]),
        "dtype": features._replace(descriptors=features.descriptors.astype(np.float64))}
    for good, odd in [(words, odd_words), (features, odd_features)]:
        for what, bad in odd.items():
            index = shares(trained_index)
            with pytest.raises(ValueError, match=what.strip()):
                index.add([bad], names=["x"])
            assert len(index) == 0
            with pytest.raises(ValueError, match=what.strip()):
                trained_index.query(bad)
        assert len(shares(trained_index).add([good], names=["x"]) or []) == 0


def test_merged_shards_equal_one_index(trained_index, image_files, images):
    shards = [shares(trained_index) for _ in range(3)]
    for i, shard in enumerate(shards):
        shard.add(image_files[i::3])
    merged = Index.merge(shards)
    whole = shares(trained_index)
    whole.add([p for i in range(3) for p in image_files[i::3]])
    assert merged.names == whole.names
    first = image_files[0]
    assert np.array_equal(merged.searcher().store.thumbnail(merged.id_of(first)),
                          whole.searcher().store.thumbnail(whole.id_of(first)))
    assert_same_results(results(merged, images[:4], rerank=5),
                        results(whole, images[:4], rerank=5))
    with pytest.raises(ValueError, match="more than one index"):
        Index.merge([shards[0], shards[0]])
    other_weighting = shares(trained_index)
    other_weighting.add(image_files[:2], names=["x", "y"])
    other_weighting.tf_power = 1.0
    with pytest.raises(ValueError, match="tf_power"):
        Index.merge([shards[0], other_weighting])
    assert merged.weighting == shards[0].weighting == {
        "power": 1.0, "tf_power": 0.2, "pyramid_levels": 0}
    with pytest.raises(ValueError, match="share one vocabulary"):
        Index.merge([shards[0], Index.build(image_files[:4], FeatureExtractor(
            "sift", max_side=1024), n_words=100, random_state=0)])


def test_dask_cluster_build_is_identical_to_a_serial_build(image_files, images):
    distributed = pytest.importorskip("distributed")
    extractor = FeatureExtractor("sift", max_side=1024)
    serial = Index.build(image_files, extractor, n_words=200, random_state=0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        on_dask = Index.build(image_files, extractor, n_words=200, random_state=0,
                              scheduler=client)
        more = shares(on_dask)
        more.add(image_files[:5], scheduler=cluster.scheduler_address)
    assert np.array_equal(on_dask.vocabulary.centers_, serial.vocabulary.centers_)
    assert on_dask.names == serial.names
    assert_same_results(results(on_dask, images[:4], rerank=5),
                        results(serial, images[:4], rerank=5))
    assert len(more) == 5


def test_queries_take_words_assigned_beforehand(trained_index, image_files):
    (words,) = trained_index.image_words([image_files[5]])
    by_words = trained_index.query(words, k=3, rerank=3, return_inliers=True)
    # words carry no descriptors, so no second words: the same as a path
    # queried without multiple assignment
    by_path = trained_index.query(image_files[5], k=3, rerank=3, return_inliers=True,
                                  multiple_assignment=False)
    for a, b in zip(by_words, by_path):
        assert np.array_equal(a, b)
    other = Index.build(image_files[:6], FeatureExtractor("sift", max_side=1024),
                        n_words=100, random_state=0)
    with pytest.raises(ValueError, match="another vocabulary"):
        other.query(words)


_KILLED_PARENT = """
import os, sys, time
import cv2
import numpy as np
from cvsearch import FeatureExtractor
from cvsearch.parallel import extract_many

folder = sys.argv[1]
paths = []
for i in range(400):
    image = (np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{i}.png"))
    cv2.imwrite(paths[-1], cv2.resize(image, (256, 256)))
print(os.getpid(), flush=True)
for number, (name, item) in enumerate(
        extract_many(FeatureExtractor("orb"), None, paths, paths, n_jobs=2)):
    if number == 0:
        print("working", flush=True)  # the workers have taken their tasks
    time.sleep(0.2)  # the workers stay busy or waiting while the parent is killed
"""


def _children(pid: int) -> set:
    """Process ids whose parent is ``pid`` (Linux's /proc)."""
    from pathlib import Path

    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _command(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


_LATE_WATCHER = """
import multiprocessing, sys, time
from pathlib import Path


def worker(go):
    from cvsearch.parallel import end_with_parent

    while not Path(go).exists():  # still starting when its parent is killed
        time.sleep(0.05)
    end_with_parent()
    time.sleep(600)


if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=worker, args=(sys.argv[1],))
    child.start()
    print(child.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_a_worker_whose_parent_died_before_it_began_to_watch_ends_too(tmp_path):
    """A worker that calls end_with_parent after its parent is gone (a service's
    worker still loading its index when ``serve`` is killed) ends: it watches the
    process that started it, not whichever adopted it."""
    import signal
    import subprocess
    import time

    script = tmp_path / "parent.py"
    script.write_text(_LATE_WATCHER)
    go = tmp_path / "go"
    parent = subprocess.Popen([sys.executable, str(script), str(go)],
                              stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        go.touch()
        deadline = time.monotonic() + 60
        while process_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_alive(worker)
    finally:
        parent.kill()
        if worker is not None and process_alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_worker_processes_end_when_their_parent_is_killed(tmp_path):
    """kill -9 of a process adding images with n_jobs leaves no worker process
    behind holding its memory (joblib's workers would wait for it forever)."""
    import signal
    import subprocess
    import time

    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    workers = set()
    try:
        pid = int(parent.stdout.readline())
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = {c for c in _children(pid) if b"LokyProcess" in _command(c)}
            time.sleep(0.2)
        assert len(workers) == 2, "the workers did not start"
        # a worker watches its parent from its first task on: however slowly
        # they start on a busy machine, wait for the first result, then a little
        assert parent.stdout.readline().strip() == "working"
        time.sleep(3)
        os.kill(pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60
        while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(process_alive(w) for w in workers)
    finally:
        parent.kill()
        for worker in workers:
            if process_alive(worker):
                os.kill(worker, signal.SIGKILL)
