"""The ``cvsearch`` command line: index, add, remove, query, info.

Every error the library raises for bad input becomes one line on stderr and exit
code 1 (2 for a bad option, as argparse does); no traceback. An unexpected error
(a bug) is one line too, saying so; set ``CVSEARCH_DEBUG=1`` to see its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cvsearch.rerank import DEFAULT_MIN_INLIERS

EXIT_ERROR = 1


class CommandError(Exception):
    """A user error the command reports in one line."""


# ------------------------------------------------------------------- progress
class ProgressBar:
    """An ``Index`` progress hook drawn by tqdm (rate and time left), one bar per
    stage. Draws only on a terminal, and never when ``quiet``."""

    LABELS = {"train": "training", "add": "indexing", "duplicates": "searching"}

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.stage = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int):
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=self.LABELS.get(stage, stage), unit="img",
                            file=self.stream, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


# ------------------------------------------------------------------- helpers
def _say(args, text: str):
    if not args.quiet:
        print(text, file=sys.stderr)


def _emit_json(payload):
    print(json.dumps(payload, indent=1))


def _collect_images(paths: list[str]):
    """Files given, and image files found (by content) in folders given.

    Returns
    -------
    images : list of str
    others : list of SkippedImage
        Files found in folders that are not images, and paths that do not exist
        (skipped, so that one bad path does not cost the batch its good images).
    """
    from cvsearch import SkippedImage
    from cvsearch.io import find_images

    images, others = [], []
    for path in paths:
        if os.path.isdir(path):
            links = []
            found, not_images = find_images(path, links=links)
            images += found
            others += [SkippedImage(p, "not an image file (by its first bytes), or "
                                    "not a readable regular file") for p in not_images]
            others += [SkippedImage(p, "a symbolic link: folders are indexed without "
                                    "following links (pass the link itself to index "
                                    "what it points to)") for p in links]
        elif not os.path.lexists(path):
            others.append(SkippedImage(path, "no such file or folder"))
        else:
            images.append(path)  # the library says why, if it cannot read it
    return images, others


def _report_skipped(args, skipped):
    for item in skipped:
        _say(args, f"skipped {item.name}: {item.reason}")


def _skipped_json(skipped) -> list[dict]:
    return [{"name": s.name, "reason": s.reason} for s in skipped]


def _check_index_folder(directory):
    if not os.path.isdir(directory):
        raise CommandError(f"{directory}: no such index folder; create one with "
                           "'cvsearch index IMAGE_DIR -o INDEX_DIR'")


def _load(directory):
    """The Index or GlobalIndex in ``directory``, as its manifest says."""
    from cvsearch.global_index import load_index

    _check_index_folder(directory)
    return load_index(directory)


def _index_class(directory):
    from cvsearch import GlobalIndex, Index, storage

    _check_index_folder(directory)
    _, manifest = storage.read_manifest(directory, None)
    return GlobalIndex if manifest["format"] == "cvsearch-global-index" else Index


def _report(args, summary: dict, text: str):
    """Skipped files on stderr, then the summary as JSON or as one line."""
    _report_skipped(args, summary.get("skipped", []))
    if args.json:
        _emit_json({**summary, "skipped": _skipped_json(summary.get("skipped", []))}
                   if "skipped" in summary else summary)
    else:
        print(text)


def _disk_bytes(directory) -> int:
    from cvsearch import storage

    path, manifest = storage.read_manifest(directory, None)
    files = [path] + [Path(directory) / name
                      for name in set(storage.file_names(manifest))]
    return sum(p.stat().st_size for p in files if p.exists())


# ------------------------------------------------------------------ commands
def cmd_index(args):
    from cvsearch import FeatureExtractor, Index, storage

    if os.path.exists(os.path.join(args.output, storage.MANIFEST)) and not args.overwrite:
        raise CommandError(f"{args.output} already holds an index; pass --overwrite "
                           "to replace it, or 'cvsearch add' to grow it")
    if not os.path.isdir(args.image_dir):
        raise CommandError(f"{args.image_dir}: no such folder of images")
    images, others = _collect_images([args.image_dir])
    if not images:
        raise CommandError(f"{args.image_dir}: found no image files in it")
    if args.method == "cnn":
        return _index_global(args, images, others)
    extractor = FeatureExtractor(args.features, max_keypoints=args.max_keypoints,
                                 max_side=args.max_side, dense_step=args.dense_step,
                                 budget_grid=args.budget_grid,
                                 min_keypoints=args.min_keypoints,
                                 max_pixels=args.max_pixels,
                                 max_file_bytes=args.max_file_mb * 2**20)
    started = time.perf_counter()
    try:
        index = Index.build(images, extractor, args.words, random_state=args.seed,
                            n_jobs=args.jobs, progress=ProgressBar(quiet=args.quiet),
                            train_images=args.train_images, power=args.power,
                            tf_power=args.tf_power, pyramid_levels=args.pyramid,
                            scheduler=args.scheduler)
    except ValueError as error:
        if "training descriptors" in str(error):
            raise CommandError(f"{error}; on the command line, lower --words (a "
                               "tenth of the descriptors is a good start)") from None
        raise
    _save_built(args, index, others, started, "")


def _save_built(args, index, others, started: float, how: str):
    """Save a new index of either kind and report what it holds and skipped."""
    # relative names are relative to here: kept with the index, so a service
    # started elsewhere still finds the files
    index.images_root = os.getcwd()
    index.save(args.output)
    skipped = others + index.skipped_
    seconds = round(time.perf_counter() - started, 1)
    _report(args, {"index": args.output, "images": len(index), "skipped": skipped,
                   "seconds": seconds},
            f"indexed {len(index)} images into {args.output}{how} ({len(skipped)} "
            f"skipped, {seconds} s)")


def _index_global(args, images, others):
    """cmd_index of a GlobalIndex: CNN descriptors, optionally projected."""
    from cvsearch import GlobalIndex
    from cvsearch.projection import PCAProjection, TripletProjection

    labels = None
    if args.projection == "pca":
        projection = PCAProjection(args.dim, whiten=args.whiten)
    elif args.projection == "triplet":
        projection = TripletProjection(args.dim, random_state=args.seed)
        # a catalog's layout: one folder per class, IMAGE_DIR/<class>/...
        labels = [os.path.relpath(os.path.dirname(p), args.image_dir) for p in images]
        if len(set(labels)) < 2:
            raise CommandError(f"--projection triplet learns from classes, one "
                               f"sub-folder of {args.image_dir} each; found "
                               f"{len(set(labels))}")
    else:
        projection = None
    started = time.perf_counter()
    try:
        describer = None
        if args.flip_average:
            from cvsearch.cnn import CNNDescriptor

            describer = CNNDescriptor(flip_average=True)
        index = GlobalIndex.build(images, describer, labels=labels,
                                  projection=projection, search=args.search)
    except ImportError as error:
        raise CommandError(f"{error}; --method cnn needs pip install "
                           "'cvsearch[cnn]' (and --search hnsw/ivf 'cvsearch[faiss]')"
                           ) from None
    _save_built(args, index, others, started, " with the CNN descriptor")


def cmd_add(args):
    kind = _index_class(args.index)
    images, others = _collect_images(args.paths)
    if not images:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in others[:3])
        raise CommandError(f"no image files among the paths given ({reasons})")
    # One writer at a time: a concurrent add waits, and both batches land. The
    # save is atomic: the old index stays until the new one is complete.
    with kind.updating(args.index) as index:
        before = len(index)
        # relative paths given here are named as the index names the others:
        # relative to its images_root
        names = [_name_under(index.images_root, path) for path in images]
        if kind.__name__ == "GlobalIndex":
            skipped = others + index.add(images, names=names)
        else:
            skipped = others + index.add(images, names, n_jobs=args.jobs,
                                         progress=ProgressBar(quiet=args.quiet),
                                         scheduler=args.scheduler)
    added = len(index) - before
    _report(args, {"index": args.index, "added": added, "images": len(index),
                   "skipped": skipped},
            f"added {added} images; {args.index} now holds {len(index)} "
            f"({len(skipped)} skipped)")


def _name_under(root: str | None, path: str) -> str:
    """The name of ``path`` in an index whose relative names are relative to
    ``root``: the path as given where it is absolute, or the index has no root or
    is rooted here; else the path relative to ``root``."""
    if os.path.isabs(path) or not root or os.path.abspath(root) == os.getcwd():
        return path
    return os.path.relpath(os.path.abspath(path), root)


def cmd_remove(args):
    with _index_class(args.index).updating(args.index) as index:
        before = len(index)
        index.remove(args.names)  # unknown names raise before anything changes
        removed = before - len(index)  # a name given twice is one image
    _report(args, {"index": args.index, "removed": removed, "images": len(index)},
            f"removed {removed} image{'s' if removed != 1 else ''}; {args.index} now "
            f"holds {len(index)}")


def cmd_query(args):
    import cv2

    from cvsearch.io import decode_image, fetch_url, is_url

    index = _load(args.index)
    # a URL is fetched (bounded in bytes and time) and decoded like a file
    args.query = decode_image(fetch_url(args.image), args.image, grayscale=False) \
        if is_url(args.image) else args.image
    if hasattr(index, "projection"):  # a GlobalIndex
        return _query_global(args, index, cv2)
    if args.verify_with:
        raise CommandError(f"--verify-with verifies a global index's short-list; "
                           f"{args.index} is a bag-of-words index, which verifies "
                           "with its own features (--rerank)")
    features = index.extractor.extract(args.query, finer=True)  # a thumbnail's too
    scores, ids, evidence = index.query(features, k=args.k, rerank=args.rerank,
                                        min_inliers=args.min_inliers,
                                        verification=args.verification,
                                        multiple_assignment=args.multiple_assignment,
                                        expand=args.expand, mirror=args.mirror,
                                        return_evidence=True)
    mirrored = {int(i) for i, m in zip(ids, evidence.mirrored) if m}
    finer = {int(i) for i, f in zip(ids, evidence.finer) if f}

    def match(id_):
        return index.matches(features, id_, verification=args.verification,
                             multiple_assignment=args.multiple_assignment,
                             mirrored=id_ in mirrored, finer=id_ in finer)

    _answer_query(args, index, scores, ids, evidence.inliers, match, cv2, evidence)


def _query_global(args, index, cv2):
    """cmd_query of a GlobalIndex: its cosine ranking, or with --verify-with its
    --rerank short-list verified by a bag-of-words index of the same images."""
    if args.expand:
        raise CommandError("--expand is for bag-of-words indexes (it averages "
                           "bag-of-words vectors); a global index has none")
    local = None
    if args.verify_with:
        local = _load(args.verify_with)
        if hasattr(local, "projection"):
            raise CommandError(f"--verify-with {args.verify_with}: a global index "
                               "has no local features; name a bag-of-words index "
                               "('cvsearch index' without --method cnn)")
    elif args.rerank or args.matches:
        raise CommandError("a global index verifies (--rerank, --matches) with a "
                           "bag-of-words index of the same images: add --verify-with "
                           "LOCAL_INDEX")
    if local is None:
        scores, ids = index.query(args.query, k=args.k)
        inliers = np.full(len(ids), -1)
    else:
        from cvsearch.hybrid import verified_query

        scores, ids, inliers = verified_query(
            index, local, args.query, k=args.k, rerank=args.rerank,
            min_inliers=args.min_inliers, verification=args.verification,
            multiple_assignment=args.multiple_assignment)

    def match(id_):
        name = index.names[id_]
        try:
            local_id = local.id_of(name)
        except KeyError:
            raise CommandError(f"--matches: {name} is not in {args.verify_with}") \
                from None
        return local.matches(args.query, local_id, verification=args.verification,
                             multiple_assignment=args.multiple_assignment)

    _answer_query(args, index, scores, ids, inliers, match, cv2)


def _answer_query(args, index, scores, ids, inliers, match, cv2, evidence=None):
    """Print the results of cmd_query and draw its pictures; ``match(id)`` gives
    the inlier points ``(query_xy, db_xy)`` of the query and result ``id``;
    ``evidence`` (bag-of-words indexes) the decision on each result."""
    rows = []
    for r, (s, i, n) in enumerate(zip(scores, ids, inliers)):
        row = {"rank": r + 1, "id": int(i), "name": index.names[i],
               "score": round(float(s), 6), "inliers": int(n) if n >= 0 else None}
        if evidence is not None:  # an unfinished count is no measurement
            row.update(evidence.record(r))
            row["decision"] = row.pop("kind")
        rows.append(row)
    if args.show:
        from cvsearch.pictures import results_grid

        picture = results_grid(args.query, [index.names[i] for i in ids], scores=scores,
                               inliers=inliers if args.rerank else None,
                               columns=min(len(ids), 5) or 1)
        _write_picture(args.show, picture, cv2)
    if args.matches:
        from cvsearch.pictures import match_picture

        if args.match_rank > len(ids):
            raise CommandError(f"--match-rank {args.match_rank}: there are only "
                               f"{len(ids)} results")
        chosen = int(ids[args.match_rank - 1])
        query_xy, db_xy = match(chosen)
        _write_picture(args.matches, match_picture(args.query, index.names[chosen],
                                                   query_xy, db_xy), cv2)
    _print_results(args, rows)


def _print_results(args, rows):
    if args.json:
        _emit_json({"query": args.image, "k": args.k, "rerank": args.rerank,
                    "results": rows})
        return
    name_width = max([4] + [len(r["name"]) for r in rows])
    # a decision column where something was verified (all "-" otherwise)
    decided = bool(args.rerank) and any("decision" in r for r in rows)
    print(f"{'rank':>4}  {'score':>7}  {'inliers':>7}  " +
          (f"{'decision':<10}  " if decided else "") + f"{'name':<{name_width}}")
    for r in rows:
        inl = "-" if r["inliers"] is None else str(r["inliers"])
        decision = ""
        if decided:
            decision = {"unverified": "-", "none": "no"}.get(r["decision"],
                                                             r["decision"])
            # which view of the query matched: its mirror image, its finer one
            views = ", ".join(view for view, used in (
                ("mirror", r["mirrored"]), ("at 2x", r.get("finer"))) if used)
            decision = f"{decision + (f' ({views})' if views else ''):<10}  "
        print(f"{r['rank']:>4}  {r['score']:>7.4f}  {inl:>7}  {decision}{r['name']}")


def cmd_duplicates(args):
    from cvsearch import FeatureExtractor, Index, storage

    started = time.perf_counter()
    target = args.target
    if os.path.isfile(os.path.join(target, storage.MANIFEST)):
        index = _load(target)
        if hasattr(index, "projection"):
            raise CommandError(f"{target} is a global (CNN) index: copies are "
                               "decided by verifying local features; index the "
                               "images with 'cvsearch index' (bag of words)")
        skipped = []
    elif os.path.isdir(target):  # a folder of images: indexed here, not saved
        images, skipped = _collect_images([target])
        if len(images) < 2:
            raise CommandError(f"{target}: found {len(images)} image files; "
                               "duplicates need two or more")
        words = min(args.words, max(10, len(images) * 50))
        index = Index.build(images, FeatureExtractor(args.features), words,
                            random_state=0, n_jobs=args.jobs,
                            progress=ProgressBar(quiet=args.quiet))
        index.images_root = os.getcwd()
        skipped = skipped + index.skipped_
    else:
        raise CommandError(f"{target}: no such index folder or folder of images")
    groups = index.duplicates(kind=args.kind, rerank=args.rerank,
                              reread=not args.stored_words, n_jobs=args.jobs,
                              checkpoint=args.resume,
                              progress=ProgressBar(quiet=args.quiet))
    seconds = round(time.perf_counter() - started, 1)
    names = index.names
    answer = {"target": target, "images": len(index), "kind": args.kind,
              "seconds": seconds, "skipped": _skipped_json(skipped), "groups": [
                  {"keep": names[g.best], "images": [names[i] for i in g.ids],
                   "ids": list(g.ids), "anchor": names[g.anchor],
                   "weakest": {"a": names[g.weakest.a], "b": names[g.weakest.b],
                               "decision": g.weakest.kind,
                               "inliers": g.weakest.inliers,
                               "log_nfa": round(g.weakest.log_nfa, 2),
                               "coverage": round(g.weakest.coverage, 3)}}
                  for g in groups]}
    _report_skipped(args, skipped)
    if args.report:
        from cvsearch.pictures import duplicates_report

        page = duplicates_report(index, groups, title=f"Duplicates in {target}")
        try:
            Path(args.report).write_text(page, encoding="utf-8",
                                         errors="backslashreplace")
        except OSError as error:
            raise CommandError(f"{args.report}: cannot write the report "
                               f"({error.strerror})") from None
    if args.json is not None:
        text = json.dumps(answer, indent=1, ensure_ascii=False) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8", errors="backslashreplace")
    if args.json != "-":
        copies = sum(len(g.ids) for g in groups)
        what = "copies" if args.kind == "copy" else "images of one object"
        print(f"{len(groups)} groups of {what} ({copies} of {len(index)} images) in "
              f"{seconds} s")
        for number, g in enumerate(groups, 1):
            print(f"group {number}: keep {names[g.best]}")
            for id_ in g.ids:
                if id_ != g.best:
                    print(f"    {names[id_]}")


def cmd_serve(args):
    _check_index_folder(args.index)
    try:
        from cvsearch.service import Settings, serve
    except ImportError as error:
        raise CommandError(f"cvsearch serve needs FastAPI and uvicorn ({error}); "
                           "pip install 'cvsearch[server]'") from None
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise CommandError(f"cvsearch serve needs {error.name}; pip install "
                           "'cvsearch[server]'") from None
    token = args.token or os.environ.get("CVSEARCH_TOKEN") or None
    settings = Settings(index_dir=Path(args.index), token=token,
                        max_upload_bytes=args.max_upload_mb * 2**20,
                        images_root=None if args.images_root is None
                        else Path(args.images_root).resolve(),
                        allowed_hosts=(*Settings.allowed_hosts, *args.allow_host),
                        verify_with=Path(args.verify_with) if args.verify_with
                        else None)
    mode = "read-write (token set)" if token else "read-only: no --token"

    def announce(library):
        if library.missing_files:
            print(f"cvsearch serve: warning: {library.missing_files} of the first "
                  f"images of {args.index} are not found under {library.images_root}: "
                  "names are stored as given when indexing (relative to the folder "
                  "indexed from); run serve from that folder or pass --images-root",
                  file=sys.stderr, flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_host:
            print(f"cvsearch serve: note: requests are answered only when addressed "
                  f"to {args.host} or localhost; pass --allow-host NAME for each name "
                  "clients use (the machine's name or address)", file=sys.stderr,
                  flush=True)
        if not args.quiet:
            print(f"serving {args.index} on http://{args.host}:{args.port}/ ({mode}); "
                  "Ctrl-C stops", file=sys.stderr, flush=True)

    serve(settings, host=args.host, port=args.port, workers=args.workers,
          log_level="warning" if args.quiet else "info", ready=announce)


def _write_picture(path, picture, cv2):
    ok = False
    try:
        ok = cv2.imwrite(str(path), picture)
    except cv2.error:
        pass
    if not ok:
        raise CommandError(f"{path}: cannot write the picture; use a .png or .jpg name "
                           "in a folder that exists")


def cmd_info(args):
    from cvsearch import storage

    index = _load(args.index)
    _, manifest = storage.read_manifest(args.index, None)
    if hasattr(index, "projection"):
        return _info_global(args, index, manifest)
    info = {"index": args.index, "format_version": manifest.get("format_version"),
            "cvsearch_version": manifest.get("cvsearch_version"),
            "images": len(index), "keypoints": manifest.get("n_keypoints"),
            "words": index.n_words, "features": index.extractor.get_params(),
            "vocabulary": index.vocabulary.get_params(),
            "weighting": index.weighting,
            "disk_bytes": _disk_bytes(args.index), "memory_bytes": index.nbytes}
    if args.json:
        _emit_json(info)
        return
    f = info["features"]
    print(f"index:        {args.index} (format {info['format_version']}, written by "
          f"cvsearch {info['cvsearch_version']})")
    print(f"images:       {info['images']} ({info['keypoints']} keypoints)")
    print(f"features:     {f['method']}, max_side {f['max_side']}, max_keypoints "
          f"{f['max_keypoints']}" + (f", dense step {f['dense_step']}"
                                     if f.get("dense_step") else "")
          + (f", budget shared over {f['budget_grid']} x {f['budget_grid']} cells"
             if f.get("budget_grid", 1) > 1 else "")
          + (f", detected again at lower contrast under {f['min_keypoints']} keypoints"
             if f.get("min_keypoints") else ""))
    vocabulary = info["vocabulary"]
    print(f"vocabulary:   {info['words']} words, n_probe {vocabulary['n_probe']}, "
          f"probe_ratio {vocabulary['probe_ratio']}, "
          f"random_state {vocabulary['random_state']}")
    print(f"weighting:    tf-idf, tf_power {index.tf_power:g}, power "
          f"{index.power:g}, pyramid levels {index.pyramid_levels}")
    print(f"size on disk: {info['disk_bytes'] / 2**20:.2f} MiB; in memory "
          f"{info['memory_bytes'] / 2**20:.2f} MiB")


def _describer_text(entry) -> str:
    """A manifest's describer entry, for a person."""
    if isinstance(entry, dict):
        options = ", ".join(f"{k}={v!r}" for k, v in entry.items() if k != "builtin")
        return f"CNNDescriptor({entry.get('builtin')}, {options})"
    return entry or "CNNDescriptor(efficientnet-lite0)"


def _info_global(args, index, manifest):
    projection = index.projection
    info = {"index": args.index, "kind": "global",
            "format_version": manifest.get("format_version"),
            "cvsearch_version": manifest.get("cvsearch_version"),
            "images": len(index), "dim": index.dim,
            "describer": _describer_text(manifest.get("describer")),
            "projection": None if projection is None else
            {"kind": projection.kind, **projection.get_params()},
            "search": index._search_options(), "disk_bytes": _disk_bytes(args.index)}
    if args.json:
        _emit_json(info)
        return
    print(f"index:        {args.index} (global descriptors, format "
          f"{info['format_version']}, written by cvsearch {info['cvsearch_version']})")
    print(f"images:       {info['images']}, {info['dim']} values each")
    print(f"describer:    {info['describer']}")
    print(f"projection:   {projection!r}" if projection is not None else
          "projection:   none")
    print(f"search:       {index.search}")
    print(f"size on disk: {info['disk_bytes'] / 2**20:.2f} MiB")


# -------------------------------------------------------------------- parser
def _positive_int(text, minimum: int = 1):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _count(text):
    """An integer >= 0."""
    return _positive_int(text, minimum=0)


def _jobs(text):
    from cvsearch._validation import check_n_jobs

    try:
        return check_n_jobs(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError("must be >= 1, or -1 for all cores") from None


def build_parser() -> argparse.ArgumentParser:
    from cvsearch import __version__
    from cvsearch.io import MAX_FILE_BYTES, MAX_PIXELS
    from cvsearch.weighting import DEFAULT_TF_POWER

    parser = argparse.ArgumentParser(
        prog="cvsearch", description="Reverse image search with classical computer "
        "vision: index a folder of images, then find the images most like a photo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cvsearch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub(name, help_text, json_flag=True):
        p = commands.add_parser(name, help=help_text, description=help_text,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if json_flag:
            p.add_argument("--json", action="store_true",
                           help="print the result as JSON on stdout")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bar and no list of skipped files")
        return p

    p = sub("index", "Index every image under a folder (found by content, "
                     "recursively) into a new index folder.")
    p.add_argument("image_dir", help="folder of images (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="index folder to write")
    p.add_argument("--method", choices=["bow", "cnn"], default="bow",
                   help="bow: local features in a bag of visual words (instances: "
                        "this object); cnn: one CNN descriptor per image (categories: "
                        "this kind of thing; pip install 'cvsearch[cnn]')")
    p.add_argument("--search", choices=["exact", "hnsw", "ivf"], default="exact",
                   help="with --method cnn: exact cosine search, or approximate with "
                        "faiss for large collections (pip install 'cvsearch[faiss]')")
    p.add_argument("--projection", choices=["none", "pca", "triplet"], default="none",
                   help="with --method cnn: reduce the descriptors to --dim values by "
                        "PCA, or by a triplet-loss projection learned from the classes "
                        "of a catalog laid out one sub-folder per class")
    p.add_argument("--dim", type=_positive_int, default=128,
                   help="size of the projected descriptors")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA projection")
    p.add_argument("--flip-average", action="store_true",
                   help="with --method cnn: average each image's descriptor with its "
                        "mirror image's (twice the time; kept for queries)")
    p.add_argument("--features", choices=["sift", "rootsift", "orb"], default="rootsift",
                   help="local features")
    p.add_argument("--words", type=_positive_int, default=20_000,
                   help="vocabulary size (visual words); at most the number of "
                        "training descriptors")
    p.add_argument("--max-side", type=_positive_int, default=640,
                   help="larger images are downscaled to this longer side first")
    p.add_argument("--max-keypoints", type=_positive_int, default=1500,
                   help="keypoints kept per image")
    p.add_argument("--budget-grid", type=_positive_int, default=None,
                   help="share --max-keypoints among this many x this many cells, "
                        "so busy parts (a page's text) cannot take them all "
                        "(sift, rootsift; default 4; 1: the strongest anywhere)")
    p.add_argument("--min-keypoints", type=_count, default=None,
                   help="detect an image that gives fewer keypoints again at lower "
                        "contrast thresholds, so small, cropped or blurred pictures "
                        "keep enough to verify (sift, rootsift; default 100; 0: "
                        "never)")
    p.add_argument("--dense-step", type=_positive_int, default=None,
                   help="dense SIFT on a grid with this step (pixels) instead of "
                        "detected keypoints: for category search")
    p.add_argument("--power", type=float, default=1.0,
                   help="power-law normalisation exponent of the weighted vectors "
                        "in (0, 1]; 0.5 for category search")
    p.add_argument("--tf-power", type=float, default=DEFAULT_TF_POWER,
                   help="exponent in (0, 1] of each word's count in an image, "
                        "before idf: small values damp repeated textures "
                        "(instance search)")
    p.add_argument("--pyramid", type=int, default=0,
                   help="spatial pyramid levels (0: none; 2 for category search)")
    p.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS,
                   help="refuse image files whose header declares more pixels "
                        "(decompression bombs); kept with the index for add and query")
    p.add_argument("--max-file-mb", type=_positive_int, default=MAX_FILE_BYTES // 2**20,
                   help="refuse image files larger than this many MiB; kept with the "
                        "index")
    p.add_argument("--train-images", type=_positive_int, default=1000,
                   help="random images the vocabulary is trained on")
    p.add_argument("-j", "--jobs", type=_jobs, default=1,
                   help="worker processes for feature extraction (-1: all cores)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="extract on a Dask cluster instead, e.g. tcp://host:8786 "
                        "(pip install 'cvsearch[dask]'; image paths must be valid on "
                        "the workers)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the vocabulary")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an index already in the output folder")
    p.set_defaults(run=cmd_index)

    p = sub("add", "Add images (files, or folders searched recursively) to an index, "
                   "without retraining. The saved index is replaced only once the new "
                   "one is complete.")
    p.add_argument("index", help="index folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("-j", "--jobs", type=_jobs, default=1,
                   help="worker processes for feature extraction (-1: all cores)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="extract on a Dask cluster instead, e.g. tcp://host:8786 "
                        "(pip install 'cvsearch[dask]'; image paths must be valid on "
                        "the workers)")
    p.set_defaults(run=cmd_add)

    p = sub("remove", "Remove images from an index by name (as 'query' prints them).")
    p.add_argument("index", help="index folder")
    p.add_argument("names", nargs="+", metavar="NAME", help="names of images to remove")
    p.set_defaults(run=cmd_remove)

    p = sub("query", "Find the images of an index most similar to an image.")
    p.add_argument("index", help="index folder")
    p.add_argument("image", help="query image: a file, or an http(s) URL (fetched, "
                   "at most 64 MiB within 30 s)")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results")
    p.add_argument("--rerank", type=int, default=0,
                   help="verify the top N results geometrically and move the "
                        "verified ones up (0: off)")
    p.add_argument("--min-inliers", type=_positive_int, default=DEFAULT_MIN_INLIERS,
                   help="inliers needed to count as verified (a result decided "
                        "the same object counts with fewer)")
    p.add_argument("--verification", choices=("shapes", "ransac"), default="shapes",
                   help="shapes: transforms proposed by single keypoints' sizes and "
                        "orientations (default); ransac: a homography by RANSAC on "
                        "positions alone")
    p.add_argument("--multiple-assignment", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="verification also matches each query keypoint through its "
                        "next nearest word when nearly as near (default: on)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=False,
                   help="also search for the image mirrored left-right (SIFT and "
                        "RootSIFT: no second extraction)")
    p.add_argument("--verify-with", metavar="LOCAL_INDEX", default=None,
                   help="for a global (--method cnn) index: verify its --rerank best "
                        "results with this bag-of-words index of the same images")
    p.add_argument("--expand", type=int, default=0, metavar="N",
                   help="with --rerank: search again with the query averaged with its "
                        "N best verified results, to find more views of the object "
                        "(0: off)")
    p.add_argument("--show", metavar="PNG", default=None,
                   help="write a picture of the query and its results")
    p.add_argument("--matches", metavar="PNG", default=None,
                   help="write a picture of the inlier matches with one "
                        "result (see --match-rank)")
    p.add_argument("--match-rank", type=_positive_int, default=1,
                   help="rank of the result --matches draws")
    p.set_defaults(run=cmd_query)

    p = sub("serve", "Serve an index over HTTP: a search page at /, a JSON API "
                     "(documented at /docs). Needs pip install 'cvsearch[server]'.")
    p.add_argument("index", help="index folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name clients may address the service by, besides "
                        "--host and localhost (repeatable; '*' allows any): other "
                        "Host headers get 400, so no web page reaches the service by "
                        "DNS rebinding")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server processes (each maps the index; writes are "
                        "serialised by the index folder's lock)")
    p.add_argument("--token", default=None,
                   help="token that allows adding and removing images (default: "
                        "$CVSEARCH_TOKEN; none: read-only)")
    p.add_argument("--max-upload-mb", type=_positive_int, default=20,
                   help="largest request (an uploaded image) in MiB")
    p.add_argument("--images-root", default=None,
                   help="folder that relative image names of the index are under "
                        "(default: the folder it was indexed from, kept with the "
                        "index; else the current folder)")
    p.add_argument("--verify-with", metavar="LOCAL_INDEX", default=None,
                   help="for a global (--method cnn) index: a bag-of-words index of "
                        "the same images that verifies the rerank short-list (and "
                        "gets the images added and removed through the service)")
    p.set_defaults(run=cmd_serve)

    p = sub("duplicates", "Find the groups of copies (crops, rescaled, rotated, "
                          "mirrored, recompressed, edited) in an index or a folder of "
                          "images, and the copy to keep in each.", json_flag=False)
    p.add_argument("target", metavar="INDEX_OR_FOLDER",
                   help="a bag-of-words index folder, or a folder of images (indexed "
                        "in memory first)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the groups as JSON to FILE (no FILE: to stdout)")
    p.add_argument("--report", metavar="HTML", default=None,
                   help="write a page showing each group and its weakest match")
    p.add_argument("--kind", choices=("copy", "object"), default="copy",
                   help="group copies of one picture, or pictures of one object")
    p.add_argument("--rerank", type=_positive_int, default=50,
                   help="results verified per image")
    p.add_argument("--stored-words", action="store_true",
                   help="search each image with the words the index holds, without "
                        "reading its file again: faster, finds fewer copies")
    p.add_argument("-j", "--jobs", type=_jobs, default=1,
                   help="images searched at once (-1: all cores)")
    p.add_argument("--resume", metavar="FILE", default=None,
                   help="keep the work done in FILE and resume from it if the run "
                        "stops")
    p.add_argument("--features", choices=["sift", "rootsift"], default="rootsift",
                   help="for a folder: local features")
    p.add_argument("--words", type=_positive_int, default=20_000,
                   help="for a folder: vocabulary size (at most 50 per image)")
    p.set_defaults(run=cmd_duplicates)

    p = sub("info", "Describe an index: images, words, features, parameters, size.")
    p.add_argument("index", help="index folder")
    p.set_defaults(run=cmd_info)
    return parser


def _tolerant_output():
    """File names need not be valid Unicode (undecodable bytes are held as lone
    surrogates): print them escaped rather than fail on them."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _quiet_decoders():
    """OpenCV logs decoder warnings ("PNG input buffer is incomplete") on stderr,
    and Pillow warns of damaged headers ("Corrupt EXIF data"); the command line
    reports each bad file in its own words instead."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def main(argv=None) -> int:
    _tolerant_output()
    _quiet_decoders()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print(f"cvsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    # scikit-learn's NotFittedError is a ValueError: caught without importing
    # scikit-learn, which would add a second to every command's start
    except (CommandError, FileNotFoundError, NotADirectoryError, ValueError, TypeError,
            OSError) as error:
        message = str(error)
        if isinstance(error, OSError) and error.filename and error.strerror:
            message = f"{error.filename}: {error.strerror}"
        print(f"cvsearch {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # a bug: still one line, unless debugging
        if os.environ.get("CVSEARCH_DEBUG"):
            raise
        print(f"cvsearch {args.command}: internal error: {type(error).__name__}: "
              f"{error}; please report it (CVSEARCH_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
