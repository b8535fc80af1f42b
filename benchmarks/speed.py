"""Speed and size of each stage on 2,000 Caltech-101 images with 20,000 words.

Builds an index of a fixed random sample of Caltech-101 images (BACKGROUND_Google
left out), then times each stage on held-out query images that are not in it:

* feature extraction, ms per image;
* word assignment, ms per image, approximate (the library's default) and exact,
  and how often the two agree;
* query scoring (tf-idf of the query, sparse cosine against the index, top-k), ms;
* verification of a 50-image short-list, ms, with keypoint shapes (the
  default) and with RANSAC (full counts: no early stop at min_inliers);
* index size on disk per image, and the build time (extraction, vocabulary,
  indexing);
* issue 22's ratios, each measured interleaved in this run: adding images
  against bare OpenCV SIFT on the same images (read, area-resize, detect and
  describe; ``--add-passes`` passes over them) and against our own extraction
  of them (what adding spends above it is word assignment and indexing), a
  query against its own extraction, and a 10-megapixel phone photo (an SMVS
  photo upscaled to 3648 x 2736, saved as a JPEG as phones do) queried with
  re-rank 100 against OpenCV's decode of the whole file; and images per second
  per core for adding, projected to a million images.

Everything runs with one thread (``cvsearch.thread_budget(1)``).

    python benchmarks/speed.py --data ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from _common import folder_bytes, timed

from cvsearch import FeatureExtractor, ImageWords, Index, thread_budget
from cvsearch.datasets import image_folder

#: The size of a 10-megapixel phone photo.
PHONE = (3648, 2736)


def bare_sift(path, extractor: FeatureExtractor):
    """What OpenCV alone does for one image: read it, area-resize it to
    ``max_side``, detect and describe (the floor of an add)."""
    import cv2

    gray = fitted(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), extractor.max_side)
    return cv2.SIFT_create(nfeatures=extractor.max_keypoints).detectAndCompute(
        gray, None)


def fitted(gray, max_side: int):
    """``gray`` area-resized so that its long side is at most ``max_side``."""
    import cv2

    scale = max_side / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, (round(gray.shape[1] * scale),
                                 round(gray.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
    return gray


def phone_photos(smvs: Path, folder: Path, n: int) -> list[Path]:
    """``n`` SMVS phone photos upscaled to :data:`PHONE` and saved as JPEGs
    (quality 92, as a phone's camera writes them) in ``folder``."""
    import cv2

    photos = sorted((smvs / phone / name) for phone in ("Canon", "Droid", "E63", "Palm")
                    for name in sorted(os.listdir(smvs / phone))[:n // 4 + 1])[:n]
    paths = []
    for i, photo in enumerate(photos):
        image = cv2.imread(str(photo))
        size = PHONE if image.shape[1] >= image.shape[0] else PHONE[::-1]
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"phone{i:02d}.jpg")
        cv2.imwrite(str(paths[-1]), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return paths


def run(args) -> dict:
    collection = image_folder(Path(args.data) / "101_ObjectCategories",
                              exclude=["BACKGROUND_Google"])
    order = np.random.default_rng(args.seed).permutation(len(collection.paths))
    database = [collection.paths[i] for i in order[:args.images]]
    queries = [collection.paths[i]
               for i in order[args.images:args.images + args.queries]]
    # one more image, added untimed before the timed adds (see below)
    warm_up = collection.paths[order[args.images + args.queries]]

    extractor = FeatureExtractor(args.method)
    probing = {} if args.n_probe is None else {"n_probe": args.n_probe}
    index, build_s = timed(Index.build, database, extractor, args.n_words,
                           random_state=args.seed, **probing)
    n_descriptors = index.n_keypoints

    # Stage timings on held-out queries, one query at a time as a user would.
    # One query first, untimed: the first computes the idf and norms of the
    # index (and compiles the scoring loop with the 'fast' extra); re-ranked, so
    # that the second word's scan and the short-list's keypoint loop are
    # compiled too (or loaded from numba's cache: the second word's first call
    # put 5 ms on the mean of 200 queries in a fresh checkout, one-off).
    index.query(queries[0], rerank=args.shortlist)
    extract_s, assign_s, exact_s, score_s, rerank_s, ransac_s = [], [], [], [], [], []
    two_s = []
    agree = total = 0
    for path in queries:
        features, seconds = timed(extractor.extract, path)
        extract_s.append(seconds)
        words, seconds = timed(index.vocabulary.predict, features.descriptors)
        assign_s.append(seconds)
        _, seconds = timed(index.vocabulary.predict_two, features.descriptors)
        two_s.append(seconds)
        exact, seconds = timed(index.vocabulary.predict_exact, features.descriptors)
        exact_s.append(seconds)
        agree += int((words == exact).sum())
        total += len(words)

        # scoring and top-k alone: the query's words given
        given = ImageWords(words, features.keypoints, features.image_shape,
                           index.vocabulary.fingerprint, extractor.feature_params())
        (_, ids), seconds = timed(index.query, given, k=args.shortlist)
        score_s.append(seconds)

        _, seconds = timed(index.inliers, given, ids)
        rerank_s.append(seconds)
        _, seconds = timed(index.inliers, given, ids, verification="ransac")
        ransac_s.append(seconds)

    # A query against its own extraction, interleaved image by image.
    query_s, own_extract_s = [], []
    for path in queries:
        own_extract_s.append(timed(extractor.extract, path)[1])
        query_s.append(timed(index.query, path, k=10)[1])

    # A phone photo: the whole decode against a query with re-rank 100.
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        photos = phone_photos(Path(args.smvs), Path(tmp), args.phone_photos)
        decode_s, phone_s, phone_extract_s, phone_keypoints = [], [], [], []
        sift_alone_s = []
        for photo in photos:
            data = np.frombuffer(photo.read_bytes(), np.uint8)
            decode_s.append(timed(cv2.imdecode, data, cv2.IMREAD_COLOR)[1])
            # the floor: OpenCV's SIFT alone on the image the extractor sees
            # (a quarter of each side decoded, as it chooses for these sizes),
            # the decode left out
            gray = fitted(cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                          extractor.max_side)
            sift = cv2.SIFT_create(nfeatures=extractor.max_keypoints)
            sift_alone_s.append(timed(sift.detectAndCompute, gray, None)[1])
            features, seconds = timed(extractor.extract, photo)
            phone_extract_s.append(seconds)
            phone_keypoints.append(len(features.keypoints))
            phone_s.append(timed(index.query, photo, k=10, rerank=100)[1])
    n_images = len(index)

    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        disk = folder_bytes(Path(tmp))

    # Adding against bare SIFT and against our own extraction on the same
    # images, in interleaved blocks (adding last: the queries become part of the
    # index). One image is added first, untimed: the first add makes the first
    # small segment, whose postings number their images in 8 bits (the built
    # one in 16), and numba compiles the norms' loop for that type, or loads it
    # from its cache, once per process (one-off, py-spy: 0.4 s in a fresh
    # checkout, 1.9 ms per image of 200 when it was timed).
    # The three are timed over the images args.add_passes times, the order of
    # the three turning from block to block and pass to pass: on this shared
    # machine one pass's ratio moved by +-0.03 from run to run (one-off, four
    # passes in one process: 1.107 to 1.167), and whichever ran first in a block
    # found other caches than the next. Each pass adds the images again, under
    # names of their own.
    index.add([warm_up])
    passes = []
    for n_pass in range(args.add_passes):
        times = {"bare": 0.0, "extract": 0.0, "add": 0.0}
        for start in range(0, len(queries), 20):
            block = queries[start:start + 20]
            names = [f"{path} (pass {n_pass})" for path in block]
            steps = [
                ("bare", lambda b=block: [bare_sift(p, extractor) for p in b]),
                ("extract", lambda b=block: [extractor.extract(p) for p in b]),
                ("add", lambda b=block, n=names: index.add(b, names=n))]
            turn = (start // 20 + n_pass) % len(steps)
            for name, step in steps[turn:] + steps[:turn]:
                times[name] += timed(step)[1]
        passes.append(times)
    sift_s = sum(t["bare"] for t in passes)
    our_extract_s = sum(t["extract"] for t in passes)
    add_s = sum(t["add"] for t in passes)
    timed_images = len(queries) * len(passes)
    ms = lambda values: 1000 * float(np.mean(values))  # noqa: E731
    return {
        "images": n_images, "queries": len(queries), "n_words": index.n_words,
        "method": args.method, "n_probe": index.vocabulary.n_probe,
        "probe_ratio": index.vocabulary.probe_ratio,
        "descriptors_per_image": n_descriptors / n_images,
        "extract_ms": ms(extract_s),
        "assign_ms": ms(assign_s), "assign_exact_ms": ms(exact_s),
        "assign_two_ms": ms(two_s),
        "agreement": agree / max(1, total),
        "score_ms": ms(score_s), "score_ms_p95": 1000 * float(np.percentile(score_s, 95)),
        "rerank_ms": ms(rerank_s),
        "rerank_ms_p95": 1000 * float(np.percentile(rerank_s, 95)),
        "ransac_ms": ms(ransac_s),
        "ransac_ms_p95": 1000 * float(np.percentile(ransac_s, 95)),
        "bytes_per_image": disk / n_images, "disk_mb": disk / 2**20,
        "build_s": build_s,
        "add_passes": len(passes),
        "add_ms": 1000 * add_s / timed_images, "bare_sift_ms": 1000 * sift_s / timed_images,
        "add_over_sift": add_s / sift_s,
        "add_over_sift_per_pass": [t["add"] / t["bare"] for t in passes],
        "add_extract_ms": 1000 * our_extract_s / timed_images,
        "extract_over_sift": our_extract_s / sift_s,
        "add_over_extract": add_s / our_extract_s,
        "query_ms": ms(query_s), "query_extract_ms": ms(own_extract_s),
        "query_over_extract_ms": ms(query_s) - ms(own_extract_s),
        "phone_photos": len(photos), "max_side": extractor.max_side,
        "phone_decode_ms": 1000 * float(np.median(decode_s)),
        "phone_query_ms": 1000 * float(np.median(phone_s)),
        "phone_over_decode": float(np.median(np.array(phone_s) / np.array(decode_s))),
        "phone_extract_ms": 1000 * float(np.median(phone_extract_s)),
        "phone_extract_over_decode": float(np.median(np.array(phone_extract_s)
                                                     / np.array(decode_s))),
        "phone_keypoints": float(np.median(phone_keypoints)),
        "phone_sift_alone_ms": 1000 * float(np.median(sift_alone_s)),
        "phone_sift_alone_over_decode": float(np.median(np.array(sift_alone_s)
                                                        / np.array(decode_s))),
        "add_images_per_s_per_core": timed_images / add_s,
        "million_hours_per_core": 1e6 * add_s / timed_images / 3600,
    }


def command(args) -> str:
    return (f"python benchmarks/speed.py --images {args.images} --queries "
            f"{args.queries} --n-words {args.n_words} --method {args.method} "
            + ("" if args.n_probe is None else f"--n-probe {args.n_probe} ")
            + f"--add-passes {args.add_passes} --seed {args.seed}")


def report(r: dict, args) -> str:
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    return "\n".join([
        "# Speed and size of each stage",
        "",
        f"Command: `{command(args)}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, shared with other work; date: {date.today()}",
        "",
        f"Index: {r['images']} Caltech-101 images (fixed random sample, seed "
        f"{args.seed}), {r['n_words']} words, {r['method']}, "
        f"{r['descriptors_per_image']:.0f} descriptors per image. Stage times are "
        f"means over {r['queries']} held-out query images, one at a time.",
        "",
        "| stage | measured | target | met |",
        "|---|---|---|---|",
        f"| feature extraction | {r['extract_ms']:.1f} ms/image | | |",
        f"| word assignment, approximate (n_probe={r['n_probe']}, probe_ratio="
        f"{r['probe_ratio']}) | "
        f"{r['assign_ms']:.1f} ms/image | < extraction | "
        f"{ok(r['assign_ms'] < r['extract_ms'])} |",
        f"| word assignment with the second word (multiple assignment, queries) | "
        f"{r['assign_two_ms']:.1f} ms/image | | |",
        f"| word assignment, exact (for comparison) | {r['assign_exact_ms']:.1f} "
        "ms/image | | |",
        f"| agreement of approximate with exact nearest centre | "
        f"{100 * r['agreement']:.1f}% of descriptors | >= 90% | "
        f"{ok(r['agreement'] >= 0.9)} |",
        f"| query scoring (tf-idf, sparse cosine, top-{args.shortlist}) | "
        f"{r['score_ms']:.2f} ms (p95 {r['score_ms_p95']:.2f}) | < 2 ms | "
        f"{ok(r['score_ms'] < 2)} |",
        f"| verification of {args.shortlist} candidates, keypoint shapes (default) | "
        f"{r['rerank_ms']:.1f} ms (p95 {r['rerank_ms_p95']:.1f}) | < 100 ms | "
        f"{ok(r['rerank_ms'] < 100)} |",
        f"| verification of {args.shortlist} candidates, RANSAC | "
        f"{r['ransac_ms']:.1f} ms (p95 {r['ransac_ms_p95']:.1f}) | < 100 ms | "
        f"{ok(r['ransac_ms'] < 100)} |",
        f"| index on disk | {r['bytes_per_image'] / 1024:.1f} KiB/image "
        f"({r['disk_mb']:.1f} MiB in all, vocabulary included) | | |",
        f"| build (extract, train, index) | {r['build_s']:.0f} s | | |",
        "",
        "## Against the features themselves (issue 22), one thread",
        "",
        "| measured | value | target | met |",
        "|---|---|---|---|",
        f"| add / bare OpenCV SIFT, same {r['queries']} images, "
        f"{r['add_passes']} passes | "
        f"{r['add_over_sift']:.2f}x ({r['add_ms']:.1f} / {r['bare_sift_ms']:.1f} ms "
        f"per image) | <= 1.15x | {ok(r['add_over_sift'] <= 1.15)} |",
        "| the same, each pass | "
        + ", ".join(f"{v:.3f}x" for v in r["add_over_sift_per_pass"]) + " | | |",
        f"| the same images: our extraction alone (checked read, thumbnail, keypoint "
        f"budget over the image, detection again where few are found) / bare SIFT | "
        f"{r['extract_over_sift']:.2f}x ({r['add_extract_ms']:.1f} ms) | | |",
        f"| the same images: add / our extraction alone (word assignment, indexing) | "
        f"{r['add_over_extract']:.2f}x (+{r['add_ms'] - r['add_extract_ms']:.1f} ms) "
        "| | |",
        f"| query (k=10, no re-rank) over its own extraction | "
        f"+{r['query_over_extract_ms']:.1f} ms ({r['query_ms']:.1f} / "
        f"{r['query_extract_ms']:.1f} ms) | <= +5 ms | "
        f"{ok(r['query_over_extract_ms'] <= 5)} |",
        f"| 10-megapixel phone photo ({PHONE[0]} x {PHONE[1]} JPEG), query with "
        f"re-rank 100 / OpenCV's whole decode (median of {r['phone_photos']}) | "
        f"{r['phone_over_decode']:.2f}x ({r['phone_query_ms']:.0f} / "
        f"{r['phone_decode_ms']:.0f} ms) | <= 2.0x | "
        f"{ok(r['phone_over_decode'] <= 2.0)} |",
        f"| the same photos: extraction alone (reduced decode, resize, SIFT; "
        f"median {r['phone_keypoints']:.0f} keypoints) / whole decode | "
        f"{r['phone_extract_over_decode']:.2f}x ({r['phone_extract_ms']:.0f} ms) | "
        "| |",
        f"| the same photos: OpenCV's SIFT alone on the {r['max_side']}-pixel image "
        "the extractor sees (the floor) / whole decode | "
        f"{r['phone_sift_alone_over_decode']:.2f}x ({r['phone_sift_alone_ms']:.0f} ms)"
        " | | |",
        f"| adding, images per second per core | "
        f"{r['add_images_per_s_per_core']:.1f} | | |",
        f"| a million images like these, one core | "
        f"{r['million_hours_per_core']:.1f} hours (/ cores with n_jobs) | | |",
        "",
        "Times are wall-clock on a shared machine: compare numbers within one run.",
        "",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech101"),
                        help="folder holding 101_ObjectCategories (default: %(default)s)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--method", default="sift")
    parser.add_argument("--n-probe", type=int, default=None,
                        help="fewest coarse cells probed (default: the library's)")
    parser.add_argument("--shortlist", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smvs", type=Path,
                        default=Path("../shared/data/smvs_dvd_covers_half"),
                        help="SMVS phone photos to upscale (default: %(default)s)")
    parser.add_argument("--phone-photos", type=int, default=20)
    parser.add_argument("--add-passes", type=int, default=3,
                        help="passes over the images timing adding against bare "
                        "SIFT (default: %(default)s)")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "speed.md")
    args = parser.parse_args()
    with thread_budget(1):
        results = run(args)
    text = report(results, args)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps(
        {"command": command(args), "date": str(date.today()), **results}, indent=1))


if __name__ == "__main__":
    main()
