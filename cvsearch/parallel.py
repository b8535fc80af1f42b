"""Feature extraction and word assignment over many images: in this process, in
joblib worker processes, or on a Dask cluster.

Images go out in chunks of ``CHUNK``; each chunk comes back as one item per image,
in order: ``Features`` (training), :class:`ImageWords` (adding: the words and
keypoints an index keeps, no descriptors), or :class:`SkippedImage` for a file
that is not a readable image. Every backend gives the same items.

On Dask (``scheduler``: a ``distributed.Client`` or a scheduler address such as
``"tcp://host:8786"``), the extractor and the vocabulary are scattered to every
worker once (``client.scatter(..., broadcast=True)``) and each task receives
their futures, so a 20,000-word vocabulary is not sent again with every chunk.
The workers read the image files themselves: paths must be valid on them (a
shared file system). Only a bounded window of chunks is in flight at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from typing import NamedTuple

import numpy as np

from cvsearch._threads import one_thread_per_worker
from cvsearch.features import (
    FeatureExtractor,
    Features,
    PreparedImage,
    check_geometry,
    check_thumbnail,
)
from cvsearch.io import READ_ERRORS
from cvsearch.vocabulary import Vocabulary

#: Images per task: large enough that a task's overhead is small, small enough
#: to balance the load.
CHUNK = 16


class SkippedImage(NamedTuple):
    """An input that ``Index.add`` or ``Index.train`` skipped, and why."""

    name: str
    reason: str


class ImageWords(NamedTuple):
    """What an index keeps of an image: its visual words and keypoints.

    Workers return these; ``Index.add`` takes them (with names), so images can be
    described anywhere and added to an index that shares the vocabulary.

    Attributes
    ----------
    words : ndarray of shape (n_keypoints,), int32
        Word of each keypoint.
    keypoints : ndarray of shape (n_keypoints, 4), float32
        ``(x, y, size, angle)``, x the column and y the row, in pixels of the
        original image.
    image_shape : tuple of int
        ``(height, width)``.
    vocabulary : str
        ``Vocabulary.fingerprint`` of the vocabulary that assigned the words; an
        index refuses words of another vocabulary.
    extractor : dict
        ``FeatureExtractor.feature_params()`` of the extractor of the features.
    thumbnail : ndarray of shape (THUMBNAIL, THUMBNAIL), uint8, or None
        See :class:`cvsearch.features.Features`.
    """

    words: np.ndarray
    keypoints: np.ndarray
    image_shape: tuple
    vocabulary: str
    extractor: dict
    thumbnail: np.ndarray | None = None

    @classmethod
    def of(cls, features: Features, vocabulary: Vocabulary) -> ImageWords:
        """The words of ``features`` under ``vocabulary``."""
        return cls.of_many([features], vocabulary)[0]

    @classmethod
    def of_many(cls, features: list[Features], vocabulary: Vocabulary
                ) -> list[ImageWords]:
        """The words of several images' features, assigned in one call: the
        vocabulary's search costs per call as well as per descriptor, so a chunk
        of images costs about half what its images do one at a time. The words
        are the same either way."""
        if not features:
            return []
        words = vocabulary.predict(np.concatenate([f.descriptors for f in features]))
        splits = np.cumsum([len(f.descriptors) for f in features])[:-1]
        return [cls(w.astype(np.int32), f.keypoints, f.image_shape,
                    vocabulary.fingerprint, f.extractor, f.thumbnail)
                for w, f in zip(np.split(words, splits), features)]


def prepare_one(extractor: FeatureExtractor, image, name: str):
    """An image read and resized for detection (a path or an array:
    ``PreparedImage``), Features checked, or a SkippedImage if a file is not a
    readable image."""
    if isinstance(image, Features):  # computed beforehand by the caller
        return extractor.check_features(image)
    if isinstance(image, np.ndarray):
        return extractor.prepare(image)  # bad arrays are caller errors
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image {name!r} is a {type(image).__name__}, not a path "
                        "or array")
    try:
        return extractor.prepare(image)
    except READ_ERRORS as error:
        return SkippedImage(name, str(error))


#: Seconds between a worker's checks that the process that started it is alive.
PARENT_CHECK = 1.0
_WATCHING = threading.Lock()
_watched_parent = None  # the parent this process watches, once it does


def end_with_parent(then=None) -> None:
    """In a worker process (joblib's, or a service's): end it once the process
    that started it is gone, however that ended (kill -9, the kernel's
    out-of-memory killer). joblib's workers otherwise wait for work from it
    forever, holding their memory (a vocabulary, a mapped index), and a
    service's serve on, holding the port. A thread checks every
    ``PARENT_CHECK`` seconds whether the worker was handed to another parent.
    Not for Dask's workers: those outlive the process that started them by
    design.

    Parameters
    ----------
    then : callable, optional
        Called (no arguments) before the worker ends: the clean-up its parent
        would have done had it ended cleanly, such as removing a temporary
        folder. Only the first call's ``then`` is kept."""
    global _watched_parent
    with _WATCHING:
        if _watched_parent is not None:
            return
        # the process that started this one, even if it is gone already (a
        # worker still loading when its parent was killed): getppid() would
        # then name whichever process adopted it, and the worker would watch it
        started_by = multiprocessing.parent_process()
        _watched_parent = parent = (os.getppid() if started_by is None
                                    else started_by.pid)

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        try:
            if then is not None:
                then()
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="cvsearch-parent", daemon=True).start()


def in_joblib_worker(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a joblib worker process that ends with
    its parent (:func:`end_with_parent`)."""
    end_with_parent()
    return function(*args, **kwargs)


def extract_chunk(extractor: FeatureExtractor, vocabulary: Vocabulary | None,
                  images: list, names: list, in_worker: bool = False) -> list:
    """Features (or, given a vocabulary, ImageWords) or SkippedImage per image.
    Runs in worker processes."""
    if in_worker:
        # the workers already fill the cores given: threads on top only contend
        one_thread_per_worker()
    # Every image is read and resized before any is described: one stage at a
    # time keeps each stage's code and data in the CPU's caches, where SIFT
    # between two reads evicted them (one-off, 200 Caltech-101 images added in
    # blocks of 20: a median 0.24 ms per image less, the same features)
    items = [_item(extractor, vocabulary, image, name)
             for image, name in zip(images, names)]
    items = [extractor.extract(item) if isinstance(item, PreparedImage) else item
             for item in items]
    if vocabulary is None:
        return items
    # the chunk's features get their words in one call
    extracted = [i for i, item in enumerate(items) if isinstance(item, Features)]
    for i, words in zip(extracted, ImageWords.of_many([items[i] for i in extracted],
                                                      vocabulary)):
        items[i] = words
    return items


def _item(extractor, vocabulary, image, name):
    if isinstance(image, ImageWords):  # assigned beforehand (by a worker)
        if vocabulary is None:
            raise TypeError(f"image {name!r}: training takes images or Features, "
                            "not ImageWords")
        return check_words(image, extractor, vocabulary)
    return prepare_one(extractor, image, name)


def check_words(words: ImageWords, extractor: FeatureExtractor,
                vocabulary: Vocabulary) -> ImageWords:
    """``words`` if ``vocabulary`` assigned them to features of ``extractor``.

    Raises
    ------
    ValueError
        If another vocabulary or extractor made them, or their arrays disagree.
    """
    if words.vocabulary != vocabulary.fingerprint:
        raise ValueError("these words were assigned by another vocabulary "
                         f"({words.vocabulary!r:.20}, this index's is "
                         f"{vocabulary.fingerprint!r:.20}); assign them with this "
                         "index (index.image_words) or one that shares its vocabulary")
    if words.extractor != extractor.feature_params():
        raise ValueError(f"these words come from features of {words.extractor}, but "
                         f"this index uses {extractor!r}")
    n = len(words.words)
    if n and not np.issubdtype(np.asarray(words.words).dtype, np.integer):
        raise ValueError(f"word ids must be integers, got "
                         f"{np.asarray(words.words).dtype}")
    if np.ndim(words.words) != 1 or (n and not 0 <= int(np.min(words.words))
                                      <= int(np.max(words.words)) < vocabulary.n_words):
        raise ValueError("these words are not one row of word ids, or hold ids "
                         f"outside 0..{vocabulary.n_words - 1}")
    check_geometry(words.keypoints, n, words.image_shape)  # one keypoint per word
    check_thumbnail(words.thumbnail)
    return words


def extract_many(extractor: FeatureExtractor, vocabulary: Vocabulary | None,
                 images: list, names: list[str], *, n_jobs: int = 1, scheduler=None,
                 progress=None, stage: str = "add"):
    """Yield ``(name, item)`` per image, in order (see the module docstring).

    Parameters
    ----------
    extractor : FeatureExtractor
    vocabulary : Vocabulary or None
        Given: items are ImageWords; None: Features.
    images, names : list
    n_jobs : int
        joblib worker processes (1: this process; -1: all cores); ignored with a
        scheduler.
    scheduler : distributed.Client or str, optional
        A Dask client or scheduler address: run the chunks on that cluster.
    progress : callable, optional
        ``progress(stage, done, total)`` after each chunk.
    stage : str
    """
    chunks = [(images[i:i + CHUNK], names[i:i + CHUNK])
              for i in range(0, len(images), CHUNK)]
    if scheduler is not None:
        results = _on_dask(scheduler, extractor, vocabulary, chunks)
    elif n_jobs == 1 or len(chunks) <= 1:
        results = (extract_chunk(extractor, vocabulary, *c) for c in chunks)
    else:
        from joblib import Parallel, delayed

        # A generator keeps only a few chunks in flight: memory stays bounded.
        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(in_joblib_worker)(extract_chunk, extractor, vocabulary, *c,
                                      in_worker=True)
            for c in chunks)
    done = 0
    for (_, chunk_names), items in zip(chunks, results):
        done += len(items)
        if progress is not None:  # before yielding: consumers may stop early
            progress(stage, done, len(images))
        yield from zip(chunk_names, items)


def _on_dask(scheduler, extractor, vocabulary, chunks):
    """Chunk results, in order, computed on a Dask cluster."""
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("scheduler= needs Dask's distributed: pip install "
                          "'cvsearch[dask]'") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        # Sent to every worker once; tasks get the futures, not the objects.
        shared_extractor, shared_vocabulary = client.scatter(
            [extractor, vocabulary], broadcast=True, hash=False)
        window = max(4, 2 * len(client.scheduler_info().get("workers", {})))
        pending = deque()
        for chunk in chunks:
            pending.append(client.submit(extract_chunk, shared_extractor,
                                         shared_vocabulary, *chunk, True, pure=False))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if client is not scheduler:
            client.close()
