"""Copies within a collection: ``Index.duplicates`` on 10,000 images with 500
planted copy groups, and its cost per image from 1,000 to 10,000 images.

The collection is Caltech-101 with its background class (less Faces_easy and
the *_head classes, which are crops of other classes' photos) plus, for 500 of
its photos, one to three copies each, made by attacks drawn from
``benchmarks/_attacks.py``. A planted group is an original and its copies. A
found group counts as right when its members are exactly one planted group.
Smaller collections are the same index with images removed (their planted
groups kept whole, in proportion), so every size is searched with one
vocabulary.

Usage::

    python benchmarks/duplicates.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attacks import ATTACKS, make_copy  # noqa: E402
from _common import run_metadata, write_results  # noqa: E402

from cvsearch import FeatureExtractor, Index  # noqa: E402
from cvsearch.datasets import caltech101  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Crops of other classes' photos: true copies nobody planted.
LEFT_OUT = ("Faces_easy",)


def collection(args):
    """``(paths, planted)``: every image, and the planted groups (lists of
    positions in ``paths``, the original first)."""
    caltech = caltech101(args.data, download=False, include_background=True)
    folders = [Path(p).parent.name for p in caltech.paths]
    paths = [str(p) for p, folder in zip(caltech.paths, folders)
             if folder not in LEFT_OUT and not folder.endswith("_head")]
    rng = np.random.default_rng(args.seed)
    wanted = args.images - len(paths)  # copies needed to reach the size asked
    originals = rng.choice(len(paths), args.groups, replace=False)
    sizes = np.full(args.groups, 1)
    extra = max(0, wanted - args.groups)
    if extra > 2 * args.groups:
        raise SystemExit(f"{args.images} images need more than 3 copies per group")
    for _ in range(extra):  # spread the remaining copies, at most 3 per group
        open_ = np.flatnonzero(sizes < 3)
        sizes[rng.choice(open_)] += 1
    folder = args.work / f"planted-{args.seed}-{args.groups}"
    folder.mkdir(parents=True, exist_ok=True)
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


def score(groups, planted_names, names) -> dict:
    """Exact groups, and groups that are a planted group whole with only photos
    of its original's class added: Caltech-101 holds some web pictures several
    times (the same menorah, Garfield or motorbike photo saved again), and those
    are copies of the original nobody planted."""
    found = [frozenset(names[i] for i in g.ids) for g in groups]
    truth = {frozenset(g) for g in planted_names}
    planted_members = set().union(*truth) if truth else set()
    exact = [g in truth for g in found]
    unplanted = [not (g & planted_members) for g in found]
    with_own = set()
    original_of = {frozenset(g): g[0] for g in planted_names}  # the original first
    by_member = {m: frozenset(g) for g in planted_names for m in g}
    for group_ in found:
        hits = {by_member[m] for m in group_ if m in by_member}
        if len(hits) != 1:
            continue
        planted = hits.pop()
        original_class = Path(original_of[planted]).parent.name
        extra = group_ - planted
        if planted <= group_ and extra and all(
                m not in planted_members and Path(m).parent.name == original_class
                for m in extra):
            with_own.add(planted)
    whole = len(truth & set(found)) + len(with_own)
    judged = max(len(found) - sum(unplanted), 1)
    return {"found": len(found), "planted": len(truth),
            "exact": int(sum(exact)),
            "precision": round(sum(exact) / max(len(found), 1), 4),
            "recall": round(len(truth & set(found)) / max(len(truth), 1), 4),
            "unplanted_groups": int(sum(unplanted)),
            "precision_without_unplanted": round(sum(exact) / judged, 4),
            "with_own_copies": len(with_own),
            "recall_with_own_copies": round(whole / max(len(truth), 1), 4),
            "precision_with_own_copies": round(whole / judged, 4)}


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

    def attack(name):  # copies are named <group>_<attack>.<extension>
        return "original" if name in originals else Path(name).stem.split("_", 1)[1]

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
    args = parser.parse_args(argv)
    meta = run_metadata("duplicates.py", argv)
    paths, planted = collection(args)
    saved = args.work / f"index-{args.seed}-{len(paths)}"
    built = args.work / "build.json"
    cached = json.loads(built.read_text()) if built.exists() else {}
    if ((saved / "index.json").exists() and cached.get("kind") == CACHE_KIND
            and cached.get("data") == str(args.data)):  # names are its paths
        build_s = cached["seconds"]
    else:
        shutil.rmtree(saved, ignore_errors=True)
        start = time.perf_counter()
        index = Index.build(paths, n_words=args.n_words, random_state=args.seed,
                            n_jobs=args.jobs)
        build_s = time.perf_counter() - start
        index.save(saved)
        built.write_text(json.dumps({"seconds": build_s, "kind": CACHE_KIND,
                                     "data": str(args.data)}))
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
               **score(groups, planted_names, names)}
        keep = {frozenset(g): g[0] for g in planted_names}
        chosen = [names[g.best] == keep[frozenset(names[i] for i in g.ids)]
                  for g in groups if frozenset(names[i] for i in g.ids) in keep]
        row["original_kept"] = round(float(np.mean(chosen)), 4) if chosen else None
        if size == max(args.sizes):  # the same without reading files again
            start = time.perf_counter()
            stored = index.duplicates(rerank=args.rerank, reread=False, n_jobs=args.jobs)
            row["stored_words"] = {"seconds": round(time.perf_counter() - start, 1),
                                   **score(stored, planted_names, names)}
        if size == max(args.sizes):  # the edges behind the groups, untimed
            row["edges"] = edge_diagnostics(index, args.work / f"edges-{size}.jsonl",
                                            args, groups, planted_names)
            row["unplanted_examples"] = [
                [names[i] for i in g.ids] for g in groups
                if not ({names[i] for i in g.ids} & {p for t in planted_names
                                                     for p in t})][:10]
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = {**meta, "build_s": round(build_s), "rows": rows,
               "attacks": list(ATTACKS),
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "duplicates", results, report(results))


def report(r: dict) -> str:
    a = r["args"]
    lines = [
        "# Duplicates: planted copy groups in Caltech-101", "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        f"Caltech-101 with its background class (less Faces_easy and the *_head "
        f"classes, crops of other classes' photos) with {a['groups']} planted "
        "groups: an original and one to "
        f"three copies by the attacks of `benchmarks/_attacks.py` "
        f"({', '.join(r['attacks'])}). Indexed once ({r['build_s']} s, {a['jobs']} "
        "jobs); smaller sizes are that index with images removed. "
        f"`Index.duplicates(rerank={a['rerank']}, n_jobs={a['jobs']})` (each image's "
        "file read again and searched as a query).", "",
        "A found group is right when its members are exactly a planted group; "
        "\"unplanted\" groups hold none of the planted images (copies Caltech-101 "
        "has of itself).", "",
        "A planted group found whole \"with its own copies\" has only photos of "
        "its original's class added: Caltech-101 holds some web pictures several "
        "times (the same menorah, Garfield or motorbike photo saved again); the "
        "last two columns count those as found (precision without the unplanted "
        "groups).", "",
        "| images | planted groups | found | exact | precision | recall | unplanted "
        "found | precision without them | with own copies | recall, with own "
        "copies | precision, with own copies | original kept | seconds | "
        "ms per image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(
            f"| {row['images']:,} | {row['planted_groups']} | {row['found']} | "
            f"{row['exact']} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['unplanted_groups']} | {row['precision_without_unplanted']:.3f} | "
            f"{row['with_own_copies']} | {row['recall_with_own_copies']:.3f} | "
            f"{row['precision_with_own_copies']:.3f} | "
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
                  f"the same run): {stored['exact']} planted groups found exactly "
                  f"(against {last['exact']}), precision {stored['precision']:.3f} "
                  f"(against {last['precision']:.3f}), recall {stored['recall']:.3f} "
                  f"(against {last['recall']:.3f}), {stored['unplanted_groups']} "
                  f"unplanted groups (against {last['unplanted_groups']}), in "
                  f"{stored['seconds']} s (against {last['seconds']} s)."]
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
    examples = r["rows"][-1].get("unplanted_examples") or []
    if examples:
        lines += ["", "Some unplanted groups found at the largest size:", ""]
        lines += [f"- {', '.join(Path(n).parent.name + '/' + Path(n).name for n in g)}"
                  for g in examples]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
