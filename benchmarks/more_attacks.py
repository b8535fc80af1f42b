"""Copies made by edits no threshold was chosen on: does the copy decision hold?

``copies.py`` measures the twelve attacks of issue 21, on which the decision's
round values were chosen (with another seed). This queries the same index
(``copies.py``'s originals among its distractors, the same seed) with sixteen
other edits (``_more_attacks.py``: frames, memes, collages, stretching,
watermarks, print and scan, thumbnails), written after the decision and not
tuned on, except ``thumbnail``, written with the search of small queries at
twice their size (``Features.finer``; each small copy is searched without it
too, in the same run), and ``meme_bands`` (and ``meme_text`` with it): the
decision's bands over a picture's top or bottom (``cvsearch.decision._bands``)
were written after this benchmark showed a meme's bars decided copies for
0.167 of them (2026-12-04), and looked for by their disagreement, not their
flatness, after it showed 0.873 (2026-12-05); their values compared on seed
1's edits (not this seed's). Per edit, the share of copies decided "copy",
decided the same object (a copy or not), and whose original comes first. Its
false positives are ``copies.py``'s: the decision is the same.

    python benchmarks/more_attacks.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata, write_results  # noqa: E402
from _more_attacks import MORE_ATTACKS  # noqa: E402
from copies import choose_images, image_arguments  # noqa: E402

from cvsearch import Index, thread_budget  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_more_copies(originals, others, folder: Path, seed: int):
    """``[(path, original position, attack)]``: every edit of every original,
    written once into ``folder`` (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for position, source in enumerate(originals):
        image = None
        for number, (name, attack) in enumerate(MORE_ATTACKS.items()):
            existing = sorted(folder.glob(f"{position:04d}_{name}.*"))
            if existing:
                copies.append((str(existing[0]), position, name))
                continue
            if image is None:
                image = cv2.imread(str(source), cv2.IMREAD_COLOR)
            rng = np.random.default_rng([seed, position, number])
            picked = [others[int(i)] for i in rng.choice(len(others), 3, replace=False)]
            copy, extension, quality = attack(image, rng, picked)
            path = folder / f"{position:04d}_{name}{extension}"
            options = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
            if not cv2.imwrite(str(path), copy, options):
                raise SystemExit(f"{path}: cannot be written")
            copies.append((str(path), position, name))
    return copies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    image_arguments(parser)
    args = parser.parse_args(argv)
    meta = run_metadata("more_attacks.py", argv)
    originals, distractors, negatives = choose_images(args.data, args)
    # collages and pasted pictures are made of pictures that are not indexed
    others = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in negatives[:60]]
    copies = make_more_copies(originals, others,
                              args.work / f"more-{args.seed}-{len(originals)}", args.seed)
    index = Index.build(originals + distractors, n_words=args.n_words,
                        random_state=args.seed, n_jobs=args.jobs)
    ids_of = {name: i for i, name in zip(index.ids, index.names.values())}
    rows = {name: [] for name in MORE_ATTACKS}
    with thread_budget(1):
        for path, position, name in copies:
            features = index.extractor.extract(path, finer=True)
            _, ids, evidence = index.query(features, k=args.k, rerank=args.rerank,
                                           mirror=True, return_evidence=True)
            at = np.flatnonzero(ids == ids_of[originals[position]])
            found = evidence.take(at[:1])
            kind = str(found.kind[0]) if len(at) else "absent"
            plain = kind
            if features.finer is not None:  # a small copy: without that view too
                _, ids, alone = index.query(features._replace(finer=None), k=args.k,
                                            rerank=args.rerank, mirror=True,
                                            return_evidence=True)
                at_plain = np.flatnonzero(ids == ids_of[originals[position]])
                plain = str(alone.kind[at_plain[0]]) if len(at_plain) else "absent"
            rows[name].append({
                "kind": kind, "small": features.finer is not None, "plain_kind": plain,
                "first": bool(len(ids) and len(at) and at[0] == 0),
                "coverage": float((found.coverage + found.query_coverage)[0] / 2)
                if len(at) else None,
                "agreement": float(found.agreement[0]) if len(at) else None})
    table = []
    for name, attack in MORE_ATTACKS.items():
        kinds = [r["kind"] for r in rows[name]]
        agreements = [r["agreement"] for r in rows[name]
                      if r["kind"] in ("copy", "object") and r["agreement"] is not None
                      and np.isfinite(r["agreement"])]
        table.append({"attack": name, "about": " ".join(attack.__doc__.split()),
                      "copies": len(kinds),
                      "decided_copy": round(kinds.count("copy") / len(kinds), 3),
                      "same_object": round((kinds.count("copy") + kinds.count("object"))
                                           / len(kinds), 3),
                      "first": round(float(np.mean([r["first"] for r in rows[name]])), 3),
                      "small": round(float(np.mean([r["small"] for r in rows[name]])), 3),
                      "decided_copy_plain_view": round(float(np.mean(
                          [r["plain_kind"] == "copy" for r in rows[name]])), 3),
                      "median_agreement": (round(float(np.median(agreements)), 3)
                                           if agreements else None)})
    every = [r for name in rows for r in rows[name]]
    results = {**meta, "indexed": len(index), "rows": table,
               "all_decided_copy": round(float(np.mean([r["kind"] == "copy"
                                                         for r in every])), 4),
               "all_decided_copy_plain_view": round(float(np.mean(
                   [r["plain_kind"] == "copy" for r in every])), 4),
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "more_attacks", results, report(results))


def report(results: dict) -> str:
    """The markdown of a run's ``results``."""
    args, table = argparse.Namespace(**results["args"]), results["rows"]
    lines = ["# Copies by edits no threshold was chosen on", "",
             f"`{results['command']}` on {results['date']} ({results['machine']}).", "",
             f"The {args.originals} originals of `copies.py` (seed {args.seed}) among its "
             f"{results['indexed'] - args.originals:,} distractors "
             f"({results['indexed']:,} images, "
             f"{args.n_words:,} words), each queried with the {len(table)} edits of "
             "`benchmarks/_more_attacks.py`, written after the copy decision's values "
             f"were chosen (`rerank={args.rerank}`, `mirror=True`, one thread), "
             "except `thumbnail`, written with the search of small queries at twice "
             "their size (a quarter of `max_side` or less: `Features.finer`), and "
             "`meme_bands` (and `meme_text` with it): the decision's bands "
             "over a picture's top or bottom were written after this benchmark "
             "showed 0.167 of its memes decided copies (2026-12-04), and looked "
             "for by their disagreement, not their flatness, after it showed "
             "0.873 (2026-12-05); their values compared on seed 1's edits. "
             "\"Same object\": decided a copy or the same object; \"first\": the "
             "original ranked first; \"pixels agree\": the median "
             "`evidence.agreement` of those decided the same object (a copy needs "
             "2/3). \"Small\": the share of the edit's copies searched at twice "
             "their size too; \"without it\": decided copies when the small ones are "
             "not (their features without `finer`), in the same run. False "
             "positives: `copies.py`'s, the decision being the same.", "",
             f"All {sum(r['copies'] for r in table):,} copies: "
             f"**{results['all_decided_copy']:.3f}** decided copies "
             f"({results['all_decided_copy_plain_view']:.3f} without searching small "
             "ones at twice their size).", "",
             "| edit | what | decided copy | same object | first | pixels agree | small "
             "| decided copy without it |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['about']} | {r['decided_copy']:.3f} | "
              f"{r['same_object']:.3f} | {r['first']:.3f} | {r['median_agreement']} | "
              f"{r['small']:.2f} | {r['decided_copy_plain_view']:.3f} |"
              for r in table]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
