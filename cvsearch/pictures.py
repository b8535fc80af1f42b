"""Pictures of results, drawn with OpenCV: a results grid and a match picture.

Both return BGR uint8 arrays; write them with ``cv2.imwrite``.
"""

from __future__ import annotations

import os

import numpy as np

from cvsearch.io import READ_ERRORS, read_color_image

_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
_GREEN, _RED, _GREY, _BLUE = (60, 170, 60), (50, 50, 220), (150, 150, 150), (200, 120, 0)


def _tile(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``image`` scaled to fit a size x size white square, centred; returns the
    tile, the scale and the (x, y) offset of the image in it."""
    import cv2

    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    tile = np.full((size, size, 3), 255, np.uint8)
    y0 = (size - resized.shape[0]) // 2
    x0 = (size - resized.shape[1]) // 2
    tile[y0:y0 + resized.shape[0], x0:x0 + resized.shape[1]] = resized
    return tile, scale, (x0, y0)


def _caption(lines: list[str], width: int, height: int) -> np.ndarray:
    import cv2

    box = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        text = line
        # Shorten from the left (keep the file name's end) until it fits.
        while text and cv2.getTextSize(text, _FONT, 0.42, 1)[0][0] > width - 8:
            text = "..." + text[4:]
        cv2.putText(box, text, (4, 16 + 17 * i), _FONT, 0.42, (20, 20, 20), 1,
                    cv2.LINE_AA)
    return box


def results_grid(query, results, *, scores=None, inliers=None, names=None,
                 relevant=None, tile: int = 200, columns: int | None = None,
                 title: str = "query") -> np.ndarray:
    """The query on the left, its results in rank order on the right.

    Each result tile is labelled with its rank, score, inliers (if given) and
    name; with ``relevant``, a green (relevant) or red frame says which are right.

    Parameters
    ----------
    query : path or ndarray
    results : sequence of paths or ndarrays, best first
    scores : sequence of float, optional
    inliers : sequence of int, optional
        -1 where not verified.
    names : sequence of str, optional
        Defaults to the paths' file names.
    relevant : sequence of bool, optional
    tile : int
        Side of each square tile, in pixels.
    columns : int, optional
        Result tiles per row; default all in one row up to 5.
    title : str
        Caption of the query tile.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8, BGR
    """
    results = list(results)
    n = len(results)
    columns = columns or max(1, min(n, 5))
    rows = max(1, -(-n // columns))
    caption_h, gap = 58, 8
    cell_h = tile + caption_h + gap
    width = (columns + 1) * (tile + gap) + gap + 12
    canvas = np.full((rows * cell_h + gap, width, 3), 255, np.uint8)

    def place(image, x, y, lines, colour):
        import cv2

        try:
            square, _, _ = _tile(read_color_image(image), tile)
        except READ_ERRORS:  # moved, deleted or damaged since it was indexed
            square = np.full((tile, tile, 3), 200, np.uint8)
            cv2.putText(square, "unreadable", (8, tile // 2), _FONT, 0.5, (60, 60, 60),
                        1, cv2.LINE_AA)
        canvas[y:y + tile, x:x + tile] = square
        if colour is not None:
            cv2.rectangle(canvas, (x - 3, y - 3), (x + tile + 2, y + tile + 2), colour, 4)
        canvas[y + tile + 2:y + tile + 2 + caption_h - 4, x:x + tile] = _caption(
            lines, tile, caption_h - 4)

    place(query, gap, gap, [title], _BLUE)
    for i, image in enumerate(results):
        x = gap + 12 + (i % columns + 1) * (tile + gap)
        y = gap + (i // columns) * cell_h
        name = names[i] if names is not None else (
            os.path.basename(os.fspath(image)) if not isinstance(image, np.ndarray)
            else f"image {i}")
        head = f"#{i + 1}"
        if scores is not None:
            head += f"  score {float(scores[i]):.3f}"
        lines = [head]
        if inliers is not None:
            lines.append(f"inliers {int(inliers[i])}" if inliers[i] >= 0
                         else "not verified")
        lines.append(name)
        colour = None if relevant is None else (_GREEN if relevant[i] else _RED)
        place(image, x, y, lines, colour)
    return canvas


def match_picture(query, result, query_xy, result_xy, *, height: int = 400,
                  max_lines: int = 300) -> np.ndarray:
    """Two images side by side with lines joining corresponding points.

    Parameters
    ----------
    query, result : path or ndarray
    query_xy, result_xy : ndarray of shape (n, 2)
        Matching points ``(x, y)`` in each image's own pixels, e.g. from
        :meth:`cvsearch.Index.matches`.
    height : int
        Both images are scaled to this height.
    max_lines : int
        Draw at most this many (evenly chosen) matches, so the picture stays legible.

    Returns
    -------
    ndarray of shape (height + 30, W, 3), uint8, BGR
    """
    import cv2

    query_xy = np.asarray(query_xy, np.float64).reshape(-1, 2)
    result_xy = np.asarray(result_xy, np.float64).reshape(-1, 2)
    if len(query_xy) != len(result_xy):
        raise ValueError(f"got {len(query_xy)} query points but {len(result_xy)} "
                         "result points; pass matching pairs")
    images = [read_color_image(query), read_color_image(result)]
    scaled, scales = [], []
    for image in images:
        scale = height / image.shape[0]
        scaled.append(cv2.resize(image, (max(1, round(image.shape[1] * scale)), height),
                                 interpolation=cv2.INTER_AREA if scale < 1
                                 else cv2.INTER_LINEAR))
        scales.append(scale)
    gap = 10
    offset = scaled[0].shape[1] + gap
    canvas = np.full((height + 30, offset + scaled[1].shape[1], 3), 255, np.uint8)
    canvas[:height, :scaled[0].shape[1]] = scaled[0]
    canvas[:height, offset:] = scaled[1]
    pick = np.linspace(0, len(query_xy) - 1, min(len(query_xy), max_lines)).astype(int) \
        if len(query_xy) else np.zeros(0, int)
    rng = np.random.default_rng(0)
    for i in pick:
        colour = tuple(int(c) for c in rng.integers(40, 230, 3))
        a = tuple(int(round(v)) for v in query_xy[i] * scales[0])
        b = (int(round(result_xy[i, 0] * scales[1])) + offset,
             int(round(result_xy[i, 1] * scales[1])))
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 3, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 3, colour, -1, cv2.LINE_AA)
    cv2.putText(canvas, f"{len(query_xy)} inlier matches", (6, height + 21), _FONT, 0.55,
                (20, 20, 20), 1, cv2.LINE_AA)
    return canvas


def duplicates_report(index, groups, *, thumbnail: int = 160,
                      match_height: int = 240, title: str = "Duplicates") -> str:
    """A self-contained HTML page of duplicate groups: each group's images as
    thumbnails (the copy to keep marked), and the match picture of its weakest
    edge (the least certain pair: check that one first).

    Parameters
    ----------
    index : Index
        The index the groups were found in (:meth:`cvsearch.Index.duplicates`).
    groups : list of DuplicateGroup
    thumbnail, match_height : int
        Pixels of the thumbnails' longest side, and of the match pictures' height.

    Returns
    -------
    str
        The page; images are embedded (JPEG, base64). An image whose file is not
        found (see ``index.images_root``) is shown as its name only.
    """
    import base64
    import html

    import cv2

    from cvsearch.duplicates import edge_matches, file_of

    def embed(picture) -> str:
        data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
        return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()

    def read(id_):
        path = file_of(index.names[id_], index.images_root)
        if path is None:
            return None
        try:
            return read_color_image(str(path))
        except READ_ERRORS:
            return None

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}"
             "section{border-top:1px solid #ddd;padding:0.8rem 0}"
             "figure{display:inline-block;margin:0 0.6rem 0.6rem 0;vertical-align:top;"
             f"width:{thumbnail}px}}figcaption{{font-size:12px;word-break:break-all}}"
             ".keep{outline:3px solid #2a9d4b}.match{display:block;margin-top:0.4rem}"
             "</style>",
             f"<h1>{html.escape(title)}</h1><p>{len(groups)} groups. The copy to keep "
             "is framed in green (the picture largest, then most pixels of the picture "
             "(a canvas it was turned onto does not count), then in colour, then "
             "agreeing most widely with the rest of its group, "
             "then lossless, then least compressed); "
             "the picture under each group shows its weakest edge.</p>"]
    for number, found in enumerate(groups, 1):
        parts.append(f"<section><h2>Group {number}: {len(found.ids)} images</h2>")
        for id_ in found.ids:
            name = html.escape(index.names[id_])
            image = read(id_)
            picture = "" if image is None else \
                f"<img src='{embed(_tile(image, thumbnail)[0])}' alt=''>"
            keep = " class='keep'" if id_ == found.best else ""
            parts.append(f"<figure{keep}>{picture}<figcaption>{name}"
                         f"{' (keep)' if keep else ''}</figcaption></figure>")
        edge = found.weakest
        a_image, b_image = read(edge.a), read(edge.b)
        caption = (f"weakest edge: {html.escape(index.names[edge.a])} and "
                   f"{html.escape(index.names[edge.b])}: {edge.kind}, {edge.inliers} "
                   f"inliers, log10 NFA {edge.log_nfa:.1f}, coverage "
                   f"{edge.coverage:.2f}")
        if a_image is not None and b_image is not None:
            a_xy, b_xy = edge_matches(index, edge)
            picture = match_picture(a_image, b_image, a_xy, b_xy, height=match_height)
            parts.append(f"<img class='match' src='{embed(picture)}' alt=''>")
        parts.append(f"<p>{caption}</p></section>")
    return "\n".join(parts) + "\n"
