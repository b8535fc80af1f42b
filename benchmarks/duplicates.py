"""Copies within a collection: ``Index.duplicates`` on 10,000 images with 500
planted copy groups, and its cost per image from 1,000 to 10,000 images.

The collection is Caltech-101 with its background class (less Faces_easy and
the *_head classes, which are crops of other classes' photos) plus, for 500 of
its photos, one to three copies each, made by attacks drawn from
``benchmarks/_attacks.py``. A planted group is an original and its copies,
with the files that show its original's picture among Caltech-101's own copies
(labelled by eye in ``caltech101_own_copies.json``); each labelled set without
an original is a group too. A found group counts as right when its members are
exactly one of these. Smaller collections are the same index with images
removed (their planted groups kept whole, in proportion), so every size is
searched with one vocabulary.

``--clean`` reads the acceptance item literally ("a group counts when its
members are exactly a planted group"): Caltech-101's labelled copies of itself
are left out (the first file of each labelled set stays), and groups get up to
four copies to reach 10,000 images. Its results go to ``duplicates_clean.md``
and ``.json``.

Usage::

    python benchmarks/duplicates.py --data ../shared/data
    python benchmarks/duplicates.py --data ../shared/data --clean --work /tmp/dup-clean
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attacks import ATTACKS, make_copy  # noqa: E402
from _common import run_metadata, write_results  # noqa: E402

from cvsearch import FeatureExtractor, Index  # noqa: E402
from cvsearch.datasets import caltech101  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Caltech-101's own copies, labelled by eye (how: its "about").
OWN_COPIES = Path(__file__).resolve().parent / "caltech101_own_copies.json"
#: Crops of other classes' photos: true copies nobody planted.
LEFT_OUT = ("Faces_easy",)


def collection(args):
    """``(paths, planted)``: every image, and the planted groups (lists of
    positions in ``paths``, the original first)."""
    caltech = caltech101(args.data, download=False, include_background=True)
    folders = [Path(p).parent.name for p in caltech.paths]
    paths = [str(p) for p, folder in zip(caltech.paths, folders)
             if folder not in LEFT_OUT and not folder.endswith("_head")]
    most = 3  # copies per group
    if args.clean:
        paths = [p for p in paths if relative(p) not in own_copies_left_out()]
        most = 4  # for 10,000 images without the copies left out
    rng = np.random.default_rng(args.seed)
    wanted = args.images - len(paths)  # copies needed to reach the size asked
    originals = rng.choice(len(paths), args.groups, replace=False)
    sizes = np.full(args.groups, 1)
    extra = max(0, wanted - args.groups)
    if extra > (most - 1) * args.groups:
        raise SystemExit(f"{args.images} images need more than {most} copies per group")
    for _ in range(extra):  # spread the remaining copies, at most `most` per group
        open_ = np.flatnonzero(sizes < most)
        sizes[rng.choice(open_)] += 1
    folder = args.work / f"planted-{args.seed}-{args.groups}"
    folder.mkdir(parents=True, exist_ok=True)
    claim_planted_folder(folder, [paths[i] for i in originals])
    names = list(ATTACKS)
    planted = []
    for number, (original, size) in enumerate(zip(originals, sizes)):
        group = [int(original)]
        for attack in rng.choice(names, size, replace=False):
            stem = folder / f"{number:04d}_{attack}"
            existing = sorted(folder.glob(f"{stem.name}.*"))
            copy_rng = np.random.default_rng([args.seed, number, names.index(attack)])
            path = str(existing[0]) if existing else make_copy(
                paths[original], attack, stem, copy_rng)
            paths.append(path)
            group.append(len(paths) - 1)
        planted.append(group)
    return paths, planted


def score(groups, planted_names, names, own_copies) -> dict:
    """Found groups against the planted groups and Caltech-101's own copies.

    The truth: each planted group with the files that show the same picture as
    its original (``own_copies``, sets of Caltech-101 files labelled by eye, see
    OWN_COPIES), and each such set that holds no original. A found group is
    right when its members are exactly one of these. Precision is over all found
    groups; recall over the planted ones. ``exact`` and ``strict_*`` compare with
    the planted groups alone, as if Caltech-101 held no copies of itself."""
    found = [frozenset(names[i] for i in g.ids) for g in groups]
    planted_truth, own_truth = labelled_truth(planted_names, names, own_copies)
    truth = set(planted_truth) | own_truth
    planted_sets = {frozenset(g) for g in planted_names}
    planted_members = set().union(*planted_sets) if planted_sets else set()
    right = [g in truth for g in found]
    different = [not ok and not (g & planted_members) for g, ok in zip(found, right)]
    exact = [g in planted_sets for g in found]
    return {"found": len(found), "planted": len(planted_names),
            "right": int(sum(right)),
            "precision": round(sum(right) / max(len(found), 1), 4),
            "recall": round(sum(t in set(found) for t in planted_truth)
                            / max(len(planted_truth), 1), 4),
            "own_copy_groups": len(own_truth),
            "own_copy_groups_found": len(own_truth & set(found)),
            "groups_of_different_pictures": int(sum(different)),
            "exact": int(sum(exact)),
            "strict_precision": round(sum(exact) / max(len(found), 1), 4),
            "strict_recall": round(len(planted_sets & set(found))
                                   / max(len(planted_sets), 1), 4)}


def labelled_truth(planted_names, names, own_copies):
    """``(planted, own)``: each planted group (a frozenset of names) with the
    files of ``own_copies`` that show its original's picture (planted groups
    whose originals show one picture merge), and the sets of ``own_copies``
    that hold no original (their files among ``names``, two or more).
    ``names`` holds every image's name: the index's ``Names``, or a list."""
    every = names.values() if hasattr(names, "values") else names  # a Names or a list
    present = {relative(n): n for n in every}
    set_of = {}
    for labelled in own_copies:
        members = frozenset(present[m] for m in labelled if m in present)
        set_of.update((m, members) for m in members)
    groups = [set(g) | set_of.get(g[0], set()) for g in planted_names]
    owner = list(range(len(groups)))  # union-find over groups sharing a file

    def root(i):
        while owner[i] != i:
            owner[i] = owner[owner[i]]
            i = owner[i]
        return i

    first_with = {}
    for i, g in enumerate(groups):
        for m in g:
            j = first_with.setdefault(m, i)
            owner[root(i)] = root(j)
    merged = {}
    for i, g in enumerate(groups):
        merged.setdefault(root(i), set()).update(g)
    planted = [frozenset(merged[root(i)]) for i in range(len(groups))]
    covered = set().union(*planted) if planted else set()
    own = {s for s in set_of.values() if len(s) > 1 and not (s & covered)}
    return planted, own


def claim_planted_folder(folder: Path, originals: list[str]):
    """Record that ``folder``'s copies are made from ``originals`` (in group
    order), or stop if they were made from others: copies already there are
    used again, and a collection with other files left out (another --clean
    label set) draws other originals under the same group numbers."""
    made_from = folder / "originals.json"
    if made_from.exists():
        if json.loads(made_from.read_text()) != originals:
            raise SystemExit(f"{folder}: its copies were made from other originals "
                             "(the collection changed); use another --work or delete it")
    elif any(folder.iterdir()):  # copies from before their originals were recorded
        raise SystemExit(f"{folder}: holds copies but not which originals they were "
                         "made from; use another --work or delete it")
    made_from.write_text(json.dumps(originals))


def paths_digest(paths) -> str:
    """A fingerprint of the collection's files, in order: a saved index is used
    again only for the same files."""
    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()


def relative(name) -> str:
    """A Caltech-101 file's name as OWN_COPIES lists it: class/file."""
    return "/".join(Path(name).parts[-2:])


def load_own_copies() -> list[list[str]]:
    return json.loads(OWN_COPIES.read_text())["copies"]


def own_copies_left_out() -> set[str]:
    """The labelled copies that ``--clean`` leaves out: every file of each
    labelled set but its first (class/file names)."""
    return {name for labelled in load_own_copies() for name in sorted(labelled)[1:]}


def edge_diagnostics(index, path: Path, args, groups, planted_names) -> dict:
    """Why planted groups are missed: copy edges between images of different
    planted groups (by the two images' attacks), and planted copies with no edge
    at all to their group, or only "object" edges (by attack). The edges come
    from a second, untimed run that keeps them in a checkpoint file."""
    from cvsearch.duplicates import Checkpoint

    path.unlink(missing_ok=True)
    again = index.duplicates(rerank=args.rerank, n_jobs=args.jobs, checkpoint=path)
    assert again == groups
    header = path.read_text().split("\n", 1)[0]
    edges = [e for found in Checkpoint(path, json.loads(header)).done.values()
             for e in found]
    names = index.names
    group_of = {m: number for number, g in enumerate(planted_names) for m in g}
    originals = {g[0] for g in planted_names}

    def attack(name):
        return attack_of(name, originals)

    across, linked, copied, seen = {}, set(), set(), set()
    for edge in edges:
        a, b = names[edge.a], names[edge.b]
        if a in group_of and b in group_of:
            if group_of[a] == group_of[b]:
                linked |= {a, b}
                if edge.kind == "copy":
                    copied |= {a, b}
            elif edge.kind == "copy" and (edge.a, edge.b) not in seen:
                seen.add((edge.a, edge.b))  # each pair once, whichever side found it
                pair = " + ".join(sorted((attack(a), attack(b))))
                across[pair] = across.get(pair, 0) + 1
    alone, objects = {}, {}
    for g in planted_names:
        for member in g[1:]:
            if member not in linked:
                alone[attack(member)] = alone.get(attack(member), 0) + 1
            elif member not in copied:
                objects[attack(member)] = objects.get(attack(member), 0) + 1

    def by_count(counts):
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    return {"copy_edges_across_planted_groups": by_count(across),
            "copies_without_edge_to_their_group": by_count(alone),
            "copies_with_object_edges_only": by_count(objects)}


def attack_of(name, originals) -> str:
    """The attack that made a planted image (copies are named
    ``<group>_<attack>.<extension>``), or "original"."""
    return "original" if name in originals else Path(name).stem.split("_", 1)[1]


#: What a saved index in the work folder must hold to be used again: one saved
#: by an earlier cvsearch (without thumbnails, or with other default features)
#: would decide with less.
CACHE_KIND = {"thumbnails": True, "features": FeatureExtractor().get_params()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-duplicates"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10_000])
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--rerank", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--clean", action="store_true",
                        help="leave Caltech-101's labelled copies of itself out, up to "
                             "four copies per group (the literal reading)")
    args = parser.parse_args(argv)
    meta = run_metadata("duplicates.py", argv)
    paths, planted = collection(args)
    own_copies = load_own_copies()
    saved = args.work / f"index-{args.seed}-{len(paths)}"
    built = args.work / "build.json"
    cached = json.loads(built.read_text()) if built.exists() else {}
    if ((saved / "index.json").exists() and cached.get("kind") == CACHE_KIND
            and cached.get("data") == str(args.data)
            and cached.get("clean", False) == args.clean
            and cached.get("paths") == paths_digest(paths)):  # names are its paths
        build_s = cached["seconds"]
    else:
        shutil.rmtree(saved, ignore_errors=True)
        start = time.perf_counter()
        index = Index.build(paths, n_words=args.n_words, random_state=args.seed,
                            n_jobs=args.jobs)
        build_s = time.perf_counter() - start
        index.save(saved)
        built.write_text(json.dumps({"seconds": build_s, "kind": CACHE_KIND,
                                     "data": str(args.data), "clean": args.clean,
                                     "paths": paths_digest(paths)}))
    print(f"{len(paths)} images, indexed in {build_s:.0f} s", flush=True)
    rng = np.random.default_rng(args.seed + 1)
    in_planted = {i for g in planted for i in g}
    others = np.array([i for i in range(len(paths)) if i not in in_planted])
    rows = []
    for size in sorted(args.sizes):
        index = Index.load(saved)
        share = min(1.0, size / len(paths))
        groups_kept = [planted[i] for i in np.sort(rng.choice(
            len(planted), round(share * len(planted)), replace=False))]
        kept = {i for g in groups_kept for i in g}
        room = max(0, size - len(kept))
        kept |= set(rng.choice(others, min(room, len(others)), replace=False).tolist())
        drop = [paths[i] for i in range(len(paths)) if i not in kept]
        if drop:  # saved and loaded again: workers map the folder
            index.remove(drop)
            index.compact()
            shutil.rmtree(args.work / f"index-size-{size}", ignore_errors=True)
            index.save(args.work / f"index-size-{size}")
            index = Index.load(args.work / f"index-size-{size}")
        start = time.perf_counter()
        groups = index.duplicates(rerank=args.rerank, n_jobs=args.jobs)
        seconds = time.perf_counter() - start
        serial_s = None
        if size == min(args.sizes):  # what the threads bring, in the same run
            start = time.perf_counter()
            serial = index.duplicates(rerank=args.rerank, n_jobs=1)
            serial_s = round(time.perf_counter() - start, 1)
            assert serial == groups
        names = index.names
        planted_names = [[paths[i] for i in g] for g in groups_kept]
        row = {"images": len(index), "planted_groups": len(groups_kept),
               "seconds": round(seconds, 1), "one_thread_seconds": serial_s,
               "ms_per_image": round(1000 * seconds / len(index), 2),
               **score(groups, planted_names, names, own_copies)}
        keep = {frozenset(g): g[0] for g in planted_names}
        whole = [g for g in groups if frozenset(names[i] for i in g.ids) in keep]
        chosen = [names[g.best] == keep[frozenset(names[i] for i in g.ids)]
                  for g in whole]
        row["original_kept"] = round(float(np.mean(chosen)), 4) if chosen else None
        kept = Counter(attack_of(names[g.best], set(keep.values())) for g in whole)
        row["kept_by_attack"] = dict(kept.most_common())
        if size == max(args.sizes):  # the same without reading files again
            start = time.perf_counter()
            stored = index.duplicates(rerank=args.rerank, reread=False, n_jobs=args.jobs)
            row["stored_words"] = {"seconds": round(time.perf_counter() - start, 1),
                                   **score(stored, planted_names, names, own_copies)}
        if size == max(args.sizes):  # the edges behind the groups, untimed
            row["edges"] = edge_diagnostics(index, args.work / f"edges-{size}.jsonl",
                                            args, groups, planted_names)
            planted_truth, own_truth = labelled_truth(planted_names, names, own_copies)
            truth = set(planted_truth) | own_truth
            in_planted_groups = {m for g in planted_names for m in g}
            row["different_pictures"] = sorted(
                sorted(relative(names[i]) for i in g.ids) for g in groups
                if frozenset(names[i] for i in g.ids) not in truth
                and not {names[i] for i in g.ids} & in_planted_groups)
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = {**meta, "build_s": round(build_s), "rows": rows,
               "left_out": len(own_copies_left_out()) if args.clean else 0,
               "attacks": list(ATTACKS),
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "duplicates_clean" if args.clean else "duplicates", results,
                  report(results))


def report(r: dict) -> str:
    a = r["args"]
    clean = a.get("clean", False)
    lines = [
        "# Duplicates: planted copy groups in Caltech-101"
        + (", cleaned of its own copies" if clean else ""), "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        f"Caltech-101 with its background class (less Faces_easy and the *_head "
        f"classes, crops of other classes' photos) with {a['groups']} planted "
        "groups: an original and one to "
        f"{'four' if clean else 'three'} copies by the attacks of `benchmarks/_attacks.py` "
        f"({', '.join(r['attacks'])}). Indexed once ({r['build_s']} s, {a['jobs']} "
        "jobs); smaller sizes are that index with images removed. "
        f"`Index.duplicates(rerank={a['rerank']}, n_jobs={a['jobs']})` (each image's "
        "file read again and searched as a query).", ""]
    if clean:
        lines += [
            "The literal reading of the acceptance item: a found group is right when "
            "its members are exactly a planted group. Caltech-101's copies of its "
            "own pictures, labelled by eye in "
            "`benchmarks/caltech101_own_copies.json`, are left out (the first file "
            f"of each labelled set stays: {r['left_out']} files out), and a group "
            "gets up to four copies, to reach the size. Copies of itself that "
            "Caltech-101 holds and nobody labelled count against precision. "
            "Precision is over all found groups, recall over the planted ones; "
            "\"different pictures\" are found groups "
            "without a planted image.", ""]
    else:
        lines += [
            "Caltech-101 holds copies of its own pictures (the same motorbike shot "
            "recoloured, mirrored leopards, one drawing saved twice). They are "
            "labelled in `benchmarks/caltech101_own_copies.json`: every group found "
            "at 10,000 images (code at commit 1058a25) that held two or more "
            "Caltech-101 files was looked at by eye and split into the sets that "
            "show one picture (the file says how). The truth is each planted group "
            "with the files that show its original's picture, and each labelled set "
            "without an original. A found group is right when its members are "
            "exactly one of these; precision is over all found groups, recall over "
            "the planted ones. \"Different pictures\" are found groups without a "
            "planted image that are not one labelled set. The last columns compare "
            "with the planted groups alone, as if Caltech-101 held no copies of "
            "itself (`--clean` measures that reading on a collection without "
            "them).", ""]
    lines += [
        "| images | planted groups | found | right | precision | recall | "
        "Caltech-101's own groups: found right / labelled | groups of different "
        "pictures | planted alone: exact / precision / recall | original kept | "
        "seconds | ms per image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(
            f"| {row['images']:,} | {row['planted_groups']} | {row['found']} | "
            f"{row['right']} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['own_copy_groups_found']} / {row['own_copy_groups']} | "
            f"{row['groups_of_different_pictures']} | {row['exact']} / "
            f"{row['strict_precision']:.3f} / {row['strict_recall']:.3f} | "
            f"{row['original_kept']} | {row['seconds']} | {row['ms_per_image']} |")
    first = r["rows"][0]
    if first.get("one_thread_seconds"):
        lines += ["", f"At {first['images']:,} images one process took "
                  f"{first['one_thread_seconds']} s, {a['jobs']} jobs (worker "
                  f"processes mapping the saved index) {first['seconds']} s (the same "
                  "groups)."]
    last = r["rows"][-1]
    stored = last.get("stored_words")
    if stored:
        lines += ["", f"At {last['images']:,} images, each image searched with its "
                  "stored words instead of its file read again (`reread=False`, "
                  f"the same run): precision {stored['precision']:.3f} (against "
                  f"{last['precision']:.3f}), recall {stored['recall']:.3f} (against "
                  f"{last['recall']:.3f}), {stored['groups_of_different_pictures']} "
                  "groups of different pictures (against "
                  f"{last['groups_of_different_pictures']}), in {stored['seconds']} s "
                  f"(against {last['seconds']} s)."]
    edges = r["rows"][-1].get("edges")
    if edges:
        def listed(counts):
            return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
        lines += ["", f"Why planted groups are missed, at {r['rows'][-1]['images']:,} "
                  "images (the edges of a second run):", "",
                  "- copy edges between images of different planted groups, by "
                  f"attacks: {listed(edges['copy_edges_across_planted_groups'])};",
                  "- planted copies with no edge at all to their group, by attack: "
                  f"{listed(edges['copies_without_edge_to_their_group'])};",
                  "- planted copies with only \"object\" edges to their group, by "
                  f"attack: {listed(edges.get('copies_with_object_edges_only', {}))}."]
    kept = r["rows"][-1].get("kept_by_attack")
    if kept:
        lines += ["", f"The copy kept in the {sum(kept.values())} planted groups found "
                  f"whole at {r['rows'][-1]['images']:,} images, by what made it: "
                  + ", ".join(f"{k} {v}" for k, v in kept.items()) + "."]
    different = r["rows"][-1].get("different_pictures") or []
    if different:
        lines += ["", "The groups of different pictures found at the largest size:", ""]
        lines += [f"- {', '.join(g)}" for g in different]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
