"""Is it a copy? Copydays-style copies found and decided, against perceptual
hashes and a CNN, in one run.

Originals are Caltech-101 photos (at least 300 px on the long side, at most two
per class); each gets the twelve attacks of ``benchmarks/_attacks.py``. The
index holds the originals among Caltech-101 distractors and half of UKBench-56's
objects; the negatives, never indexed, are other Caltech-101 photos and the other
UKBench objects, photographed on the same carpets as the indexed ones. Methods:

- cvsearch (``Index`` defaults, ``rerank``), with its two decisions: "copy" (the
  same picture) and "object" (the same object); with and without ``mirror``;
- its inlier count alone, at the threshold giving the same false-positive rate;
- ``GlobalIndex`` (EfficientNet-Lite0 cosine) and imagehash's pHash and dHash
  (Hamming distance), each at the threshold giving the same false-positive rate.

A copy is detected when its original is among the ``k`` results and passes the
method's threshold (for cvsearch: is decided "copy"); a negative is a false
positive when any result passes. Then the "same object" decision on the SMVS
phone photos: with their covers in the index, and with them removed.

Usage::

    python benchmarks/copies.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attacks import ATTACKS, make_copy  # noqa: E402
from _common import (  # noqa: E402
    describe_all,
    rate_text,
    rate_with_interval,
    run_metadata,
    write_results,
)

from cvsearch import GlobalIndex, Index  # noqa: E402
from cvsearch.datasets import caltech101  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


#: Caltech-101's Faces_easy are crops of its Faces photos, and its *_head classes
#: of their namesakes' photos: true copies, neither distractors nor negatives.
LEFT_OUT = ("Faces_easy",)
#: Photos of one person in one office: indexed half, negatives half (what
#: shares a background with indexed photos, as UKBench's carpets do).
SHARED_BACKGROUND = "Faces"


def choose_images(data: Path, args):
    """Originals and distractors, and negatives that are not indexed.

    Negatives come from classes of Caltech-101 that are not indexed at all (a
    class can hold edited versions of one product photo, which are copies),
    from half of the Faces photos (the other half is indexed: the same people in
    the same office) and from the UKBench objects that are not indexed (the
    indexed ones lie on the same carpets).
    """
    from PIL import Image

    caltech = caltech101(data, download=False)
    paths = [str(p) for p in caltech.paths]
    classes = [Path(p).parent.name for p in paths]
    rng = np.random.default_rng(args.seed)
    # a class is held out with its crops (crocodile with crocodile_head)
    families = sorted({c.split("_")[0] for c in classes} - {SHARED_BACKGROUND}
                      - {c.split("_")[0] for c in LEFT_OUT})
    held_out, size = set(), 0
    for family in rng.permutation(families):
        if size >= args.negatives:
            break
        members = {c for c in classes if c.split("_")[0] == family}
        held_out |= members
        size += sum(classes.count(c) for c in members if c.split("_")[-1] != "head")
    heads = {c for c in held_out if c.split("_")[-1] == "head"}
    order = rng.permutation(len(paths))
    faces = [int(i) for i in order if classes[i] == SHARED_BACKGROUND]
    negatives = [int(i) for i in order
                 if classes[i] in held_out - heads][:args.negatives]
    negatives += faces[::2]
    usable = [int(i) for i in order if classes[i] not in held_out | set(LEFT_OUT)
              and not (classes[i] == SHARED_BACKGROUND and int(i) in set(faces[::2]))]
    originals, per_class = [], {}
    for i in usable:
        if len(originals) == args.originals:
            break
        if per_class.get(classes[i], 0) >= 2:
            continue
        with Image.open(paths[i]) as image:
            if max(image.size) < 300:
                continue
        originals.append(i)
        per_class[classes[i]] = per_class.get(classes[i], 0) + 1
    chosen = set(originals)
    distractors = [i for i in usable if i not in chosen][:args.distractors]
    ukbench = sorted((data / "ukbench56" / "images").glob("*.jpg"))
    indexed_uk = [str(p) for i, p in enumerate(ukbench) if (i // 4) % 2 == 0]
    negative_uk = [str(p) for i, p in enumerate(ukbench) if (i // 4) % 2 == 1]
    return ([paths[i] for i in originals], [paths[i] for i in distractors] + indexed_uk,
            [paths[i] for i in negatives] + negative_uk)


def negative_family(path) -> str:
    """Which kind of negative a path is (see :func:`choose_images`)."""
    parent = Path(path).parent.name
    if parent == "images":
        return "UKBench objects not indexed (same carpets)"
    if parent == SHARED_BACKGROUND:
        return "Faces not indexed (same people, same offices)"
    return "classes not indexed"


def make_copies(originals, work: Path, seed: int):
    """``[(path, original position, attack)]`` of every attack of every original."""
    folder = work / f"copies-{seed}-{len(originals)}"
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for position, source in enumerate(originals):
        for number, attack in enumerate(ATTACKS):
            rng = np.random.default_rng([seed, position, number])
            stem = folder / f"{position:04d}_{attack}"
            existing = sorted(folder.glob(f"{stem.name}.*"))
            path = str(existing[0]) if existing else make_copy(source, attack, stem, rng)
            copies.append((path, position, attack))
    return copies


def run_cvsearch(index, queries, original_ids, args, mirror: bool):
    """Per query: whether the original is first, its evidence, and the strongest
    evidence among all results (for negatives)."""
    rows = []
    for query, original in zip(queries, original_ids):
        start = time.perf_counter()
        scores, ids, evidence = index.query(query, k=args.k, rerank=args.rerank,
                                            mirror=mirror, return_evidence=True)
        seconds = time.perf_counter() - start
        at = np.flatnonzero(ids == original)
        counted = np.where(evidence.exact, evidence.inliers, 0)
        strongest = int(np.argmin(np.where(ids == original, np.inf, evidence.log_nfa)))
        rows.append({
            "query": str(query),
            "original": evidence.record(int(at[0])) if len(at) else None,
            "strongest_other": {**evidence.record(strongest),
                                "id": int(ids[strongest])},
            "first": bool(len(ids) and ids[0] == original),
            "kind": str(evidence.kind[at[0]]) if len(at) else "absent",
            "inliers": int(counted[at[0]]) if len(at) else 0,
            "any_copy": bool(evidence.copy.any()),
            "called_copies_of": [str(index.names[int(i)]) for i in ids[evidence.copy]],
            "called_copies": [[int(i), bool(m)] for i, m in
                              zip(ids[evidence.copy], evidence.mirrored[evidence.copy])],
            "any_object": bool(evidence.same_object.any()),
            "max_inliers": int(counted.max(initial=0)),
            "seconds": seconds})
    return rows


def aligned_rows(index, rows, height: int = 220) -> np.ndarray | None:
    """A picture to judge each negative called a copy by: the negative, the
    indexed image it was called a copy of, warped onto it by a homography fitted
    to the matches ``Index.matches`` returns, and their absolute grey
    difference (dark where the pixels are the same). None if there are none."""
    import cv2

    tiles = []
    for row in rows:
        negative = cv2.imread(row["query"])
        if negative is None:
            continue
        for id_, mirrored in row.get("called_copies", []):
            indexed = cv2.imread(str(index.names[id_]))
            if indexed is None:
                continue
            q_xy, db_xy = index.matches(row["query"], id_, mirrored=mirrored)
            if len(q_xy) < 4:  # a homography needs four
                continue
            # both in their own pixels: a mirrored match gives a reflecting h
            h, _ = cv2.findHomography(db_xy, q_xy, cv2.RANSAC, 4.0)
            if h is None:
                continue
            size = (negative.shape[1], negative.shape[0])
            warped = cv2.warpPerspective(indexed, h, size)
            inside = cv2.warpPerspective(np.full(indexed.shape[:2], 255, np.uint8), h,
                                         size) > 0
            difference = cv2.absdiff(cv2.cvtColor(negative, cv2.COLOR_BGR2GRAY),
                                     cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY))
            difference[~inside] = 0
            difference = cv2.cvtColor(difference, cv2.COLOR_GRAY2BGR)
            scale = height / negative.shape[0]
            strip = np.hstack([cv2.resize(t, None, fx=scale, fy=scale)
                               for t in (negative, warped, difference)])
            caption = np.full((24, strip.shape[1], 3), 255, np.uint8)
            text = (f"{'/'.join(Path(row['query']).parts[-2:])} | "
                    f"{'/'.join(Path(index.names[id_]).parts[-2:])} warped onto it"
                    f"{' (mirrored)' if mirrored else ''}, {len(q_xy)} inliers | "
                    "difference")
            cv2.putText(caption, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(np.vstack([caption, strip]))
    if not tiles:
        return None
    width = max(t.shape[1] for t in tiles)
    return np.vstack([np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)),
                             constant_values=255) for t in tiles])


def hash_scores(index_paths, queries, original_pos, kind: str):
    """Per query: the original's similarity (64 - Hamming distance), whether it
    is first, and the best similarity of any indexed image."""
    import imagehash
    from PIL import Image

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash}[kind]

    def bits(path):
        with Image.open(path) as image:
            return function(image).hash.ravel()

    database = np.array([bits(p) for p in index_paths], bool)
    rows = []
    for query, original in zip(queries, original_pos):
        similarity = 64 - (database != bits(query)).sum(axis=1)
        best = int(np.argmax(similarity))
        rows.append({"first": original >= 0 and similarity[original] == similarity[best]
                     and best == original,
                     "score": float(similarity[original]) if original >= 0 else None,
                     "best": float(similarity.max())})
    return rows


def cnn_scores(index_paths, queries, original_pos, work: Path, k: int):
    """As :func:`hash_scores`, with GlobalIndex cosine similarities."""
    global_index = GlobalIndex()
    global_index.add_descriptors(describe_all(index_paths, work), index_paths)
    described = describe_all(queries, work)
    ids_of = {name: i for i, name in zip(global_index.ids, global_index.names.values())}
    rows = []
    for vector, original in zip(described, original_pos):
        scores, ids = global_index.query(vector, k=k)
        target = ids_of[index_paths[original]] if original >= 0 else -1
        at = np.flatnonzero(ids == target)
        rows.append({"first": bool(ids[0] == target),
                     "score": float(scores[at[0]]) if len(at) else None,
                     "best": float(scores[0])})
    return rows


def false_positives(called) -> dict:
    """``false_positive_rate`` and ``false_positive_ci95`` (its exact 95%
    interval) of the negatives' bools ``called``."""
    rate = rate_with_interval(called)
    return {"false_positive_rate": rate["rate"], "false_positive_ci95": rate["ci95"]}


def at_rate(rows, negatives, rate: float):
    """Detection of thresholded scores at (at most) ``rate`` false positives:
    the smallest threshold no more than ``rate`` of the negatives' best scores
    pass. Returns (threshold, per-row detection)."""
    best = np.sort([r["best"] for r in negatives])[::-1]
    allowed = int(np.floor(rate * len(best)))
    threshold = best[allowed] if allowed < len(best) else -np.inf
    # strictly above the first negative not allowed through
    return float(threshold), [r["score"] is not None and r["score"] > threshold
                              for r in rows]


def summarise(copies, detected, first=None):
    table = {}
    for attack in ATTACKS:
        rows = [i for i, c in enumerate(copies) if c[2] == attack]
        table[attack] = {"detected": round(float(np.mean([detected[i] for i in rows])), 3)}
        if first is not None:
            table[attack]["first"] = round(float(np.mean([first[i] for i in rows])), 3)
    table["all"] = {"detected": round(float(np.mean(detected)), 3)}
    if first is not None:
        table["all"]["first"] = round(float(np.mean(first)), 3)
    return table


def smvs_rows(index, data: Path, args):
    """Same-object decisions on the SMVS phone photos: with their covers indexed;
    with half of the covers removed (the photos of the removed ones are the
    queries); and with all of them removed."""
    root = data / "smvs_dvd_covers_half"
    covers = sorted((root / "Reference").glob("*.jpg"))
    photos = [(p, p.name) for phone in ("Canon", "Droid", "E63", "Palm")
              for p in sorted((root / phone).glob("*.jpg"))]
    names = {c.name: f"cover/{c.name}" for c in covers}
    index.add([str(c) for c in covers], [names[c.name] for c in covers])

    def ask(photo):
        _, ids, evidence = index.query(str(photo), k=args.k, rerank=args.rerank,
                                       return_evidence=True)
        decided = [index.names[int(i)] for i, o in zip(ids, evidence.same_object) if o]
        return index.names[int(ids[0])], bool(evidence.same_object[0]), decided

    found = []
    for photo, cover in photos:
        top, same, _ = ask(photo)
        found.append(top == names[cover] and same)
    half, every = [], []
    for parity in (0, 1):
        gone = [c for c in covers if int(c.name[:3]) % 2 == parity]
        index.remove([names[c.name] for c in gone])
        for photo, cover in photos:
            if int(cover[:3]) % 2 == parity:
                decided = ask(photo)[2]
                half.append({"photo": f"{photo.parent.name}/{photo.name}",
                             "decided": [Path(n).name if n.startswith("cover/") else n
                                         for n in decided]})
        index.add([str(c) for c in gone], [names[c.name] for c in gone])
    index.remove(list(names.values()))
    for photo, _ in photos:
        every.append(bool(ask(photo)[2]))
    false_half = [h for h in half if h["decided"]]
    return {"photos": len(found), "matched": round(float(np.mean(found)), 3),
            "false_match_half_removed": round(len(false_half) / len(half), 3),
            "false_half_examples": false_half,
            "false_match_all_removed": round(float(np.mean(every)), 3)}


def image_arguments(parser, distractors: int = 3000):
    """The arguments of :func:`choose_images`, :func:`make_copies` and
    :func:`run_cvsearch` (shared with keypoint_budget.py)."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-copies"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--distractors", type=int, default=distractors)
    parser.add_argument("--negatives", type=int, default=300)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--rerank", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    image_arguments(parser)
    parser.add_argument("--no-cnn", action="store_true",
                        help="leave out the CNN (it needs the cnn extra)")
    parser.add_argument("--cvsearch-only", action="store_true",
                        help="leave out the hashes, the CNN and SMVS (a quick look; "
                             "writes nothing to results/)")
    args = parser.parse_args(argv)
    meta = run_metadata("copies.py", argv)
    originals, distractors, negatives = choose_images(args.data, args)
    copies = make_copies(originals, args.work, args.seed)
    index_paths = originals + distractors
    start = time.perf_counter()
    index = Index.build(index_paths, n_words=args.n_words, random_state=args.seed,
                        n_jobs=args.jobs)
    build_s = time.perf_counter() - start
    print(f"indexed {len(index)} images in {build_s:.0f} s", flush=True)
    queries = [c[0] for c in copies] + negatives
    original_pos = [c[1] for c in copies] + [-1] * len(negatives)
    ids_of = {name: i for i, name in zip(index.ids, index.names.values())}
    original_ids = [ids_of[index_paths[p]] if p >= 0 else -1 for p in original_pos]
    n = len(copies)
    results = {**meta, "indexed": len(index), "copies": n, "negatives": len(negatives),
               "attacks": list(ATTACKS), "build_s": round(build_s), "methods": {},
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    runs = {}
    for mirror in (False, True):
        rows = run_cvsearch(index, queries, original_ids, args, mirror)
        runs[mirror] = rows
        copy_rows, negative_rows = rows[:n], rows[n:]
        label = f"cvsearch{' mirror' if mirror else ''}"
        first = [r["first"] for r in copy_rows]
        for decision, field, any_field in (("copy", ("copy",), "any_copy"),
                                           ("object", ("copy", "object"), "any_object")):
            results["methods"][f"{label}: {decision} decision"] = {
                "per_attack": summarise(copies, [r["kind"] in field for r in copy_rows],
                                        first),
                **false_positives([r[any_field] for r in negative_rows]),
                "median_query_ms": round(1000 * float(np.median(
                    [r["seconds"] for r in rows])), 1)}
        print(label, json.dumps(results["methods"][f"{label}: copy decision"]), flush=True)
        (args.work / f"details-{'mirror' if mirror else 'plain'}.json").write_text(
            json.dumps(rows))
        families = {}
        for query, r in zip(queries[n:], negative_rows):
            families.setdefault(negative_family(query), []).append(r["any_copy"])
        results["methods"][f"{label}: copy decision"]["false_positive_rate_by_family"] = {
            family: [int(sum(v)), len(v)] for family, v in families.items()}
        results["methods"][f"{label}: copy decision"]["negatives_called_copies"] = [
            {"negative": query, "copy_of": r["called_copies_of"]}
            for query, r in zip(queries[n:], negative_rows) if r["any_copy"]]
    if args.cvsearch_only:
        return results
    rate = max(results["methods"]["cvsearch mirror: copy decision"]["false_positive_rate"],
               0.005)
    results["rate"] = rate
    scored = {"cvsearch mirror: inliers alone": [
        {"first": r["first"], "score": r["inliers"] if i < n else None,
         "best": r["max_inliers"]} for i, r in enumerate(runs[True])]}
    for kind in ("phash", "dhash"):
        scored[kind] = hash_scores(index_paths, queries, original_pos, kind)
    if not args.no_cnn:
        scored["CNN (GlobalIndex)"] = cnn_scores(index_paths, queries, original_pos,
                                                 args.work, args.k)
    for name, rows in scored.items():
        threshold, detected = at_rate(rows[:n], rows[n:], rate)
        results["methods"][name] = {
            "per_attack": summarise(copies, detected[:n], [r["first"] for r in rows[:n]]),
            "threshold": threshold,
            **false_positives([r["best"] > threshold for r in rows[n:]])}
        print(name, json.dumps(results["methods"][name]), flush=True)
    picture = aligned_rows(index, [r for r in runs[True][n:] if r["any_copy"]])
    if picture is not None:
        import cv2

        RESULTS.mkdir(exist_ok=True)
        cv2.imwrite(str(RESULTS / "copies_false_positives.jpg"), picture,
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
    results["smvs"] = smvs_rows(index, args.data, args)
    print("smvs", results["smvs"], flush=True)
    write_results(RESULTS, "copies", results, report(results))


def report(r: dict) -> str:
    from cvsearch.decision import (
        CONTAINED,
        COPY_AGREEMENT,
        COPY_COVERAGE,
        PIXEL_COPY,
        SAME_OBJECT_LOG_NFA,
    )

    methods = r["methods"]
    names = list(methods)
    lines = [
        "# Is it a copy? Copies detected, and false positives", "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        f"{r['indexed']:,} indexed images (the originals among Caltech-101 "
        f"distractors and half of UKBench-56's objects); {r['copies']:,} copies "
        f"({len(r['attacks'])} attacks of each original); {r['negatives']} "
        "negatives that are not in the index (other Caltech-101 photos, and the "
        "other UKBench objects, on the same carpets as indexed ones). "
        f"Built in {r['build_s']} s.", "",
        f"cvsearch decides with its defaults: \"copy\" when log10 NFA <= "
        f"{SAME_OBJECT_LOG_NFA}, the inliers cover >= {COPY_COVERAGE} of the "
        f"textured overlap, >= {COPY_AGREEMENT:.2f} of the aligned thumbnails' "
        "pixels agree (grey levels and edges; a band over the top or bottom "
        f"that mostly disagrees set aside where the rest agrees >= {PIXEL_COPY}) "
        "and >= "
        f"{CONTAINED} of one image lies inside the other; "
        "\"object\" on the NFA alone. The other methods are "
        f"thresholded where at most {r['rate']:.1%} of the negatives pass "
        "(cvsearch's copy decision's own rate, or 0.5% if lower).", "",
        "## Detected copies per attack (share of copies first, in brackets)", "",
        "| attack | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names)]
    for attack in [*r["attacks"], "all"]:
        cells = []
        for name in names:
            row = methods[name]["per_attack"][attack]
            cells.append(f"{row['detected']:.3f} ({row.get('first', 0):.3f})")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    lines.append("| **false positives** (95% interval) | " + " | ".join(
        rate_text(methods[name]["false_positive_rate"],
                  methods[name]["false_positive_ci95"]) for name in names) + " |")
    # with none passing, the exact upper end is 1 - 0.025 ** (1 / n)
    enough = math.ceil(math.log(0.025) / math.log(1 - 0.005))
    lines += ["", f"The false positives' intervals are exact (Clopper-Pearson) over "
              f"these {r['negatives']} negatives: a rate under 0.5% is shown only "
              "where the interval's upper end is under it, which takes at least "
              f"{enough} negatives with none passing."]
    by_family = methods["cvsearch mirror: copy decision"].get(
        "false_positive_rate_by_family", {})
    if by_family:
        lines += ["", "False positives of cvsearch's copy decision (with mirror) by kind "
                  "of negative:", "", "| negatives | called copies |", "|---|---|"]
        lines += [f"| {family} | {hits} of {total} |"
                  for family, (hits, total) in by_family.items()]
    called = methods["cvsearch mirror: copy decision"].get("negatives_called_copies", [])
    if called:
        def short(path):
            return "/".join(Path(path).parts[-2:])
        lines += ["", "The negatives called copies, and of what (look at them before "
                  "counting them as false: a class can hold one photo edited, or "
                  "its subject pasted onto other backgrounds):", ""]
        lines += [f"- {short(c['negative'])}: {', '.join(short(o) for o in c['copy_of'])}"
                  for c in called]
        lines += ["", "Each of them beside the indexed image warped onto it by the "
                  "matches, and the two images' difference (dark where the pixels "
                  "are the same): [copies_false_positives.jpg]"
                  "(copies_false_positives.jpg).", ""]
    lines += ["", "Median time per query (cvsearch, milliseconds): " + ", ".join(
        f"{name}: {methods[name]['median_query_ms']}" for name in names
        if "median_query_ms" in methods[name]) + ".", "",
        "## Same object: SMVS phone photos", "",
        f"{r['smvs']['photos']} phone photos, their 50 covers added to the index "
        f"above: {r['smvs']['matched']:.3f} are decided \"object\" (or \"copy\") "
        "with their own cover first. With every cover removed, "
        f"{r['smvs']['false_match_all_removed']:.3f} of the photos get a result "
        "decided \"object\". With half of the covers removed (the photos of "
        f"those are the queries), {r['smvs']['false_match_half_removed']:.3f} do; "
        "these are the photos and what they matched (many phone photos show a "
        "stack of covers, the next one partly visible: look before counting "
        "them as false):", ""]
    lines += [f"- {h['photo']}: {', '.join(h['decided'])}"
              for h in r["smvs"]["false_half_examples"]]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
