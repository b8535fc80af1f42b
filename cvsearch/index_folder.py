"""How an ``Index`` is laid out in a folder: the manifest it writes, and how a
folder is read back into an ``Index`` with every file checked.

What makes a save durable and atomic (content-named files, fsync, the manifest
replaced last, the writer lock, the lineage) lives in :mod:`cvsearch.storage`;
this module says which files an index has and what their arrays must satisfy.
"""

from __future__ import annotations

import json
import os

import numpy as np

from cvsearch import storage
from cvsearch.features import THUMBNAIL, FeatureExtractor
from cvsearch.store import Segment, Store
from cvsearch.vocabulary import Vocabulary, saved_params
from cvsearch.weighting import pyramid_size

FORMAT = "cvsearch-index"
FORMAT_VERSION = 2


def write_index(index, directory, generation: int, version: str) -> storage.Origin:
    """Write ``index`` to ``directory`` as generation ``generation``: the files the
    folder does not hold yet, then the manifest (:func:`cvsearch.storage.commit`).
    Call it with the folder's writer lock held (``Index.save`` does).

    Returns
    -------
    storage.Origin
        The folder and the identity of the state written.
    """
    snapshot = index._current()  # one consistent state, whatever runs meanwhile
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "cvsearch_version": version, "lineage": index.lineage,
        "generation": generation, "images_root": index.images_root,
        "extractor": index.extractor.get_params(),
        "vocabulary": snapshot.vocabulary.get_params(),
        "weighting": {"power": snapshot.store.power,
                      "tf_power": snapshot.store.tf_power,
                      "pyramid_levels": snapshot.store.levels},
    }
    store = snapshot.store
    written = {}
    segments = []
    for segment in store.segments:
        cached = index._saved_segments.get(id(segment))
        if cached is not None and cached[0] is segment and all(
                storage.has_file(directory, e)
                for e in [cached[1]["names"], *cached[1]["files"].values()]):
            entry = cached[1]  # already in the folder: nothing to write
        else:
            segment.check_geometry()  # never copy unchecked bytes under a new hash
            entry = {"n": len(segment), "files": {
                name: storage.write_file(directory, f"seg-{name}", "npy",
                                         storage.npy_bytes(getattr(segment, name)))
                for name in _SEGMENT_ARRAYS},
                "names": storage.write_file(directory, "names", "json",
                                            storage.json_bytes(list(segment.names)))}
        written[id(segment)] = (segment, entry)
        segments.append(entry)
    deleted = [np.asarray(seg.ids, np.int64)[mask]
               for seg, mask in zip(store.segments, store.deleted) if mask is not None]
    deleted = np.concatenate(deleted) if deleted else np.zeros(0, np.int64)
    cached = index._saved_vocabulary
    if cached is not None and cached[0] is snapshot.vocabulary \
            and storage.has_file(directory, cached[1]):
        vocabulary = cached[1]  # in the folder already (megabytes, never changed)
    else:
        vocabulary = storage.write_file(
            directory, "vocabulary", "npz",
            storage.npz_bytes(snapshot.vocabulary.get_state()))
    manifest.update(
        n_images=len(store), next_id=store.next_id, segments=segments,
        n_keypoints=int(sum(len(s.kp_words) for s in store.segments)),
        files={"vocabulary": vocabulary},
        deleted=storage.write_file(directory, "deleted", "npy",
                                   storage.npy_bytes(deleted)) if len(deleted)
        else None)
    origin = storage.commit(directory, manifest)
    index._saved_segments = written
    index._saved_vocabulary = (snapshot.vocabulary, vocabulary)
    return origin


def read_index(cls, path, manifest: dict, verify: bool, previous=None):
    """The index (of class ``cls``) that ``manifest``, read from ``path``, names:
    every file checked as :mod:`cvsearch.storage` says, the segments
    memory-mapped. A ValueError names the first file that does not check.

    ``previous``, an index loaded from (or saved to) the same folder, lends its
    vocabulary and its segments where the manifest names the very files they
    came from (:func:`_shared_with`): they were checked when first read."""
    directory = path.parent
    shared_vocabulary, shared_segments = _shared_with(previous, directory, verify)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}, but this cvsearch "
                         f"reads format_version {FORMAT_VERSION}; rebuild the index "
                         "with this version")
    storage.check_manifest(path, manifest)
    try:
        # indexes saved before tf_power existed used the counts as they are
        weighting = {"tf_power": 1.0, **manifest.get("weighting", {})}
        vocabulary_params = saved_params(manifest["vocabulary"])
        index = cls(FeatureExtractor.from_params(manifest["extractor"]),
                    **vocabulary_params, **weighting)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad parameters ({error}); the index is "
                         "corrupt") from None

    def fail(key, problem):
        name = manifest["files"][key]["name"]
        raise ValueError(f"{directory / name}: {problem}; the index is corrupt")

    files = manifest.get("files")
    entry = files.get("vocabulary") if isinstance(files, dict) else None
    if shared_vocabulary is not None and shared_vocabulary[1] == entry \
            and shared_vocabulary[0].get_params() == vocabulary_params:
        index._vocabulary = shared_vocabulary[0]
    else:
        data = storage.read_file(directory, manifest, "vocabulary")  # entry checked
        vocab = storage.load_npz(
            data, directory / entry["name"],
            {"centers": np.float32, "cell_centers": np.float32,
             "word_cells": np.int32, "binary": np.bool_})
        try:
            index._vocabulary = Vocabulary.from_state(vocabulary_params, vocab)
        except ValueError as error:
            fail("vocabulary", str(error))
    index._saved_vocabulary = (index._vocabulary, entry)
    if index.vocabulary.descriptor_dim != index.extractor.dim:
        fail("vocabulary", f"dim {index.vocabulary.descriptor_dim} does not fit "
             f"the {index.extractor.method} features")
    next_id = manifest.get("next_id")
    if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 0:
        raise ValueError(f"{path}: next_id is not a non-negative integer; the "
                         "index is corrupt")
    segments, saved = [], {}
    metas = manifest.get("segments")
    if not isinstance(metas, list):
        raise ValueError(f"{path}: the list of segments is missing; the index is "
                         "corrupt")
    reused = [shared_segments.get(_entry_key(meta)) for meta in metas]
    digests = None
    if verify:  # what scoring reads, hashed at once on all cores
        digests = storage.sha256_files(directory, [
            entry["name"] for meta, shared in zip(metas, reused)
            if shared is None and isinstance(meta, dict)
            and isinstance(meta.get("files"), dict)
            for key, entry in meta["files"].items() if key not in _GEOMETRY
            and isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and storage.is_data_file_name(entry["name"])])
    last_id = -1
    for meta, shared in zip(metas, reused):
        segment = shared if shared is not None else _load_segment(
            directory, meta, index, verify, digests)
        if len(segment) and (int(segment.ids[0]) <= last_id
                             or int(segment.ids[-1]) >= next_id):
            raise ValueError(f"{directory / meta['files']['ids']['name']}: ids "
                             "overlap another segment's or reach next_id; the "
                             "index is corrupt")
        last_id = int(segment.ids[-1]) if len(segment) else last_id
        segments.append(segment)
        saved[id(segment)] = (segment, meta)
    store = Store(index.n_words, index.pyramid_levels, index.power,
                  tf_power=index.tf_power, segments=segments, next_id=next_id,
                  reference=_reference_from(previous, index, segments)
                  if shared_segments else None)
    if manifest.get("deleted") is not None:
        entry = manifest["deleted"]
        removed = np.asarray(storage.map_npy(directory, entry, "deleted",
                                             (np.int64,), True))
        try:
            store = store.remove(removed) if len(removed) else store
        except KeyError as error:
            raise ValueError(f"{directory / entry['name']}: removes id {error}, "
                             "which is not in the index; the index is "
                             "corrupt") from None
    names = _names_carried_over(previous, store) if shared_segments else None
    if names is None:
        names = dict(zip(store.names_in_order(), store.ids().tolist()))
    if len(names) != len(store):
        raise ValueError(f"{path}: image names are not unique; the index is corrupt")
    index._store, index._name_to_id, index._saved_segments = store, names, saved
    index._checked = verify
    storage.adopt_identity(index, directory, manifest)
    return index


def _entry_key(meta) -> str | None:
    """A segment's manifest entry as a key (its files are named by content)."""
    try:
        return json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError):
        return None  # malformed: _load_segment names the problem


def _reference_from(previous, index, segments):
    """What ``previous``'s current state knows of the norms of ``segments``
    it lends (see :meth:`Store._reference_for`), so ``index``, being loaded,
    bounds them instead of a pass over every posting; None if it weighs them
    otherwise (another power, tf_power or pyramid)."""
    old = previous._store
    if old is None or (old.power, old.tf_power, old.levels) != (
            index.power, index.tf_power, index.pyramid_levels):
        return None
    return old._reference_for(segments)


def _names_carried_over(previous, store) -> dict | None:
    """``store``'s table from names to ids, made from the one ``previous`` holds
    now where ``store`` begins with the same segments and the same deletions in
    them (a reload after another process added images: the names of a million
    images are not gathered again); None where it does not."""
    with previous._lock:  # its table changes in place as it adds and removes
        old = previous._store
        if old is None:
            return None
        common = 0
        for a, b in zip(old.segments, store.segments):
            if a is not b:
                break
            common += 1
        for a, b in zip(old.deleted[:common], store.deleted[:common]):
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                return None
        names = dict(previous._name_to_id)
    for parts, drop in ((zip(old.segments[common:], old.deleted[common:]), True),
                        (zip(store.segments[common:], store.deleted[common:]), False)):
        for segment, mask in parts:  # segments merged away, then those new here
            live = range(len(segment)) if mask is None else np.flatnonzero(~mask)
            for row in live:
                if drop:
                    names.pop(segment.names[row], None)
                else:
                    names[segment.names[row]] = int(segment.ids[row])
    return names


def _shared_with(previous, directory, verify: bool) -> tuple:
    """What an index ``previous`` can lend a load of ``directory``: its
    vocabulary with its manifest entry (or None), and its segments by their
    manifest entries. Nothing unless it was loaded from or saved to this folder,
    with at least the checks this load makes (an index loaded without
    ``verify`` did not hash its files)."""
    origin = getattr(previous, "_origin", None)
    if origin is None or origin.folder != os.path.realpath(directory) \
            or (verify and not previous._checked):
        return None, {}
    return previous._saved_vocabulary, {
        _entry_key(meta): segment
        for segment, meta in previous._saved_segments.values()}


#: The arrays of a segment file set, and the dtypes each may have on disk.
_UINTS = (np.uint8, np.uint16, np.uint32, np.uint64)
_SEGMENT_ARRAYS = {
    "ids": _UINTS, "shapes": (np.int32,), "kp_offsets": (np.int64,),
    "kp_words": _UINTS, "kp_xy": (np.uint16,), "kp_shape": (np.uint8,),
    "post_indptr": (np.int64,), "post_rows": _UINTS, "post_tf": _UINTS,
    "thumbs": (np.uint8,)}
#: Arrays that indexes saved by earlier versions lack, and what they mean then.
_OPTIONAL_ARRAYS = {
    "kp_shape": np.zeros(0, np.uint8),  # no shapes: RANSAC verifies
    "thumbs": np.zeros((0, THUMBNAIL * THUMBNAIL), np.uint8),  # no pixel check
}
#: The keypoint arrays, read only to re-rank, remove or merge: hashed on first use.
_GEOMETRY = ("kp_words", "kp_xy", "kp_shape", "thumbs")


def _load_segment(directory, meta, index, verify: bool,
                  digests: dict | None = None) -> Segment:
    """One segment of a saved index, memory-mapped and checked (``digests``: the
    SHA-256 of its files, if already computed)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise ValueError(f"{directory / storage.MANIFEST}: a segment entry is "
                         "malformed; the index is corrupt")
    arrays, headers = {}, {}
    for name, dtypes in _SEGMENT_ARRAYS.items():
        if name in _OPTIONAL_ARRAYS and name not in meta["files"]:
            arrays[name] = _OPTIONAL_ARRAYS[name]
        else:
            arrays[name], headers[name] = storage.map_npy(
                directory, meta["files"].get(name), f"seg-{name}", dtypes,
                verify and name not in _GEOMETRY, digests, with_header=True)
    names_entry = storage.check_entry(directory, meta.get("names"), "names")
    names = storage.parse_json(storage.read_entry(directory, names_entry, "names"),
                               directory / names_entry["name"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{directory / names_entry['name']}: not a list of names; "
                         "the index is corrupt")
    segment = Segment(names=tuple(names), **arrays)
    problem = _check_segment(segment,
                             index.n_words * pyramid_size(index.pyramid_levels), verify)
    if problem:
        raise ValueError(f"{directory / meta['files']['ids']['name']}: {problem}; the "
                         "index is corrupt")
    if not verify:
        return segment
    hashes = [storage.deferred_sha256(directory, meta["files"][name], arrays[name],
                                      headers[name])
              for name in _GEOMETRY if name in meta["files"]]
    words, n_words = arrays["kp_words"], index.n_words

    def check_geometry():
        for check in hashes:
            check()
        if len(words) and int(words.max()) >= n_words:
            raise ValueError(f"{directory / meta['files']['kp_words']['name']}: word "
                             f"ids outside 0..{n_words - 1}; the index is corrupt")
    return Segment(names=segment.names, **arrays,
                   geometry_check=storage.DeferredCheck(check_geometry))


def _check_segment(segment: Segment, n_columns: int, full: bool) -> str | None:
    """Describe the first inconsistency of a loaded segment, or None. Without
    ``full``, only what costs O(images + columns) is checked."""
    n = len(segment.names)
    ids, shapes, offsets = segment.ids, segment.shapes, segment.kp_offsets
    indptr = segment.post_indptr
    if ids.shape != (n,) or (n > 1 and np.any(np.diff(ids.astype(np.int64)) <= 0)):
        return f"ids are not {n} increasing ids, one per name"
    if shapes.shape != (n, 2) or (n and shapes.min() < 1):
        return f"shapes has shape {shapes.shape}, expected ({n}, 2) positive sizes"
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
            or offsets[-1] != len(segment.kp_words):
        return "keypoint offsets are not increasing from 0 to the number of keypoints"
    if segment.kp_xy.shape != (len(segment.kp_words), 2):
        return "keypoint positions do not match the keypoint words"
    if segment.kp_shape.shape not in ((0,), (len(segment.kp_words),)):
        return "keypoint shapes do not match the keypoint words"
    if segment.thumbs.shape not in ((0, THUMBNAIL ** 2), (n, THUMBNAIL ** 2)):
        return f"thumbnails have shape {segment.thumbs.shape}, expected ({n}, " \
               f"{THUMBNAIL ** 2})"
    if indptr.shape != (n_columns + 1,) or indptr[0] != 0 \
            or np.any(np.diff(indptr) < 0) or indptr[-1] != len(segment.post_rows) \
            or segment.post_tf.shape != segment.post_rows.shape:
        return "the postings are not one run per column"
    if full:  # the keypoint words' range is checked with their hash, on first use
        if len(segment.post_rows) and (int(segment.post_rows.max()) >= n
                                       or int(segment.post_tf.min()) < 1):
            return "postings name rows outside the segment, or zero counts"
    return None
