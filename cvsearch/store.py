"""The image store: immutable segments, tombstones and stable ids.

As Lucene does, images are written in batches to immutable **segments**; removing an
image marks it deleted (a tombstone) without touching its segment, and
:meth:`Store.compact` rewrites segments without their deleted images. Every image
keeps the **id** it was given when added, for life (faiss's ``IndexIDMap``): ids
are never renumbered.

A segment holds two parts:

- what scoring needs: an inverted file of term counts (per column, the rows of the
  images holding it and how often), in the smallest dtypes that hold them;
- what re-ranking needs, read only for a short-list: each image's per-keypoint
  words, positions and shapes. A position is kept as 16-bit fixed point of the
  image's width and height (a precision of side / 65,535 pixels: 0.01 px for a
  640-pixel image). A shape (size and orientation, what one correspondence needs
  to propose a similarity transform) is kept in one byte: the orientation in 16
  sectors of 22.5 degrees, the size in half-octave steps of the image's longer
  side. Keypoints laid on a grid (dense features) have no shape of their own, and
  their segments keep none. The postings are computed from the kept positions, so
  compacting or re-weighting a segment never changes its scores.

Document frequencies add up over segments (minus the deleted images' own), so the
idf is exact for the live images, and an index grown by adds and removes scores
exactly like one built at once. Scoring a database image ``d`` against a query
``q`` (both tf-idf weighted, power-law normalised, L2-normalised; see
:mod:`cvsearch.weighting`) uses ``(tf ** a * idf) ** p = tf ** (a p) * idf ** p``:

    score(q, d) = inv_norm[d] * sum over the query's columns c of
                  (q_c * idf_c ** p) * tf_dc ** (a p)

so a query touches only the postings of its own columns, with one factor per
column and one inverse norm per image. The norms depend on the idf, hence on every
image: computing them is a pass over the postings (compiled with numba when the
'fast' extra is installed), once per state, shared by every query of that state
(by its first query, or before :class:`cvsearch.Index` publishes it if asked:
``Index.warm_changes``). A state made by a small change from one whose norms
were computed needs no pass: each image's norm moved by no more than its words'
weights did, which bounds every score, and a query computes exactly, from their
own postings, only the norms of the images that can reach its best (see
:meth:`Store._norm_plan`). The scores are those of the pass, to the bit.

Segments merge as in Lucene's log merge policy (:meth:`Store.merge_tail`): ten
small segments of one size level become one, so images added one at a time do
not pile up one segment each. Merging moves postings without recomputing them
(:meth:`Segment.merge`) and drops deleted images; :meth:`Store.compact` merges
everything.

A :class:`Store` value never changes: ``add``, ``remove`` and ``compact`` return a
new one, so a query holds one consistent state however the index changes
meanwhile.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cvsearch._compiled import compiled
from cvsearch._threads import map_in_pool
from cvsearch.features import THUMBNAIL, check_thumbnail
from cvsearch.scoring import top_k
from cvsearch.weighting import (
    inverse_of_squares,
    norm_squares,
    pyramid_size,
    spatial_bag_of_words,
)


def smallest_uint(maximum: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``maximum``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if maximum <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class ShortList(Sequence):
    """Database images one after another in shared arrays, as verification
    reads them (:meth:`Store.images`): a sequence of ``(words, keypoints,
    (height, width))``, each image's arrays views of the shared ones.

    Parameters
    ----------
    words : ndarray of shape (m,), int32
    keypoints : ndarray of shape (m, 4), float32
        ``(x, y, size, angle)``; size 0 where unknown.
    shapes : ndarray of shape (n, 2), int64
        Each image's ``(height, width)``.
    sizes : ndarray of shape (n,), int64
        Each image's keypoints, in order: they sum to m.
    """

    __slots__ = ("words", "keypoints", "shapes", "sizes", "_ends", "_images")

    def __init__(self, words, keypoints, shapes, sizes):
        self.words, self.keypoints = words, keypoints
        self.shapes, self.sizes = shapes, sizes
        self._ends = np.cumsum(sizes)
        self._images = None  # the tuples, made once when first looked at

    def _tuples(self) -> list:
        """The images as tuples of views, made at the first look: loops over
        the candidates (the copy decision's) index them many times."""
        if self._images is None:
            ends = self._ends.tolist()
            self._images = [(self.words[lo:hi], self.keypoints[lo:hi], (height, width))
                            for lo, hi, (height, width) in zip(
                                [0] + ends[:-1], ends, self.shapes.tolist())]
        return self._images

    @classmethod
    def of(cls, images) -> ShortList:
        """``images`` (an iterable of ``(words, keypoints, (height, width))``)
        as a ShortList: itself if it is one, else copied into shared arrays."""
        if isinstance(images, ShortList):
            return images
        images = list(images)
        words = [np.asarray(w).ravel() for w, _, _ in images]
        return cls(np.concatenate(words).astype(np.int32, copy=False) if images
                   else np.zeros(0, np.int32),
                   np.concatenate([np.asarray(k, np.float32).reshape(-1, 4)
                                   for _, k, _ in images]) if images
                   else np.zeros((0, 4), np.float32),
                   np.array([(int(s[0]), int(s[1])) for _, _, s in images],
                            np.int64).reshape(-1, 2),
                   np.array([len(w) for w in words], np.int64))

    @classmethod
    def concatenate(cls, parts) -> ShortList:
        """The images of ``parts`` (ShortLists), one part after another."""
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.words for p in parts]),
                   np.concatenate([p.keypoints for p in parts]),
                   np.concatenate([p.shapes for p in parts]),
                   np.concatenate([p.sizes for p in parts]))

    def take(self, positions) -> ShortList:
        """The images at ``positions`` (int), in that order: their slices
        copied one after another (gathering each keypoint costs several times
        more); the same ShortList where they are all of them in order."""
        positions = np.asarray(positions, np.int64).ravel()
        if len(positions) == len(self) and np.array_equal(positions,
                                                          np.arange(len(self))):
            return self
        ends = self._ends.tolist()
        spans = [(ends[p] - size, ends[p]) for p, size in zip(
            positions.tolist(), self.sizes[positions].tolist())]
        words = [self.words[lo:hi] for lo, hi in spans]
        keypoints = [self.keypoints[lo:hi] for lo, hi in spans]
        return ShortList(np.concatenate(words) if spans else self.words[:0],
                         np.concatenate(keypoints) if spans else self.keypoints[:0],
                         self.shapes[positions], self.sizes[positions])

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return self.take(np.arange(len(self))[position])
        return self._tuples()[operator.index(position)]

    def __iter__(self):
        return iter(self._tuples())

    def __repr__(self) -> str:
        return f"ShortList({len(self)} images, {len(self.words)} keypoints)"


class Segment(NamedTuple):
    """An immutable batch of images.

    Attributes
    ----------
    ids : ndarray of shape (n,), unsigned int
        Stable ids, increasing.
    names : tuple of str
    shapes : ndarray of shape (n, 2), int32
        ``(height, width)`` of each image.
    kp_offsets : ndarray of shape (n + 1,), int64
        Image i owns keypoints ``kp_offsets[i]:kp_offsets[i + 1]``.
    kp_words : ndarray of shape (n_keypoints,), unsigned int
    kp_xy : ndarray of shape (n_keypoints, 2), uint16
        ``(x, y)`` as fractions of the image's width and height, times 65,535;
        x the column and y the row.
    kp_shape : ndarray of shape (n_keypoints,) or (0,), uint8
        Each keypoint's size and orientation (see :func:`encode_shape`), or
        empty when the segment's keypoints have none (dense features, or an
        index saved before shapes were kept).
    post_indptr : ndarray of shape (n_columns + 1,), int64
        Column c owns postings ``post_indptr[c]:post_indptr[c + 1]``.
    post_rows : ndarray of shape (n_postings,), unsigned int
        The row (position in this segment) of each posting, increasing within a
        column.
    post_tf : ndarray of shape (n_postings,), unsigned int
        How often the column occurs in that image.
    geometry_check : callable or None
        Checks still owed to the keypoint arrays (``kp_*``) and thumbnails of a
        loaded segment: run once, by :meth:`check_geometry`, before they are
        first read (see :mod:`cvsearch.storage`).
    thumbs : ndarray of shape (n, THUMBNAIL ** 2) or (0, THUMBNAIL ** 2), uint8
        Each image's thumbnail (:func:`cvsearch.features.thumbnail`), flattened;
        all zeros where unknown (images described without one); empty when
        no image of the segment has one (an index saved before they were kept).
    """

    ids: np.ndarray
    names: tuple
    shapes: np.ndarray
    kp_offsets: np.ndarray
    kp_words: np.ndarray
    kp_xy: np.ndarray
    kp_shape: np.ndarray
    post_indptr: np.ndarray
    post_rows: np.ndarray
    post_tf: np.ndarray
    geometry_check: object = None
    thumbs: np.ndarray = np.zeros((0, THUMBNAIL * THUMBNAIL), np.uint8)

    def __len__(self) -> int:
        return len(self.names)

    def check_geometry(self) -> None:
        """Run the checks owed to the keypoint arrays, if any (ValueError naming
        the file if one fails). Every method that reads them calls it first."""
        if self.geometry_check is not None:
            self.geometry_check()

    @property
    def df(self) -> np.ndarray:
        """Images of this segment holding each column (deleted ones included)."""
        return np.diff(self.post_indptr)

    @classmethod
    def build(cls, ids, names, words_list, keypoints_list, shapes, n_words: int,
              levels: int, thumbnails=None) -> Segment:
        """A segment of images given by their per-keypoint words and keypoints.

        Parameters
        ----------
        ids : sequence of int, increasing
        names : sequence of str
        words_list : list of ndarray of shape (n_i,), int
        keypoints_list : list of ndarray of shape (n_i, 4) or (n_i, 2), float32
            ``(x, y, size, angle)``, or ``(x, y)`` for keypoints without a shape.
        shapes : ndarray of shape (n, 2)
        n_words, levels : int
            Vocabulary size and spatial pyramid levels.
        thumbnails : list of (ndarray of shape (THUMBNAIL, THUMBNAIL), uint8, or
            None), optional
            Each image's thumbnail, None where unknown.
        """
        ids = np.asarray(ids, np.int64)
        sizes = np.array([len(w) for w in words_list], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        words = (np.concatenate(words_list) if len(words_list) else
                 np.zeros(0, np.int64)).astype(np.int64)
        keypoints = (np.concatenate(keypoints_list) if len(keypoints_list) else
                     np.zeros((0, 2), np.float32)).astype(np.float32)
        shapes = np.asarray(shapes, np.int32).reshape(-1, 2)
        return cls.of_arrays(ids, tuple(names), shapes, offsets, words, keypoints,
                             n_words, levels, stack_thumbnails(thumbnails, len(ids)))

    @classmethod
    def of_arrays(cls, ids, names, shapes, offsets, words, keypoints, n_words: int,
                  levels: int, thumbs=None) -> Segment:
        """A segment from concatenated arrays (keypoints of shape (n, 4), ``(x,
        y, size, angle)`` in pixels and degrees, size 0 where it is unknown, or
        (n, 2) without shapes; ``thumbs`` as the attribute, None for none); its
        positions and shapes are quantised and its postings computed here."""
        shapes = np.asarray(shapes, np.int32).reshape(-1, 2)
        sizes = np.diff(offsets)
        width_height = np.repeat(shapes[:, ::-1], sizes, axis=0).astype(np.float64)
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 2:  # an image with no keypoints, given flat
            keypoints = keypoints.reshape(-1, 2)
        fraction = np.nan_to_num(keypoints[:, :2] / width_height)
        kp_xy = np.rint(np.clip(fraction, 0, 1) * 65535).astype(np.uint16)
        kp_shape = np.zeros(0, np.uint8)
        if keypoints.shape[1] >= 4 and np.any(keypoints[:, 2] > 0):
            kp_shape = encode_shape(keypoints[:, 2], keypoints[:, 3],
                                    width_height.max(axis=1))
        counts = _postings(words, kp_xy, width_height, shapes, offsets, n_words, levels)
        n = len(names)
        return cls(
            ids=np.asarray(ids).astype(smallest_uint(int(ids.max()) if n else 0)),
            names=tuple(names), shapes=np.ascontiguousarray(shapes, np.int32),
            kp_offsets=np.asarray(offsets, np.int64),
            kp_words=np.asarray(words).astype(smallest_uint(max(n_words - 1, 0))),
            kp_xy=kp_xy, kp_shape=kp_shape,
            thumbs=(np.zeros((0, THUMBNAIL * THUMBNAIL), np.uint8) if thumbs is None
                    else np.ascontiguousarray(thumbs, np.uint8).reshape(
                        -1, THUMBNAIL * THUMBNAIL)),
            post_indptr=counts.indptr.astype(np.int64),
            post_rows=counts.indices.astype(smallest_uint(max(n - 1, 0))),
            post_tf=counts.data.astype(np.int64).astype(
                smallest_uint(int(counts.data.max()) if counts.nnz else 0)))

    @classmethod
    def merge(cls, parts) -> Segment:
        """One segment of the live rows of several, in their order.

        The postings are moved, not recomputed (one pass over them, no sort), so
        the merged segment scores exactly as its parts did.

        Parameters
        ----------
        parts : sequence of (Segment, mask or None)
            Segments in increasing id order, each with its boolean mask of deleted
            rows; all made with the same words and pyramid levels.
        """
        n_columns = len(parts[0][0].post_indptr) - 1
        keeps = [np.ones(len(s), bool) if m is None else ~np.asarray(m)
                 for s, m in parts]
        n = int(sum(int(k.sum()) for k in keeps))
        keep_shapes = any(len(s.kp_shape) for s, _ in parts)
        keep_thumbs = any(len(s.thumbs) for s, _ in parts)
        ids, names, shapes, sizes, words, xy, kp_shape = [], [], [], [], [], [], []
        thumbs = []
        moved, base = [], 0  # per part: (columns, rows, tf) of its kept postings
        for (segment, _), keep in zip(parts, keeps):
            segment.check_geometry()
            ids.append(np.asarray(segment.ids, np.int64)[keep])
            names.extend(name for name, k in zip(segment.names, keep) if k)
            shapes.append(np.asarray(segment.shapes)[keep])
            counts = np.diff(segment.kp_offsets)
            sizes.append(counts[keep])
            per_keypoint = np.repeat(keep, counts)
            words.append(np.asarray(segment.kp_words)[per_keypoint])
            xy.append(np.asarray(segment.kp_xy)[per_keypoint])
            kp_shape.append(_shapes_of(segment)[per_keypoint] if keep_shapes else
                            np.zeros(0, np.uint8))
            if keep_thumbs:
                thumbs.append(_thumbs_of(segment)[keep])
            indptr = np.asarray(segment.post_indptr)
            rows = np.asarray(segment.post_rows)
            alive = keep[rows]
            new_row = np.cumsum(keep, dtype=np.int64) - 1 + base
            columns = np.repeat(np.arange(n_columns, dtype=np.int32),
                                np.diff(indptr))[alive]
            moved.append((columns, new_row[rows[alive]],
                          np.asarray(segment.post_tf)[alive]))
            base += int(keep.sum())
        per_column = [np.bincount(c, minlength=n_columns) for c, _, _ in moved]
        indptr = np.zeros(n_columns + 1, np.int64)
        np.cumsum(np.sum(per_column, axis=0), out=indptr[1:])
        n_postings = int(indptr[-1])
        max_tf = max((int(t.max()) for _, _, t in moved if len(t)), default=0)
        out_rows = np.empty(n_postings, smallest_uint(max(n - 1, 0)))
        out_tf = np.empty(n_postings, smallest_uint(max_tf))
        before = np.zeros(n_columns, np.int64)  # earlier parts' postings per column
        for (columns, rows, tf), count in zip(moved, per_column):
            # a posting's place: its column's start, after the earlier parts',
            # then its rank within its column in this part (columns are sorted)
            first = np.concatenate([[0], np.cumsum(count)[:-1]])
            place = (np.repeat(indptr[:-1] + before - first, count)
                     + np.arange(len(columns)))
            out_rows[place] = rows
            out_tf[place] = tf
            before += count
        ids = np.concatenate(ids)
        return cls(
            ids=ids.astype(smallest_uint(int(ids.max()) if n else 0)),
            names=tuple(names), shapes=np.concatenate(shapes).astype(np.int32),
            kp_offsets=np.concatenate([[0], np.cumsum(np.concatenate(sizes))]
                                      ).astype(np.int64),
            kp_words=np.concatenate(words), kp_xy=np.concatenate(xy).reshape(-1, 2),
            kp_shape=np.concatenate(kp_shape).astype(np.uint8),
            thumbs=(np.concatenate(thumbs) if keep_thumbs else
                    np.zeros((0, THUMBNAIL * THUMBNAIL), np.uint8)),
            post_indptr=indptr, post_rows=out_rows, post_tf=out_tf)

    def select(self, keep: np.ndarray, n_words: int, levels: int) -> Segment:
        """A segment of the rows where ``keep`` (a boolean mask) is True."""
        self.check_geometry()
        sizes = np.diff(self.kp_offsets)
        per_keypoint = np.repeat(keep, sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64)
        return Segment.of_arrays(
            np.asarray(self.ids)[keep].astype(np.int64),
            tuple(n for n, k in zip(self.names, keep) if k), np.asarray(self.shapes)[keep],
            offsets, np.asarray(self.kp_words)[per_keypoint].astype(np.int64),
            self.keypoints()[per_keypoint], n_words, levels,
            np.asarray(self.thumbs)[keep] if len(self.thumbs) else None)

    def keypoints(self) -> np.ndarray:
        """All kept keypoints: ndarray of shape (n_keypoints, 4), float32,
        ``(x, y, size, angle)`` in pixels and degrees, size 0 where unknown."""
        self.check_geometry()
        sizes = np.diff(self.kp_offsets)
        width_height = np.repeat(np.asarray(self.shapes)[:, ::-1], sizes, axis=0)
        return _decode(np.asarray(self.kp_xy), width_height.astype(np.float64),
                       _shapes_of(self))

    def image(self, row: int):
        """``(words int32, keypoints float32 (n, 4) with (x, y, size, angle),
        (height, width))`` of one row; size 0 where unknown."""
        return self.images([row])[0]

    def images(self, rows) -> ShortList:
        """:meth:`image` of several rows, decoded at once (a short-list's
        candidates: one pass instead of one per row), in the order given."""
        self.check_geometry()
        rows = np.asarray(rows, np.int64).ravel()
        offsets = np.asarray(self.kp_offsets)
        lo = offsets[rows].astype(np.int64)
        sizes = offsets[rows + 1].astype(np.int64) - lo
        total = int(sizes.sum())
        shapes = np.asarray(self.shapes)[rows].astype(np.int64)  # (height, width)
        gather = _compiled(_gather_images, total, COMPILED_KEYPOINTS)
        if gather is not None:  # one pass instead of a dozen numpy ones
            keypoints = np.empty((total, 4), np.float32)
            words = np.empty(total, np.int32)
            gather(np.asarray(self.kp_xy).reshape(-1, 2), np.asarray(self.kp_shape),
                   np.asarray(self.kp_words), lo, sizes,
                   shapes[:, ::-1].astype(np.float64), _SHAPE_SIZES, _SHAPE_ANGLES,
                   SHAPE_UNKNOWN, keypoints, words)
        else:
            at = _runs(lo, sizes)
            # np.take of plain views: indexing a memory map with an array of rows
            # costs far more, and slices of a memmap-typed result add up
            kp_shape = (np.take(np.asarray(self.kp_shape), at) if len(self.kp_shape)
                        else np.full(len(at), SHAPE_UNKNOWN, np.uint8))
            # each keypoint scaled by its own image's sides: the same float64
            # arithmetic as one image's, element by element
            keypoints = _decode(np.take(np.asarray(self.kp_xy), at, axis=0),
                                np.repeat(shapes[:, ::-1], sizes, axis=0).astype(
                                    np.float64), kp_shape)
            words = np.take(np.asarray(self.kp_words), at).astype(np.int32)
        return ShortList(words, keypoints, shapes, sizes)

    def thumbnail(self, row: int) -> np.ndarray | None:
        """One row's thumbnail, (THUMBNAIL, THUMBNAIL) uint8, or None if unknown."""
        if not len(self.thumbs):
            return None
        self.check_geometry()
        small = np.asarray(self.thumbs[row]).reshape(THUMBNAIL, THUMBNAIL)
        return small if small.any() else None

    def postings_of(self, rows: np.ndarray, n_words: int, levels: int):
        """The postings of a segment of just ``rows`` (in their order), computed
        again from their keypoints as :meth:`of_arrays` computed this segment's:
        what a few rows' norms need, without a pass over every posting.

        Returns
        -------
        indptr : ndarray of shape (n_columns + 1,), int64
        post_rows : ndarray of shape (n_postings,), int64
            Positions in ``rows``, increasing within a column.
        post_tf : ndarray of shape (n_postings,), int64
        """
        self.check_geometry()
        rows = np.asarray(rows, np.int64)
        offsets = np.asarray(self.kp_offsets)
        lo = offsets[rows]
        sizes = offsets[rows + 1] - lo
        at = _runs(lo, sizes)
        words = np.take(np.asarray(self.kp_words), at).astype(np.int64)
        n_columns = n_words * pyramid_size(levels)
        if levels == 0:  # a keypoint's column is its word: counted directly
            keys, tf = np.unique(words * len(rows) + np.repeat(np.arange(len(rows)),
                                                               sizes),
                                 return_counts=True)
            columns, post_rows = np.divmod(keys, len(rows))
            indptr = np.zeros(n_columns + 1, np.int64)
            np.cumsum(np.bincount(columns, minlength=n_columns), out=indptr[1:])
            return indptr, post_rows, tf.astype(np.int64)
        shapes = np.asarray(self.shapes)[rows]
        width_height = np.repeat(shapes[:, ::-1], sizes, axis=0).astype(np.float64)
        kp_xy = np.take(np.asarray(self.kp_xy).reshape(-1, 2), at, axis=0)
        counts = _postings(words, kp_xy, width_height, shapes,
                           np.concatenate([[0], np.cumsum(sizes)]), n_words, levels)
        return (counts.indptr.astype(np.int64), counts.indices.astype(np.int64),
                counts.data.astype(np.int64))

    def row_columns(self, rows: np.ndarray, n_words: int, levels: int) -> np.ndarray:
        """Document-frequency contribution of ``rows``: for each column, how many
        of them hold it. ndarray of shape (n_columns,), int64."""
        if not len(rows):
            return np.zeros(n_words * pyramid_size(levels), np.int64)
        return np.diff(self.postings_of(np.unique(rows), n_words, levels)[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (names not included)."""
        return int(sum(np.asarray(a).nbytes for a in (
            self.ids, self.shapes, self.kp_offsets, self.kp_words, self.kp_xy,
            self.kp_shape, self.post_indptr, self.post_rows, self.post_tf,
            self.thumbs)))


#: Keypoint shape bytes (:func:`encode_shape`): the orientation in this many
#: sectors (high 4 bits), the size in half-octave steps (low 4 bits) from
#: 2 ** SHAPE_MIN_LOG2 of the image's longer side, and the byte of an unknown shape.
SHAPE_SECTORS = 16
SHAPE_MIN_LOG2 = -10.0
SHAPE_UNKNOWN = 0xFF


def _runs(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, a + n) for a, n in zip(starts, sizes)])``, int64:
    the positions of several runs of a flat array (an image's keypoints, a
    column's postings), one run after another."""
    sizes = np.asarray(sizes, np.int64)
    ends = np.cumsum(sizes)
    return (np.arange(int(ends[-1]) if len(ends) else 0)
            + np.repeat(np.asarray(starts, np.int64) - ends + sizes, sizes))


def _postings(words, kp_xy, width_height, shapes, offsets, n_words: int, levels: int):
    """Term counts of images from their words and quantised positions (what
    a segment's postings are): csc_matrix (n_images, n_columns), sorted."""
    counts = spatial_bag_of_words(words, _decode(kp_xy, width_height), shapes, offsets,
                                  n_words, levels).tocsc()
    counts.sort_indices()
    return counts


def encode_shape(size: np.ndarray, angle: np.ndarray, side: np.ndarray) -> np.ndarray:
    """One byte per keypoint for its size and orientation.

    The size is kept relative to the image's longer side, in 15 half-octave steps
    from 2**-10 of it (SIFT's smallest keypoints in a 640-pixel image are 2**-8.5
    of it; larger and smaller ones are clipped), so the byte means the same at any
    resolution; the orientation in 16 sectors of 22.5 degrees. One correspondence
    then gives its similarity transform to within half a sector and half a step,
    which local optimisation refines (:mod:`cvsearch.rerank`).

    Parameters
    ----------
    size, angle : ndarray of shape (n,)
        Diameter in pixels (<= 0: unknown) and OpenCV angle in degrees.
    side : ndarray of shape (n,)
        The longer side of each keypoint's image, pixels.

    Returns
    -------
    ndarray of shape (n,), uint8
        ``SHAPE_UNKNOWN`` where the size is unknown.
    """
    size = np.asarray(size, np.float64)
    known = np.isfinite(size) & (size > 0) & np.isfinite(angle)
    sector = np.floor(np.where(known, angle, 0) * (SHAPE_SECTORS / 360.0))
    sector = np.mod(sector, SHAPE_SECTORS).astype(np.int64)
    step = np.floor(2 * (np.log2(np.where(known, size, 1.0) / side) - SHAPE_MIN_LOG2))
    step = np.clip(np.nan_to_num(step), 0, 14).astype(np.int64)
    return np.where(known, sector * 16 + step, SHAPE_UNKNOWN).astype(np.uint8)


def decode_shape(codes: np.ndarray, side: np.ndarray):
    """Sizes and angles of shape bytes, at the middle of their step and sector.

    Returns
    -------
    size, angle : ndarray of shape (n,), float64
        0 for both where the shape is unknown.
    """
    codes = np.asarray(codes, np.uint8)
    return np.take(_SHAPE_SIZES, codes) * side, np.take(_SHAPE_ANGLES, codes)


_CODES = np.arange(256)
#: Every shape byte's size (relative to the image's longer side) and angle.
_SHAPE_SIZES = np.where(_CODES == SHAPE_UNKNOWN, 0.0,
                        np.exp2(SHAPE_MIN_LOG2 + ((_CODES & 15) + 0.5) / 2))
_SHAPE_ANGLES = np.where(_CODES == SHAPE_UNKNOWN, 0.0,
                         ((_CODES >> 4) + 0.5) * (360.0 / SHAPE_SECTORS))


def stack_thumbnails(thumbnails, n: int) -> np.ndarray | None:
    """(n, THUMBNAIL ** 2) uint8 of a list of thumbnails (None where unknown:
    zeros), or None when none is known."""
    if thumbnails is None or all(t is None for t in thumbnails):
        return None
    stacked = np.zeros((n, THUMBNAIL * THUMBNAIL), np.uint8)
    for row, small in enumerate(thumbnails):
        if check_thumbnail(small) is not None:
            stacked[row] = np.asarray(small).ravel()
    return stacked


def _thumbs_of(segment: Segment) -> np.ndarray:
    """The segment's thumbnails, zeros (unknown) if it keeps none."""
    if len(segment.thumbs):
        return np.asarray(segment.thumbs)
    return np.zeros((len(segment), THUMBNAIL * THUMBNAIL), np.uint8)


def _shapes_of(segment: Segment) -> np.ndarray:
    """Shape bytes of all of a segment's keypoints (unknown if it keeps none)."""
    if len(segment.kp_shape):
        return np.asarray(segment.kp_shape)
    return np.full(len(segment.kp_words), SHAPE_UNKNOWN, np.uint8)


def _decode(kp_xy: np.ndarray, width_height: np.ndarray,
            kp_shape: np.ndarray | None = None) -> np.ndarray:
    """Pixel keypoints ``(x, y, size, angle)``, float32 (n, 4), of quantised
    positions and shape bytes (None: positions only, size and angle 0)."""
    keypoints = np.zeros((len(kp_xy), 4), np.float32)
    keypoints[:, :2] = kp_xy.reshape(-1, 2).astype(np.float64) / 65535 * width_height
    if kp_shape is not None:
        # np.maximum of the two columns: numpy's reduction along an axis of
        # two is slow over a short-list's tens of thousands of keypoints
        keypoints[:, 2], keypoints[:, 3] = decode_shape(
            kp_shape, np.maximum(width_height[:, 0], width_height[:, 1]))
    return keypoints


def _gather_images(kp_xy, kp_shape, kp_words, lo, sizes, width_height, shape_sizes,
                   shape_angles, unknown, keypoints, words):
    """:meth:`Segment.images` in one loop: the keypoints ``lo[r]:lo[r] +
    sizes[r]`` of each row r, one after another, into ``keypoints`` (m, 4)
    float32 and ``words`` (m,) int32. Each value is :func:`_decode`'s, computed
    with the same float64 operations in the same order; ``kp_shape`` empty: every
    shape ``unknown``. ``width_height`` (rows, 2) float64."""
    at = 0
    for r in range(lo.shape[0]):
        width, height = width_height[r, 0], width_height[r, 1]
        side = max(width, height)
        for k in range(lo[r], lo[r] + sizes[r]):
            keypoints[at, 0] = np.float64(kp_xy[k, 0]) / 65535 * width
            keypoints[at, 1] = np.float64(kp_xy[k, 1]) / 65535 * height
            code = kp_shape[k] if kp_shape.shape[0] else unknown
            keypoints[at, 2] = shape_sizes[code] * side
            keypoints[at, 3] = shape_angles[code]
            words[at] = kp_words[k]
            at += 1


#: Merge policy of :meth:`Store.merge_tail`: this many segments of one size
#: level make one, up to this many images.
MERGE_FACTOR = 10
MAX_MERGED_IMAGES = 100_000

#: Use the numba loops when numba is installed (False: always numpy; for tests).
USE_COMPILED = True
#: Stores with fewer postings in all than this are scored by numpy: loading
#: numba and its cached loops costs about a second, once per process, which
#: every command of a small index would pay to save little. (The choice is the
#: store's, not each segment's: numpy's loop has a cost per query term whatever
#: a segment's size, so a large store's small new segment is scored by numba.)
COMPILED_FROM = 1 << 17
#: A short-list's keypoints are gathered and decoded by numba from this many
#: (fewer: numpy, whose calls then cost less than loading numba once).
COMPILED_KEYPOINTS = 1 << 14


def _compiled(loop, amount: int, least: int | None = None):
    """The loop compiled by numba (``pip install 'cvsearch[fast]'``) for
    ``amount`` items, a store's postings in all (or a short-list's keypoints),
    from ``least`` of them (None: ``COMPILED_FROM``); else None, to use numpy.
    Each loop computes the same numbers as its numpy path, to the bit (the
    scoring loops sum the same float32 products, in float64, in the same
    order); it releases the GIL, so segments are processed on all cores."""
    least = COMPILED_FROM if least is None else least
    return compiled(loop) if USE_COMPILED and amount >= least else None


def _accumulate(indptr, rows, tf, columns, factor, table, n):
    """Per row, the sum over the query's columns of factor * table[tf]."""
    sums = np.zeros(n, np.float64)
    for j in range(columns.shape[0]):
        c = columns[j]
        f = factor[j]
        for k in range(indptr[c], indptr[c + 1]):
            sums[rows[k]] += f * table[tf[k]]
    return sums


def _norm_squares(indptr, rows, tf, table, idf_power, n):
    """Per row, the sum over its postings of (table[tf] * idf_power[column]) ** 2,
    the float32 product squared in float64 (as the numpy path does)."""
    squares = np.zeros(n, np.float64)
    for c in range(indptr.shape[0] - 1):
        weight = idf_power[c]
        for k in range(indptr[c], indptr[c + 1]):
            value = np.float64(table[tf[k]] * weight)
            squares[rows[k]] += value * value
    return squares


def _column_squares(indptr, rows, tf, columns, weight, other, table, n):
    """Per row, the sums over ``columns`` of (table[tf] * weight[j]) ** 2 and of
    (table[tf] * other[j]) ** 2, each float32 product squared in float64
    (:func:`_norm_squares` over some columns, under two weightings)."""
    squares = np.zeros(n, np.float64)
    others = np.zeros(n, np.float64)
    for j in range(columns.shape[0]):
        c = columns[j]
        w, v = weight[j], other[j]
        for k in range(indptr[c], indptr[c + 1]):
            t = table[tf[k]]
            value, second = np.float64(t * w), np.float64(t * v)
            squares[rows[k]] += value * value
            others[rows[k]] += second * second
    return squares, others


class _Moves:
    """How each column's weight moved from ``old_power`` to ``idf_power``:
    ``ratio`` (new / old) ** 2 (1 where either is 0), ``spread`` |log ratio|
    (inf where one of them is 0 and the other is not), ``both`` (neither is 0),
    and ``wide``, the columns whose spread passes :data:`BOUND_SPREAD`
    (increasing); computed once for every segment bounded from ``old_power``."""

    def __init__(self, old_power: np.ndarray, idf_power: np.ndarray):
        old, new = old_power.astype(np.float64), idf_power.astype(np.float64)
        self.both = (old > 0) & (new > 0)
        self.ratio = np.ones(len(new))
        self.ratio[self.both] = (new[self.both] / old[self.both]) ** 2
        self.spread = np.zeros(len(new))
        self.spread[self.both] = np.abs(np.log(self.ratio[self.both]))
        # a weight from or to 0 bounds nothing by a ratio: summed exactly
        self.spread[(old > 0) != (new > 0)] = np.inf
        self.wide = np.flatnonzero(self.spread > BOUND_SPREAD)
        self._lock = threading.Lock()
        self._widest = None

    def widest(self) -> np.ndarray:
        """``wide``, the widest first (sorted once, when a segment needs it)."""
        with self._lock:
            if self._widest is None:
                # (which columns are summed exactly only moves the bounds)
                self._widest = self.wide[np.argsort(-self.spread[self.wide])]
            return self._widest


def _live(parts) -> int:
    """Live images of ``(segment, mask)`` pairs."""
    return int(sum(len(s) - (0 if m is None else int(m.sum())) for s, m in parts))


def _level(n: int, factor: int) -> int:
    """``floor(log_factor(n))`` for n >= 1, in integers; 0 for n = 0."""
    level = 0
    while n >= factor:
        n //= factor
        level += 1
    return level


class _Idf(NamedTuple):
    """A state's idf (one value per column: cheap to compute)."""

    idf: np.ndarray  # (n_columns,), float32
    idf_power: np.ndarray  # idf ** power, float32


class _Weights(NamedTuple):
    """What scoring a state needs beyond its segments (derived, not stored)."""

    idf: np.ndarray  # (n_columns,), float32
    idf_power: np.ndarray  # idf ** power, float32
    inv_norms: tuple  # per segment, (n,) float32; 0 where deleted or empty
    squares: tuple  # per segment, (n,) float64: the sums of squares normed


#: A changed state bounds a segment's norms (:meth:`Store._bounds`) reading at
#: most this fraction of its postings; a change that moves more of the idf
#: costs a pass over every posting instead.
BOUND_POSTINGS = 0.125
#: What bounding one segment costs beside its postings read and its rows, and
#: per row, in postings of the pass (measured: numpy's calls over the columns
#: and the rows); bounds are used only where they cost under half the pass.
BOUND_SEGMENT_COST = 300_000
BOUND_ROW_COST = 10
#: A posting summed exactly costs this many of the pass's (two sums, and the
#: columns' postings read apart).
BOUND_READ_COST = 4
#: Columns whose weight moved by more than this (in log of the squared ratio)
#: are summed exactly, within BOUND_POSTINGS; the others bound the rest.
BOUND_SPREAD = 1e-3
#: Margins of the bounds over float32 products (each relative error under
#: 2 ** -24, squared) and float64 sums: far wider than the rounding they cover,
#: far narrower than the bounds.
RATIO_SLACK = 1e-6
SUM_SLACK = 1e-9
#: A query needing the exact norms of more than this share of a segment's
#: rows computes the segment's in one pass (cheaper than row by row).
EXACT_ROWS_SHARE = 0.125
#: The upper bound of an inverse norm that may be anything (a row whose words
#: may all have lost their weight): finite, so a score of 0 stays 0.
NO_BOUND = np.float32(1e30)


class _Bounds:
    """One segment's inverse norms in a changed state, known within bounds
    (``lo <= inverse norm <= hi``, float32 (n,)), and exactly for the rows a
    query needed (computed from their own postings, as the pass would). It
    holds no reference to its store (which holds it), so a state is freed as
    soon as it is dropped."""

    def __init__(self, index: int, lo, hi, idf_power):
        self.index = index
        self.lo, self.hi, self.idf_power = lo, hi, idf_power
        self.exact = np.full(len(lo), np.nan, np.float32)
        self._lock = threading.Lock()

    def inverse(self, store, rows: np.ndarray) -> np.ndarray:
        """Exact inverse norms of ``rows`` (int64) of this segment of ``store``,
        float32."""
        with self._lock:
            missing = rows[np.isnan(self.exact[rows])]
            if len(missing) > EXACT_ROWS_SHARE * len(self.exact):  # the pass costs less
                segment = store.segments[self.index]
                self.exact[:] = store._norms(segment, None, self.idf_power)[0]
            elif len(missing):
                self.exact[missing] = store._rows_inverse(self.index, missing,
                                                          self.idf_power)
            return self.exact[rows]

    def bounds(self, sums: np.ndarray, mask):
        """Lower and upper bounds of the segment's scores (as
        :meth:`Store._finish` of exact norms would give them), float32 (n,)."""
        return Store._finish(sums, self.lo, mask), Store._finish(sums, self.hi, mask)

    def scores(self, store, sums: np.ndarray, mask, upper: np.ndarray, floor):
        """The rows whose ``upper`` bound reaches ``floor`` (int64, increasing)
        and their scores, computed with exact norms (float32)."""
        chosen = np.flatnonzero(upper >= floor)
        # a row that shares no column with the query scores 0 whatever its norm
        shared = sums[chosen] > 0
        inverse = self.lo[chosen]
        inverse[shared] = self.inverse(store, chosen[shared])
        return chosen, Store._finish(sums[chosen], inverse,
                                     None if mask is None else mask[chosen])


class Store:
    """An immutable state of the image store (see the module docstring).

    Parameters
    ----------
    n_words : int
    levels : int
        Spatial pyramid levels (the columns are ``n_words * pyramid_size(levels)``).
    power : float
        Power-law exponent of the weights.
    tf_power : float
        Exponent of the term counts before the idf weighting.
    """

    def __init__(self, n_words: int, levels: int = 0, power: float = 1.0, *,
                 tf_power: float = 1.0, segments=(), deleted=None, next_id: int = 0,
                 df=None, reference=None):
        self.n_words, self.levels, self.power = int(n_words), int(levels), float(power)
        self.tf_power = float(tf_power)
        self.n_columns = self.n_words * pyramid_size(self.levels)
        self.segments = tuple(segments)
        # deleted[i]: boolean mask of segment i's deleted rows, or None for none
        self.deleted = tuple(deleted) if deleted is not None else (None,) * len(
            self.segments)
        self.next_id = int(next_id)
        self._postings = sum(len(s.post_rows) for s in self.segments)
        self._first_ids = np.array([int(s.ids[0]) for s in self.segments], np.int64)
        sizes = [len(s) for s in self.segments]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_live = int(sum(sizes) - sum(int(m.sum()) for m in self.deleted
                                           if m is not None))
        if df is None:  # from scratch; a change passes the df it updated
            df = np.zeros(self.n_columns, np.int64)
            for segment, mask in zip(self.segments, self.deleted):
                df += segment.df
                if mask is not None and mask.any():
                    df -= segment.row_columns(np.flatnonzero(mask), self.n_words,
                                              self.levels)
        self.df = df
        # per segment, (idf_power, squares) of its norms in an earlier state, or
        # None: what this state's norms are bounded from (see _norm_plan)
        self._reference = (tuple(reference) if reference is not None else
                           (None,) * len(self.segments))
        self._idf = None
        self._weights = None
        self._weights_lock = threading.Lock()
        self._plan = None
        self._plan_lock = threading.Lock()
        self._known = {}  # segment index -> (idf_power, squares) computed in a plan
        self._tables = {}  # dtype -> tf ** (tf_power * power) for each of its values

    # ------------------------------------------------------------ changing
    def _with(self, segments, deleted, df, next_id=None) -> Store:
        return Store(self.n_words, self.levels, self.power, tf_power=self.tf_power,
                     segments=segments, deleted=deleted, df=df,
                     next_id=self.next_id if next_id is None else next_id,
                     reference=self._reference_for(segments))

    def _reference_for(self, segments) -> tuple:
        """For each of ``segments`` that is one of this state's, the sums of
        squares its norms were last computed from and the ``idf_power`` they
        were computed with (None if never): what a new state bounds its norms
        from."""
        weights = self._weights
        known = {}
        for index, segment in enumerate(self.segments):
            entry = ((weights.idf_power, weights.squares[index]) if weights is not None
                     else self._known.get(index, self._reference[index]))
            if entry is not None:
                known[id(segment)] = entry
        return tuple(known.get(id(segment)) for segment in segments)

    def add(self, names, words_list, keypoints_list, shapes, thumbnails=None
            ) -> tuple[Store, np.ndarray]:
        """A new state with these images appended as one segment (``thumbnails``
        as :meth:`Segment.build`'s).

        Returns
        -------
        store : Store
        ids : ndarray of shape (n,), int64
            The ids given to them.
        """
        if not len(names):
            return self, np.zeros(0, np.int64)
        ids = np.arange(self.next_id, self.next_id + len(names), dtype=np.int64)
        segment = Segment.build(ids, names, words_list, keypoints_list, shapes,
                                self.n_words, self.levels, thumbnails)
        return (self._with(self.segments + (segment,), self.deleted + (None,),
                           self.df + segment.df, next_id=int(ids[-1]) + 1), ids)

    def remove(self, ids) -> Store:
        """A new state with these (live) ids marked deleted."""
        ids = np.unique(np.asarray(ids, np.int64))
        deleted = list(self.deleted)
        df = self.df.copy()
        for index, _, rows in self._locate_many(ids):
            segment = self.segments[index]
            mask = (np.zeros(len(segment), bool) if deleted[index] is None
                    else deleted[index].copy())
            mask[rows] = True
            deleted[index] = mask
            # only the newly removed images' columns: O(batch), not O(deleted)
            df -= segment.row_columns(rows, self.n_words, self.levels)
        return self._with(self.segments, deleted, df)

    def compact(self, max_segments: int = 1) -> Store:
        """A new state without deleted images, its segments merged into at most
        ``max_segments`` (neighbours merged, so ids stay in order)."""
        groups = [[(s, m)] for s, m in zip(self.segments, self.deleted)
                  if m is None or not m.all()]
        while len(groups) > max(1, max_segments):
            # merge the smallest neighbouring pair
            sizes = [_live(a) + _live(b) for a, b in zip(groups, groups[1:])]
            i = int(np.argmin(sizes))
            groups[i:i + 2] = [groups[i] + groups[i + 1]]
        kept = [parts[0][0] if len(parts) == 1 and parts[0][1] is None
                else Segment.merge(parts) for parts in groups]
        return self._with(kept, None, self.df)  # the same live images

    def merge_tail(self, factor: int = MERGE_FACTOR,
                   max_images: int = MAX_MERGED_IMAGES) -> Store:
        """A new state whose newest small segments are merged, as Lucene's log
        merge policy does.

        A segment's level is ``floor(log_factor(live images))``. While the newest
        segments hold at least ``factor`` segments in a row of the newest one's
        level or below, and at most ``max_images`` live images together, they are
        merged into one (which may then complete a run of the next level). Adding
        in batches of b images thus keeps fewer than ``factor`` segments per level
        and copies each image about ``log_factor(max_images / b)`` times in all;
        larger segments are merged only by :meth:`compact`.
        """
        segments, deleted = list(self.segments), list(self.deleted)
        while segments:
            level = _level(_live([(segments[-1], deleted[-1])]), factor)
            start = len(segments)
            while start > 0 and _level(_live([(segments[start - 1],
                                               deleted[start - 1])]),
                                       factor) <= level:
                start -= 1
            parts = list(zip(segments[start:], deleted[start:]))
            alive = _live(parts)
            if len(parts) < factor or alive > max_images:
                break
            # every image of the run removed: dropped (a segment needs an image)
            segments[start:] = [Segment.merge(parts)] if alive else []
            deleted[start:] = [None] if alive else []
        if len(segments) == len(self.segments):
            return self
        return self._with(segments, deleted, self.df)

    def reweighted(self, levels: int, power: float, tf_power: float) -> Store:
        """The same images under other pyramid levels, power or tf_power (other
        levels: every segment's postings are computed again from its keypoints)."""
        segments = self.segments
        if levels != self.levels:
            segments = [s.select(np.ones(len(s), bool), self.n_words, levels)
                        for s in segments]
        return Store(self.n_words, levels, power, tf_power=tf_power, segments=segments,
                     deleted=self.deleted, next_id=self.next_id,
                     df=self.df if levels == self.levels else None)

    # -------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.n_live

    def _rows_of(self, ids: np.ndarray):
        """For ``ids`` (n,) int64: each one's segment (-1: before the first), its
        row there (where it would be), and whether it is live there; three
        arrays of shape (n,). Vectorised per segment, as a short-list's ids
        are checked and located together."""
        where = np.searchsorted(self._first_ids, ids, side="right") - 1
        rows = np.zeros(len(ids), np.int64)
        live = np.zeros(len(ids), bool)
        if not len(ids):
            return where, rows, live
        # one segment (one id, or a short-list of recent images): no grouping
        groups = ([(int(where[0]), slice(None))] if where.min() == where.max() else
                  [(index, np.flatnonzero(where == index))
                   for index in np.unique(where).tolist()])
        for index, chosen in groups:
            if index < 0:
                continue
            segment_ids = np.asarray(self.segments[index].ids)
            at = np.searchsorted(segment_ids, ids[chosen])
            found = at < len(segment_ids)
            found[found] = segment_ids[at[found]] == ids[chosen][found]
            mask = self.deleted[index]
            if mask is not None:
                found[found] = ~mask[at[found]]
            rows[chosen], live[chosen] = at, found
        return where, rows, live

    def live(self, ids) -> np.ndarray:
        """Which of ``ids`` are ids of live images: (n,) bool."""
        return self._rows_of(np.asarray(ids, np.int64).ravel())[2]

    def _locate_many(self, ids: np.ndarray):
        """Yield ``(segment index, positions, rows)`` of live ids, segment by
        segment: the positions in ``ids`` of those in the segment, increasing
        (int64), and their rows there; KeyError for the first id that is not
        live."""
        if not len(ids):
            return
        where, rows, live = self._rows_of(ids)
        if not live.all():
            raise KeyError(int(ids[np.argmin(live)]))
        if where.min() == where.max():
            yield int(where[0]), np.arange(len(ids)), rows
            return
        for index in np.unique(where).tolist():
            positions = np.flatnonzero(where == index)
            yield index, positions, rows[positions]

    def locate(self, id_: int) -> tuple[int, int]:
        """``(segment index, row)`` of a live id; KeyError if there is none.
        :meth:`_rows_of` for one id, in scalars: it is called per candidate, where
        numpy's per-call cost would be most of the time."""
        index = int(np.searchsorted(self._first_ids, id_, side="right")) - 1
        if index >= 0:
            segment_ids, mask = self.segments[index].ids, self.deleted[index]
            row = int(np.searchsorted(segment_ids, id_))
            if row < len(segment_ids) and segment_ids[row] == id_ and (
                    mask is None or not mask[row]):
                return index, row
        raise KeyError(int(id_))

    def position(self, id_: int) -> int:
        """The row of a live id among all rows, in segment order (as scored)."""
        index, row = self.locate(id_)
        return int(self._starts[index]) + row

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The ids of rows (positions among all rows, as scored), int64."""
        positions = np.asarray(positions, np.int64)
        index = np.searchsorted(self._starts, positions, side="right") - 1
        return np.array([int(self.segments[i].ids[p - self._starts[i]])
                         for i, p in zip(index.tolist(), positions.tolist())], np.int64)

    def n_keypoints(self) -> int:
        """Keypoints kept for the live images."""
        total = 0
        for segment, mask in zip(self.segments, self.deleted):
            sizes = np.diff(segment.kp_offsets)
            total += int(sizes.sum() if mask is None else sizes[~mask].sum())
        return total

    def searchable_nbytes(self) -> int:
        """Bytes of what scoring reads: postings, their column offsets, one norm
        per image."""
        return int(sum(s.post_rows.nbytes + s.post_tf.nbytes + s.post_indptr.nbytes
                       + 4 * len(s) for s in self.segments))

    def image(self, id_: int):
        """``(words, keypoints, image_shape)`` of a live image (for re-ranking)."""
        index, row = self.locate(id_)
        return self.segments[index].image(row)

    def thumbnail(self, id_: int) -> np.ndarray | None:
        """A live image's thumbnail, (THUMBNAIL, THUMBNAIL) uint8, or None."""
        index, row = self.locate(id_)
        return self.segments[index].thumbnail(row)

    def images(self, ids) -> ShortList:
        """:meth:`image` of several live ids, in their order (located at once);
        KeyError for the first id that is not live."""
        ids = np.asarray(ids, np.int64).ravel()
        located = list(self._locate_many(ids))
        if len(located) <= 1:  # one segment: its rows are in the ids' order
            return (self.segments[located[0][0]].images(located[0][2]) if located
                    else ShortList.of([]))
        # the segments' parts one after another, then each image put in its place
        placed = np.concatenate([positions for _, positions, _ in located])
        return ShortList.concatenate([self.segments[index].images(rows)
                                      for index, _, rows in located]
                                     ).take(np.argsort(placed))

    def ids(self) -> np.ndarray:
        """Live ids, increasing. ndarray of shape (n_live,), int64."""
        parts = [np.asarray(s.ids, np.int64) if m is None else
                 np.asarray(s.ids, np.int64)[~m]
                 for s, m in zip(self.segments, self.deleted)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def name_of(self, id_: int) -> str:
        """The name of a live id; KeyError if there is none."""
        index, row = self.locate(id_)
        return self.segments[index].names[row]

    def names_in_order(self) -> tuple:
        """Names of the live images, in id order."""
        return tuple(n for segment, mask in zip(self.segments, self.deleted)
                     for row, n in enumerate(segment.names)
                     if mask is None or not mask[row])

    def vectors(self):
        """The weighted, L2-normalised vectors of the live images, in id order.

        Returns
        -------
        csr_matrix of shape (n_live, n_columns), float32
        """
        import scipy.sparse as sp

        weights = self.weights()
        blocks = []
        for segment, mask, inv in zip(self.segments, self.deleted, weights.inv_norms):
            columns = np.repeat(np.arange(self.n_columns), np.diff(segment.post_indptr))
            rows = np.asarray(segment.post_rows, np.int64)
            values = (self._tf_power(segment.post_tf) * weights.idf_power[columns]
                      * inv[rows])
            matrix = sp.csr_matrix((values.astype(np.float32), (rows, columns)),
                                   shape=(len(segment), self.n_columns))
            blocks.append(matrix if mask is None else matrix[~mask])
        if not blocks:
            return sp.csr_matrix((0, self.n_columns), dtype=np.float32)
        out = sp.vstack(blocks, format="csr")
        out.sort_indices()
        return out

    # -------------------------------------------------------------- scoring
    def idf_weights(self) -> _Idf:
        """idf and idf ** power of this state (one value per column, computed
        once): what weighting a query needs, without the norms."""
        if self._idf is None:  # two threads may both compute it: the same values
            idf = np.zeros(self.n_columns, np.float64)
            present = self.df > 0
            idf[present] = np.log(self.n_live / self.df[present])
            idf = idf.astype(np.float32)
            self._idf = _Idf(idf, np.power(idf, self.power, dtype=np.float32))
        return self._idf

    def weights(self) -> _Weights:
        """idf and norms of this state, computed once (thread-safe): a pass over
        every posting."""
        with self._weights_lock:
            if self._weights is None:
                idf = self.idf_weights()
                computed = map_in_pool(
                    lambda item: self._norms(*item, idf.idf_power),
                    list(zip(self.segments, self.deleted)))
                self._weights = _Weights(idf.idf, idf.idf_power,
                                         tuple(inv for inv, _ in computed),
                                         tuple(squares for _, squares in computed))
            return self._weights

    def prepare(self) -> None:
        """Compute now what this state's queries need: its norms, or bounds on
        them from an earlier state's (:meth:`_norm_plan`), whichever costs
        less; a query then computes only the exact norms of the few images
        that can reach its best."""
        self._norm_plan()

    def _norm_plan(self) -> tuple:
        """Per segment, its inverse norms (float32 (n,)) or their :class:`_Bounds`.

        A state whose norms were not computed, made by a change from one whose
        were, bounds them instead of a pass over every posting: its segments
        of that state (their sums of squares known under the old idf) and
        the new idf bound each image's norm (:meth:`_bounds`); a query then
        computes exactly the norms of the images that can reach its best, from
        their own postings, in the order the pass sums them: the same numbers.
        New segments (an add's, a merge's) are computed whole. Where that
        would cost more than the pass, the pass runs (:meth:`weights`)."""
        if self._weights is not None:
            return self._weights.inv_norms
        with self._plan_lock:
            if self._plan is None and self._weights is None:
                self._plan = self._bounded_plan() or False
        return self._plan if self._plan else self.weights().inv_norms

    def _bounded_plan(self) -> tuple | None:
        """:meth:`_norm_plan`'s bounds, or None where the pass costs less."""
        rows = self._starts[-1]
        known = sum(len(s) for s, r in zip(self.segments, self._reference)
                    if r is not None)
        if not rows or known * 2 < rows:  # most would be computed whole anyway
            return None
        # what bounding would cost, in postings of the pass: the new segments
        # whole, and per bounded one its fixed cost, its rows and the postings
        # summed exactly within budget; first without the last, which needs
        # how the weights moved
        cost = float(sum(
            len(s.post_rows) if r is None else BOUND_SEGMENT_COST + BOUND_ROW_COST * len(s)
            for s, r in zip(self.segments, self._reference)))
        if cost * 2 > self._postings:
            return None
        idf_power = self.idf_weights().idf_power
        # how each column's weight moved, once per earlier weighting (the
        # segments of one earlier state share theirs)
        moves = {id(r[0]): _Moves(r[0], idf_power) for r in self._reference
                 if r is not None}
        for segment, reference in zip(self.segments, self._reference):
            if reference is not None:
                read = np.diff(np.asarray(segment.post_indptr))[
                    moves[id(reference[0])].wide].sum()
                cost += BOUND_READ_COST * min(read, BOUND_POSTINGS * len(segment.post_rows))
        if cost * 2 > self._postings:
            return None

        def plan_of(index):
            reference = self._reference[index]
            if reference is None:
                inv, squares = self._norms(self.segments[index], self.deleted[index],
                                           idf_power)
                self._known[index] = (idf_power, squares)
                return inv
            return self._bounds(index, reference, idf_power, moves[id(reference[0])])

        plan = map_in_pool(plan_of, list(range(len(self.segments))))
        return None if any(p is None for p in plan) else tuple(plan)

    def _bounds(self, index: int, reference, idf_power, moves) -> _Bounds | None:
        """Bounds on segment ``index``'s inverse norms under ``idf_power``, from
        its sums of squares under an earlier one (``reference``, and ``moves``:
        :class:`_Moves` between the two); None if they would read more than
        :data:`BOUND_POSTINGS` of its postings.

        A row's sum of squares is over its columns c of (t_c w_c) ** 2. The
        columns whose weight w_c moved most relative to the old (an added or
        removed image's rare words; every weight moves a little with the number
        of images) are summed exactly, old and new, from their postings; the
        others' part, old, is the old sum less theirs, and each of its terms
        moved by the ratio (w_new / w_old) ** 2 of its column, which lies
        between the least and the greatest of those ratios."""
        segment = self.segments[index]
        old_power, old_squares = reference
        postings = np.diff(np.asarray(segment.post_indptr))
        held = postings > 0  # this segment's columns
        exact = moves.wide[held[moves.wide]]
        budget = BOUND_POSTINGS * len(segment.post_rows)
        if postings[exact].sum() > budget:  # the widest first, within budget
            widest = moves.widest()
            widest = widest[held[widest]]
            within = int(np.searchsorted(np.cumsum(postings[widest]), budget, "right"))
            if np.isinf(moves.spread[widest[within]]):
                return None
            exact = np.sort(widest[:within])
        rest = moves.both & held
        rest[exact] = False
        ratio = moves.ratio[rest]
        low, high = (float(ratio.min()), float(ratio.max())) if len(ratio) else (1.0, 1.0)
        before, after = self._column_squares(segment, exact, old_power, idf_power)
        others = old_squares - before  # the other columns' part, old
        pad = SUM_SLACK * old_squares
        least = (after + low * (1 - RATIO_SLACK) * np.maximum(others - pad, 0)
                 ) * (1 - SUM_SLACK)
        most = (after + high * (1 + RATIO_SLACK) * (others + pad)) * (1 + SUM_SLACK)
        positive = least > 0  # else the norm may be 0, and its inverse 0
        lo = np.where(positive, inverse_of_squares(most), np.float32(0))
        hi = np.full(len(segment), NO_BOUND, np.float32)
        hi[positive] = inverse_of_squares(least[positive])
        return _Bounds(index, lo, hi, idf_power)

    def _column_squares(self, segment: Segment, columns: np.ndarray, *powers):
        """Per row of ``segment``, its sum of squares over ``columns`` only under
        each of two ``idf_power`` (two float64 (n,))."""
        indptr = np.asarray(segment.post_indptr)
        rows, tf = np.asarray(segment.post_rows), np.asarray(segment.post_tf)
        columns = np.asarray(columns, np.int64)
        kernel = _compiled(_column_squares, self._postings)
        if kernel is not None and tf.dtype.itemsize <= 2:
            return kernel(indptr, rows, tf, columns, powers[0][columns],
                          powers[1][columns], self._tf_table(tf.dtype), len(segment))
        lo, hi = indptr[columns], indptr[columns + 1]
        at = _runs(lo, hi - lo)
        counts = self._tf_power(tf[at])
        return tuple(np.bincount(
            rows[at], minlength=len(segment),
            weights=(counts * np.repeat(power[columns], hi - lo)).astype(np.float64) ** 2)
            for power in powers)

    def _rows_inverse(self, index: int, rows: np.ndarray, idf_power) -> np.ndarray:
        """Exact inverse norms of some rows of segment ``index`` (float32), from
        their own postings: the pass's numbers, summed in its order."""
        segment = self.segments[index]
        indptr, post_rows, tf = segment.postings_of(rows, self.n_words, self.levels)
        # the segment's own dtypes: the same loop runs
        return self._norms_of(indptr, post_rows.astype(segment.post_rows.dtype),
                              tf.astype(segment.post_tf.dtype), len(rows), idf_power)[0]

    def _tf_power(self, tf: np.ndarray) -> np.ndarray:
        """``tf ** (tf_power * power)``, float32."""
        tf = np.asarray(tf, np.float32)
        exponent = self.tf_power * self.power
        return tf if exponent == 1.0 else np.power(tf, exponent, dtype=np.float32)

    def _norms(self, segment: Segment, mask, idf_power):
        """A segment's inverse norms (float32 (n,), 0 where deleted) and sums of
        squares (float64 (n,))."""
        inv, squares = self._norms_of(
            np.asarray(segment.post_indptr), np.asarray(segment.post_rows),
            np.asarray(segment.post_tf), len(segment), idf_power)
        if mask is not None:
            inv[mask] = 0.0
        return inv, squares

    def _norms_of(self, indptr, rows, tf, n: int, idf_power):
        """:meth:`_norms` of postings (column offsets, rows, counts) of n rows."""
        kernel = _compiled(_norm_squares, self._postings)
        if kernel is not None and tf.dtype.itemsize <= 2:
            table = self._tf_table(tf.dtype)
            squares = kernel(indptr, rows, tf, table, idf_power, n)
            # numba makes one version of a loop per dtype combination (compiled
            # or loaded from its cache, milliseconds): have the scoring loop's
            # ready now rather than in the first query of this state
            warm = _compiled(_accumulate, self._postings)
            none, weight = np.zeros(0, np.int64), np.zeros(0, np.float32)
            warm(indptr, rows, tf, none, weight, table, 0)
            # and the loop that bounds a changed state's norms from these
            _compiled(_column_squares, self._postings)(indptr, rows, tf, none, weight,
                                                       weight, table, 0)
        else:
            columns = np.repeat(np.arange(self.n_columns), np.diff(indptr))
            values = self._tf_power(tf) * idf_power[columns]
            squares = norm_squares(values, np.asarray(rows, np.int64), n)
        return inverse_of_squares(squares), squares

    def scores(self, query_columns: np.ndarray, query_values: np.ndarray):
        """Cosine scores of a query with every image, deleted ones at -inf.

        Parameters
        ----------
        query_columns : ndarray of shape (m,), int, increasing
        query_values : ndarray of shape (m,), float32
            The query's L2-normalised tf-idf vector (weighted with
            ``weights().idf``).

        Returns
        -------
        scores : ndarray of shape (n_rows,), float32
            One per row of every segment, in segment order (id order); map rows to
            ids with :meth:`ids_at`.
        """
        weights = self.weights()
        factor = (np.asarray(query_values, np.float32)
                  * weights.idf_power[query_columns])
        query_columns = np.asarray(query_columns, np.int64)
        work = list(zip(self.segments, self.deleted, weights.inv_norms))
        if not work:
            return np.zeros(0, np.float32)
        return np.concatenate(map_in_pool(
            lambda item: self._segment_scores(*item, query_columns, factor), work))

    def best(self, query_columns: np.ndarray, query_values: np.ndarray, m: int,
             exclude: int | None = None):
        """The ``m`` best live images for a query, best first; ties go to the
        smaller id (as :func:`cvsearch.scoring.top_k` over :meth:`scores`).

        Each segment keeps its own ``m`` best while it is scored (on the thread
        pool), and only those are merged: no score vector of the whole index is
        built or sorted. Where the state's norms are bounded (:meth:`_norm_plan`),
        the segments are scored twice over: bounds first, then exactly the
        images whose upper bound reaches the m-th best lower bound of all.

        Parameters
        ----------
        query_columns, query_values
            As for :meth:`scores`.
        m : int
            >= 1.
        exclude : int, optional
            An id left out (for "more like this").

        Returns
        -------
        scores : ndarray of shape (min(m, live images),), float32
        ids : ndarray of the same shape, int64
        """
        idf_power = self.idf_weights().idf_power
        factor = np.asarray(query_values, np.float32) * idf_power[query_columns]
        query_columns = np.asarray(query_columns, np.int64)
        where = self.locate(exclude) if exclude is not None else None
        plan = self._norm_plan()

        def bounded(index):
            """Bounds of the segment's scores (the scores if its norms are
            known), and its own m best lower bounds."""
            segment, mask, norms = self.segments[index], self.deleted[index], plan[index]
            sums = self._segment_sums(segment, query_columns, factor)
            if isinstance(norms, _Bounds):
                lower, upper = norms.bounds(sums, mask)
            else:
                lower = upper = self._finish(sums, norms, mask)
            if where is not None and where[0] == index:
                lower[where[1]] = upper[where[1]] = -np.inf
            k = min(m, len(lower))
            return sums, lower, upper, np.partition(lower, len(lower) - k)[-k:]

        parts, floor = None, -np.inf  # every norm known: one pass per segment
        if any(isinstance(norms, _Bounds) for norms in plan):
            parts = map_in_pool(bounded, list(range(len(self.segments))))
            # the m-th best lower bound of all: no image whose upper bound is
            # below it can be among the m best; the norms of those above it are
            # computed exactly (few: the bounds are close)
            lows = np.concatenate([p[3] for p in parts])
            if len(lows) > m:
                floor = np.partition(lows, len(lows) - m)[len(lows) - m]

        def segment_best(index):
            norms, rows = plan[index], None
            if parts is None:
                part = self._finish(self._segment_sums(self.segments[index], query_columns,
                                                       factor), norms, self.deleted[index])
            elif isinstance(norms, _Bounds):
                # only the rows that can reach the best (increasing, so ties
                # still go to the smaller id)
                sums, _, upper, _ = parts[index]
                rows, part = norms.scores(self, sums, self.deleted[index], upper, floor)
            else:
                part = parts[index][1]
            if where is not None and where[0] == index:
                part[where[1] if rows is None else rows == where[1]] = -np.inf
            # no more than the segment holds: m may be any size (a caller's k)
            scores, best = top_k(part, max(1, min(m, len(part))))
            keep = best >= 0
            best = best[keep] if rows is None else rows[best[keep]]
            return scores[keep], np.asarray(self.segments[index].ids, np.int64)[best]

        found = map_in_pool(segment_best, list(range(len(self.segments))))
        if not found:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.concatenate([f[0] for f in found])
        ids = np.concatenate([f[1] for f in found])
        order = np.lexsort((ids, -scores))  # best first, then the smaller id
        n = min(m, len(self) - (exclude is not None))
        return scores[order[:n]], ids[order[:n]]

    def _segment_scores(self, segment, mask, inv, query_columns, factor):
        return self._finish(self._segment_sums(segment, query_columns, factor), inv,
                            mask)

    def _segment_sums(self, segment, query_columns, factor) -> np.ndarray:
        """Per row of ``segment``, its dot product with the query before its
        norm (float64 (n,), >= 0)."""
        # Plain views of the (memory-mapped) arrays, and a column's postings as
        # one slice: cheaper than memmap objects and a gathered index.
        indptr = np.asarray(segment.post_indptr)
        rows, tf = np.asarray(segment.post_rows), np.asarray(segment.post_tf)
        kernel = _compiled(_accumulate, self._postings)
        if kernel is not None and tf.dtype.itemsize <= 2:
            table = self._tf_table(tf.dtype)
            return kernel(indptr, rows, tf, query_columns, factor, table, len(segment))
        lo, hi = indptr[query_columns], indptr[query_columns + 1]
        lengths = hi - lo
        if not lengths.sum():
            return np.zeros(len(segment))
        spans = list(zip(lo.tolist(), hi.tolist()))
        value = np.repeat(factor, lengths) * self._tf_power(
            np.concatenate([tf[a:b] for a, b in spans]))
        return np.bincount(np.concatenate([rows[a:b] for a, b in spans]),
                           weights=value, minlength=len(segment))

    def _tf_table(self, dtype: np.dtype) -> np.ndarray:
        """``tf ** (tf_power * power)`` for every value of an 8- or 16-bit dtype,
        float32."""
        table = self._tables.get(dtype)
        if table is None:
            table = self._tables[dtype] = self._tf_power(
                np.arange(np.iinfo(dtype).max + 1))
        return table

    @staticmethod
    def _finish(sums, inv, mask):
        part = (sums * inv).astype(np.float32)
        np.minimum(part, 1.0, out=part)  # rounding can pass 1 for itself
        if mask is not None:
            part[mask] = -np.inf
        return part

    @property
    def nbytes(self) -> int:
        return int(sum(s.nbytes for s in self.segments) + self.df.nbytes)
