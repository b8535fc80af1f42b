"""Copies within a collection: every image against the index, verified edges,
groups that do not chain, and the copy to keep.

Each image is searched as a query of it would be (short-list, verification,
decision), so the cost per image is one query's, whatever the size of the
collection: with its features extracted again from its file where the file is
still the image indexed (its descriptors give each keypoint its second nearest
word too, and its mirror image's own words: more of its copies verify, as
blurred, noisy or warped copies' words differ from their original's), else
with its stored words (as :meth:`cvsearch.Index.similar`). A short-list that
is mostly the same object as the image searched (screenshots of one page
layout, an app's frame, a shared logo) can hide the image's own copies behind
those matches: it is searched again, ranked by what those matches do not share
(see ``SATURATED``). An edge joins two images decided copies (or the same object)
from either side. Groups are formed around
anchors: the image with most edges is an anchor, its group is itself and the
images verified against it, and the rest goes on without them; an edge counts
only between images joined through each one's best (widest) copy edge (or
between two such parts when half the pairs across them are copies), so a page
layout or a carpet that many images share does not make one group of them. A
member joined to its group by its edge to the anchor alone must agree with the
anchor where the others do (:func:`_elsewhere`): a page of one layout is a copy
of another picture's page around the picture, not on it. So every member of a
group was verified against its anchor, and A ~ B ~ C does not make A and C one
group when A and C do not match. The copy to keep is the one
that shows the picture with most pixels (its scale against the anchor where they
agree, in steps of ``SCALE_STEP``: a screenshot's page is larger than the
picture it shows small), then the one with most pixels of the picture (a crop
holds less of the picture at the same scale; a picture turned onto a larger
canvas counts only the pixels of its picture, :func:`picture_share`; bands or a
frame count as pixels), then one in colour over a grey one (a grey copy lost
the colours; read from the file, decoded small), then the one that agrees most
widely with the rest of its group (the coverage of its copy edges to the other
members, summed: copies made from one original each agree with it more widely
than with each other), then a lossless file (PNG, TIFF, BMP) over a lossy one,
then more bytes per pixel (less compression), then the smaller id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: Files whose format loses nothing: kept before any JPEG of the same size.
LOSSLESS = (".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm")

#: A search whose verified short-list is mostly (``SATURATED``) the same object
#: as the image searched (a page layout, an app's frame or a logo that many
#: images share) may have its copies beyond it, outranked by those. It is
#: searched again, at most ``BEYOND`` times, ranked by only its keypoints whose
#: words fewer than ``SHARED`` of those matches hold (verified with all of them,
#: as any search): the layout no longer ranks, so the picture it frames and that
#: picture's copies come first. However many images share the layout, an image
#: costs a few searches at most.
SATURATED = 0.75
SHARED = 0.5
BEYOND = 2

#: Two parts of a collection joined by each image's best copy edge are one
#: part when at least this share of the pairs across them are copy edges (see
#: :func:`_best_links`): half. Two copies of one picture need not verify as
#: copies of each other (a 20% crop and a mirrored copy), so two parts of one
#: group, two images each, often have two of their four pairs verified.
ACROSS = 0.5

#: A member joined to its group by its edge to the anchor alone agrees with the
#: anchor elsewhere than the others do where fewer than this share of its
#: inliers lie inside the hull of theirs (see :func:`_elsewhere`).
MOSTLY = 0.5

#: A file is in colour where its channels differ by more than this many grey
#: levels on average (a grey picture saved as JPEG with three channels keeps
#: them within one or two), judged on it decoded to at least ``COLOUR_SIDE``
#: pixels along its longer side.
GREY_SPREAD = 3.0
COLOUR_SIDE = 64

#: A picture turned onto a larger canvas shows the picture only in a turned
#: rectangle; the rest is the canvas, of one colour (within
#: ``CANVAS_TOLERANCE`` grey levels in each channel of the border's median),
#: joined to all four sides and at least ``MIN_CANVAS`` of the image. The
#: picture fills at least ``FILLED`` of its smallest enclosing rectangle (an
#: object photographed on a white backdrop is no canvas's picture), turned more
#: than ``AXIS_ANGLE`` degrees from the image's axes: bands and frames count as
#: pixels, as many originals have them (a photo printed with a white margin, a
#: film's frame). Judged on the file decoded to ``CANVAS_SIDE`` pixels along
#: its longer side.
CANVAS_SIDE = 128
CANVAS_TOLERANCE = 12
MIN_CANVAS = 0.03
FILLED = 0.9
AXIS_ANGLE = 2.5

#: Scales of the picture (along a side) that differ by less than this factor
#: count as one when the copy to keep is chosen: measured from the inliers'
#: spread, the same picture's scale varies by a few percent.
SCALE_STEP = 1.25


class Edge(NamedTuple):
    """Two images decided copies (or the same object): the stronger of the two
    searches' evidence."""

    a: int
    b: int
    kind: str
    log_nfa: float
    coverage: float
    inliers: int
    scale: float  # a's pixels per pixel of b along a side, where they agree; NaN: unknown
    query: int = -1  # the image whose search found it (a or b)
    mirrored: bool = False  # found with the query's mirror image
    read_again: bool = False  # the query's file read again (else its stored words)
    finer: bool = False  # found with the small query's features at twice its size


class DuplicateGroup(NamedTuple):
    """A group of copies.

    Attributes
    ----------
    ids : tuple of int
        Its images, the copy to keep first, then by id.
    best : int
        The copy to keep (see the module's docstring).
    anchor : int
        The image every other member was verified against.
    weakest : Edge
        The least certain of the anchor's edges in the group.
    """

    ids: tuple
    best: int
    anchor: int
    weakest: Edge


def edges_of(searcher, id_: int, ranking, features=None) -> list[Edge]:
    """The edges found by searching image ``id_`` with its ``features`` (see
    :func:`features_again`), or its stored words if None: every result decided
    the same object (a copy or not; :func:`group` says what each kind of edge
    may do). A saturated short-list is searched beyond (see ``SATURATED``)."""
    views = (searcher.stored_views(id_, ranking) if features is None
             else searcher.views(features, ranking))
    edges = {}
    for search in range(1 + BEYOND):
        # the last search goes no further: what it shares is not looked for
        _, ids, evidence, shared = searcher.rank_shared(
            views, ranking, exclude=id_, shared_by=SHARED if search < BEYOND else None)
        passed = evidence.same_object
        mean = (evidence.query_coverage + evidence.coverage) / 2
        for i in np.flatnonzero(passed):
            other = int(ids[i])
            scale = float(evidence.scale[i])  # the result's pixels per query pixel
            if other > id_:  # a is the query
                scale = 1 / scale if scale > 0 else float("nan")
            # a pair found again beyond keeps the evidence it was first found with
            edges.setdefault(other, Edge(
                min(id_, other), max(id_, other), str(evidence.kind[i]),
                float(evidence.log_nfa[i]), float(mean[i]), int(evidence.inliers[i]),
                scale, int(id_), bool(evidence.mirrored[i]), features is not None,
                bool(evidence.finer[i])))
        if len(ids) < ranking.rerank or passed.sum() < SATURATED * len(ids):
            break
        # a view all of whose keypoints are shared ranks as it did
        narrower = [common.any() and not common.all() for common in shared]
        if not any(narrower):
            break  # nothing shared to leave out, or nothing left to rank by
        views = [view._replace(words=view.words[~common],
                               keypoints=view.keypoints[~common]) if narrow else view
                 for view, common, narrow in zip(views, shared, narrower)]
    return list(edges.values())


def edge_matches(index, edge: Edge):
    """``(a_xy, b_xy)``: the inlier correspondences that ``edge`` counted, each
    (edge.inliers, 2) float32 in its image's pixels, verified again as the
    search that found it verified them (its query's file read again, or its
    stored words; mirrored or not), so a picture of them shows the edge's count.
    """
    query = edge.query if edge.query in (edge.a, edge.b) else edge.a
    other = edge.b if query == edge.a else edge.a
    path = file_of(index.names[query], index.images_root) if edge.read_again else None
    try:
        if path is None:
            raise FileNotFoundError
        query_xy, other_xy = index.matches(path, other, mirrored=edge.mirrored,
                                           finer=edge.finer)
    except (OSError, ValueError):  # gone or unreadable since: the stored words
        query_xy, other_xy = index.matches_between(query, other,
                                                   mirrored=edge.mirrored)
    return (query_xy, other_xy) if query == edge.a else (other_xy, query_xy)


def features_again(extractor, searcher, id_: int, path):
    """Image ``id_``'s features extracted again from its file ``path``; None where
    there is no file, it cannot be read, or it no longer holds the image indexed
    (another size or another number of keypoints: the extractor is
    deterministic), so that a search falls back on the stored words."""
    if path is None:
        return None
    try:
        features = extractor.extract(path, finer=True)  # as a query's
    except (OSError, ValueError):  # gone, unreadable, too large since
        return None
    words, _, shape = searcher.store.image(id_)
    if (tuple(features.image_shape) != tuple(int(side) for side in shape)
            or len(features.keypoints) != len(words)):
        return None
    return features


def search_images(searcher, extractor, names, root, ids: list, ranking) -> list:
    """``[(id, edges, read_again)]`` of :func:`edges_of` for images ``ids``; each
    searched with its features read again from its file (name under ``root``)
    where it is there (``read_again``), unless ``root`` is None (stored words
    only)."""
    found = []
    for id_ in ids:
        features = (None if root is None else
                    features_again(extractor, searcher, id_, file_of(names[id_], root)))
        found.append((id_, edges_of(searcher, id_, ranking, features),
                      features is not None))
    return found


def edges_in_folder(folder: str, identity, ids: list, ranking, root=None) -> list:
    """:func:`search_images` for images ``ids`` of the index in ``folder`` (in a
    worker process: memory-mapped, not copied). Refuses a folder that another
    writer changed meanwhile (``identity`` is the state the caller searches)."""
    from cvsearch import Index
    from cvsearch._threads import one_thread_per_worker

    one_thread_per_worker()
    index = Index.load(folder, verify=False)
    if index._origin.identity != identity:
        raise RuntimeError(f"{folder} changed while its duplicates were searched; "
                           "run again")
    return search_images(index.searcher(), index.extractor, index.names, root, ids,
                         ranking)


class Checkpoint:
    """Edges found so far, one JSON line per image searched, appended as they
    come (a run that stops is resumed where it stopped). The first line says
    which index state and settings the edges belong to; a file made for another
    is refused rather than mixed in."""

    def __init__(self, path, header: dict):
        self.path = Path(path)
        self.header = header
        self.done: dict[int, list[Edge]] = {}
        if self.path.exists() and self.path.stat().st_size:
            self._read()
        else:
            self._append(header)

    def _read(self):
        lines = self.path.read_bytes().split(b"\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            raise ValueError(f"{self.path}: not a cvsearch duplicates checkpoint; "
                             "remove it or give another path") from None
        if header != self.header:
            raise ValueError(f"{self.path}: made for another index state or other "
                             f"settings ({header}); remove it to start again")
        for line in lines[1:]:
            try:
                record = json.loads(line)
                edges = [Edge(*edge) for edge in record["edges"]]
                self.done[int(record["id"])] = edges
            except (ValueError, KeyError, TypeError):
                break  # a line torn by a crash: searched again
        # cut what follows the last whole line, so appends start clean
        whole = sum(len(line) + 1 for line in lines[:len(self.done) + 1])
        with open(self.path, "r+b") as file:
            file.truncate(min(whole, self.path.stat().st_size))

    def _append(self, record: dict):
        with open(self.path, "ab") as file:
            file.write(json.dumps(record).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())

    def add(self, id_: int, edges: list[Edge]):
        self.done[id_] = edges
        self._append({"id": id_, "edges": [list(edge) for edge in edges]})


def quality(shapes: dict, files: dict):
    """The sort key of the copy to keep, ``key(id_, agreement=0.0)`` (larger is
    better): the image's pixels of the picture, whether in colour, then
    ``agreement`` (its agreement with the rest of its group, which
    :func:`group` passes), then lossless, bytes per pixel and the smaller id.
    What is read from the file is read once per image (grouping compares the
    same images many times; each key stats a file and decodes it small)."""
    keys: dict = {}

    def key(id_, agreement=0.0):
        if id_ not in keys:
            height, width = shapes[id_]
            path = files.get(id_)
            lossless, per_pixel = False, 0.0
            if path is not None:
                lossless = path.suffix.lower() in LOSSLESS
                try:
                    per_pixel = path.stat().st_size / max(height * width, 1)
                except OSError:
                    pass
            keys[id_] = (height * width * picture_share(path), in_colour(path),
                         lossless, per_pixel, -id_)
        pixels, colour, *rest = keys[id_]
        return (pixels, colour, agreement, *rest)
    return key


def _decoded_small(path, side: int) -> np.ndarray | None:
    """The image file ``path`` in colour, (h, w, 3) uint8, decoded reduced (a
    JPEG at down to 1/8 in the decoder) to at least ``side`` pixels along its
    longer side; None where it cannot be read."""
    from cvsearch.io import read_image_reduced

    if path is None:
        return None
    try:
        # decoded in colour: a one-channel file comes with three equal channels
        return read_image_reduced(path, min_side=side, grayscale=False)[0]
    except (OSError, ValueError):
        return None


def in_colour(path) -> bool:
    """Whether the image file ``path`` shows colours (True where it cannot be
    read: unknown). Decoded small (a JPEG at 1/8 in the decoder): its channels
    differ by more than ``GREY_SPREAD`` grey levels on average. A grey picture
    saved with three channels has them (nearly) equal."""
    image = _decoded_small(path, COLOUR_SIDE)
    return image is None or float(np.ptp(image, axis=2).mean()) > GREY_SPREAD


def picture_share(path) -> float:
    """The share of the image file ``path`` that shows its picture: less than 1
    only where the picture lies turned on a canvas (see ``CANVAS_SIDE``), measured
    from inside (the outline's pixels mix in the canvas); 1.0 where there is no
    canvas or the file cannot be read."""
    import cv2

    image = _decoded_small(path, CANVAS_SIDE)
    if image is None:
        return 1.0
    scale = CANVAS_SIDE / max(image.shape[:2])
    if scale < 1:  # every file judged at one size
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    sides = [image[0], image[-1], image[:, 0], image[:, -1]]
    colour = np.median(np.concatenate(sides), axis=0)
    like = np.abs(image.astype(np.int16) - colour).max(axis=2) <= CANVAS_TOLERANCE
    _, labels = cv2.connectedComponents(like.astype(np.uint8), connectivity=4)
    on_sides = [set(np.unique(side[like_side])) for side, like_side in zip(
        (labels[0], labels[-1], labels[:, 0], labels[:, -1]),
        (like[0], like[-1], like[:, 0], like[:, -1]))]
    canvas_labels = list(set.union(*on_sides))
    canvas = np.isin(labels, canvas_labels) & like
    # one canvas around the picture: of one colour, joined to every side
    if canvas.mean() < MIN_CANVAS or not all(on_sides):
        return 1.0
    inside = cv2.erode((~canvas).astype(np.uint8), np.ones((3, 3), np.uint8))
    outlines, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not outlines:
        return 1.0
    outline = max(outlines, key=cv2.contourArea)
    _, (width, height), angle = cv2.minAreaRect(outline)
    turned = min(angle % 90, 90 - angle % 90)
    # a rectangle turned off the axes: bands and a frame are not (an original
    # may have them), nor a subject on a backdrop
    if turned <= AXIS_ANGLE or cv2.contourArea(outline) < FILLED * width * height:
        return 1.0
    return float(inside.mean())


def group(edges: list[Edge], key, kind: str = "copy",
          matches=None) -> list[DuplicateGroup]:
    """Groups around anchors (see the module's docstring); ``key(id)`` orders the
    copies to keep; ``matches(edge)`` gives an edge's inliers ``(a_xy, b_xy)``
    (:func:`edge_matches`), or None: members are not checked with them (see
    :func:`_elsewhere`).

    For copies, an edge is a copy edge if either search decided "copy". A
    member is an image with a copy edge to the anchor, or with an object edge to
    the anchor and a copy edge to such a member: the anchor verified it as the
    same picture's object, and a copy of the anchor verified it as a copy (a
    20% crop often shares too little with a screenshot of the whole to be
    called its copy, though both are copies of the original). Edges count only
    within the parts that each image's best copy edge joins, parts that mostly
    verified against each other joined (:func:`_best_links`): two screenshots of
    one page layout are copies of each other on the page, but each is a wider
    copy of its own picture."""
    strongest: dict[tuple, Edge] = {}
    for edge in edges:
        pair = (edge.a, edge.b)
        old = strongest.get(pair)
        if old is None or (edge.kind == "copy", -edge.log_nfa) > (
                old.kind == "copy", -old.log_nfa):
            strongest[pair] = edge
    neighbours: dict[int, dict[int, Edge]] = {}  # the edges that make groups
    support: dict[int, dict[int, Edge]] = {}  # object edges, for copies
    linked = _best_links(strongest.values()) if kind == "copy" else None
    for edge in strongest.values():
        if linked is not None and linked.get(edge.a, -1) != linked.get(edge.b, -2):
            continue
        table = neighbours if kind != "copy" or edge.kind == "copy" else support
        table.setdefault(edge.a, {})[edge.b] = edge
        table.setdefault(edge.b, {})[edge.a] = edge
    groups = []
    for component in _components(neighbours):
        remaining = set(component)
        while remaining:
            anchor = max(remaining, key=lambda n: (
                len(neighbours[n].keys() & remaining), key(n)))
            members = {anchor} | (neighbours[anchor].keys() & remaining)
            for other in support.get(anchor, {}).keys() & remaining - members:
                if neighbours.get(other, {}).keys() & members:
                    members.add(other)
            if matches is not None and kind == "copy":
                members -= _elsewhere(anchor, members, neighbours, support, matches)
            remaining -= members
            if len(members) < 2:
                continue
            edges_of_anchor = {**support.get(anchor, {}), **neighbours[anchor]}
            agreement = _agreement(members, neighbours)
            best = max(members, key=lambda m: (
                _scale_step(m, anchor, edges_of_anchor.get(m)), key(m, agreement[m])))
            ids = (best, *sorted(members - {best}))
            edges_in = [neighbours[anchor].get(m) or support[anchor][m]
                        for m in members - {anchor}]
            weakest = max(edges_in, key=lambda e: (e.kind == "object", e.log_nfa,
                                                   -e.coverage))
            groups.append(DuplicateGroup(ids, best, anchor, weakest))
    groups.sort(key=lambda g: (-len(g.ids), g.best))
    return groups


def _elsewhere(anchor: int, members: set, neighbours: dict, support: dict,
               matches) -> set:
    """The members that agree with the anchor elsewhere than the rest of the
    group does (in a group of four or more: with fewer, which is the picture
    is not known): joined by their edge to the anchor alone (no edge to another
    member), whose inliers lie mostly (``MOSTLY``) outside the convex hull of
    the inliers of the anchor's edges to the other members, in the anchor's
    pixels. A page of one layout as the anchor is a copy of another picture's
    page on the layout around the picture, and of its own picture's copies on
    the picture; a copy of the picture too weak to verify against the others
    still agrees with the anchor on the picture."""
    import cv2

    if len(members) < 4:
        return set()
    edge_to = {**support.get(anchor, {}), **neighbours[anchor]}
    loners = {m for m in members - {anchor}
              if not (neighbours.get(m, {}).keys() | support.get(m, {}).keys())
              & (members - {anchor})}
    others = members - loners - {anchor}
    if not loners or not others:
        return set()

    def in_anchor(member):
        a_xy, b_xy = matches(edge_to[member])
        return np.asarray(a_xy if edge_to[member].a == anchor else b_xy,
                          np.float32).reshape(-1, 2)

    agreed = np.concatenate([in_anchor(other) for other in others])
    if len(agreed) < 3:
        return set()
    hull = cv2.convexHull(agreed)
    apart = set()
    for member in loners:
        xy = in_anchor(member)
        inside = [cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0
                  for x, y in xy]
        if len(xy) and np.mean(inside) < MOSTLY:
            apart.add(member)
    return apart


def _agreement(members: set, neighbours: dict) -> dict:
    """Each member's agreement with the rest of its group: the coverage of its
    edges to the other members, summed. Every copy was made from the original,
    so each agrees with it more widely than with another copy (two copies share
    only what both kept): more bytes per pixel do not tell a copy re-encoded
    at a higher quality from its original, this does."""
    return {m: float(sum(edge.coverage for other, edge in neighbours.get(m, {}).items()
                         if other in members)) for m in members}


def _scale_step(member: int, anchor: int, edge: Edge | None) -> int:
    """How many ``SCALE_STEP`` s larger ``member`` shows the picture than
    ``anchor`` does (0 for the anchor, or where the scale is unknown)."""
    if edge is None or not np.isfinite(edge.scale) or edge.scale <= 0:
        return 0
    scale = edge.scale if edge.a == member else 1 / edge.scale
    return int(round(np.log(scale) / np.log(SCALE_STEP)))


def _best_links(edges) -> dict[int, int]:
    """Which part each image of a copy edge belongs to: the parts are joined by
    each image's best copy edge (widest coverage, then lowest NFA), and two
    parts at least ``ACROSS`` of whose pairs across are copy edges are one.
    Pages of one layout, or photos on one carpet, are copies of each other on
    what they share only, less widely than each is a copy of its own picture,
    and one page's part holds its picture too, which the other page does not
    show."""
    edges = list(edges)
    best: dict[int, tuple] = {}
    for edge in edges:
        if edge.kind != "copy":
            continue
        for node, other in ((edge.a, edge.b), (edge.b, edge.a)):
            strength = (edge.coverage, -edge.log_nfa, -other)
            if node not in best or strength > best[node][0]:
                best[node] = (strength, other)
    links: dict[int, dict[int, None]] = {}
    for node, (_, other) in best.items():
        links.setdefault(node, {})[other] = None
        links.setdefault(other, {})[node] = None
    part = {node: number for number, component in enumerate(_components(links))
            for node in component}
    # copies of one picture pair off by their best edges (an original and its
    # mirror, a crop and a recoloured copy) although every pair of them
    # verified: parts that half the pairs across verified as copies are one
    while True:
        size: dict[int, int] = {}
        for number in part.values():
            size[number] = size.get(number, 0) + 1
        across: dict[tuple, set] = {}
        for edge in edges:
            if edge.kind == "copy" and part[edge.a] != part[edge.b]:
                key = tuple(sorted((part[edge.a], part[edge.b])))
                across.setdefault(key, set()).add((edge.a, edge.b))
        joined: dict[int, dict[int, None]] = {number: {} for number in size}
        for (first, second), pairs in across.items():
            if len(pairs) >= ACROSS * size[first] * size[second]:
                joined[first][second] = joined[second][first] = None
        merged = {number: min(component) for component in _components(joined)
                  for number in component}
        if all(merged[number] == number for number in size):
            return part
        part = {node: merged[number] for node, number in part.items()}


def _components(neighbours: dict) -> list[set]:
    """Connected components of the copy edges."""
    seen, components = set(), []
    for start in neighbours:
        if start in seen:
            continue
        component, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node in component:
                continue
            component.add(node)
            stack.extend(neighbours[node].keys() - component)
        seen |= component
        components.append(component)
    return components


def file_of(name: str, images_root) -> Path | None:
    """The file an image's name stands for, if it is there."""
    path = Path(name)
    if not path.is_absolute():
        path = Path(images_root or os.getcwd()) / path
    return path if path.is_file() else None
