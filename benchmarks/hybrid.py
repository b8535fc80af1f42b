"""Hybrid search: a CNN short-list verified with local features, against each alone.

One database, two indexes of the same images: the 50 DVD covers of
``smvs_dvd_covers_half/Reference`` and all 8,677 Caltech-101 images, in a
``GlobalIndex`` (EfficientNet-Lite0 descriptors, exact search) and an ``Index``
(the library's defaults: RootSIFT, 20,000 words trained on the database).

* Instance search: the 200 phone photos of the covers. Top-1 and top-10 of the
  bag of words verified (the library's instance settings, re-rank 100), of the
  CNN alone, and of ``cvsearch.hybrid.verified_query`` (the CNN's best
  ``--rerank`` verified by the local index).
* Category search: ``--category-queries`` Caltech-101 images drawn with a fixed
  seed, each leaving itself out; relevant = same class. P@4, P@10 and mAP over
  the top 100 of the CNN alone and of the hybrid.

ms per query: the search alone, with the query's descriptor and features given
(extraction is reported on its own line), as the median over the queries.

    python benchmarks/hybrid.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import describe_all, run_metadata, timed, write_results
from instance import distractors, smvs

from cvsearch import FeatureExtractor, GlobalIndex, Index
from cvsearch.cnn import CNNDescriptor
from cvsearch.datasets import caltech101
from cvsearch.evaluation import average_precision
from cvsearch.hybrid import verified_query

RESULTS = Path(__file__).parent / "results"


def median_ms(function, items):
    """Results of ``function(item)`` for each item, and the median ms per call."""
    out, times = [], []
    for item in items:
        start = time.perf_counter()
        out.append(function(item))
        times.append(time.perf_counter() - start)
    return out, 1000 * float(np.median(times))


def instance_rows(args, global_index, local_index, references, queries, truth):
    descriptors, describe_s = timed(CNNDescriptor().describe_many, queries)
    features, extract_s = timed(lambda: [local_index.extractor.extract(q)
                                         for q in queries])
    n = len(queries)
    extraction = {"cnn_ms": round(1000 * describe_s / n, 1),
                  "local_features_ms": round(1000 * extract_s / n, 1)}
    names = local_index.names
    cover_of = {name: i for i, name in enumerate(references)}

    def found(ranked_names):
        return np.array([cover_of.get(name, -1) for name in ranked_names])

    runs = {
        "bag of words + verification (re-rank 100)": median_ms(
            lambda i: [names[j] for j in local_index.query(features[i], k=10,
                                                           rerank=100)[1]],
            range(n)),
        "CNN alone": median_ms(
            lambda i: [global_index.names[j] for j in
                       global_index.query(descriptors[i], k=10)[1]], range(n)),
    }
    for rerank in args.rerank:
        runs[f"CNN short-list {rerank}, verified"] = median_ms(
            lambda i, r=rerank: [global_index.names[j] for j in verified_query(
                global_index, local_index, queries[i], k=10, rerank=r,
                descriptor=descriptors[i], features=features[i])[1]], range(n))
    rows = []
    for label, (answers, ms) in runs.items():
        ranked = np.array([found(a) for a in answers])
        rows.append({"method": label,
                     "top1": round(float((ranked[:, 0] == truth).mean()), 3),
                     "top10": round(float((ranked == truth[:, None]).any(1).mean()), 3),
                     "ms": round(ms, 1)})
        print("instance", rows[-1], flush=True)
    return rows, extraction


def category_rows(args, global_index, local_index, paths, labels, descriptors):
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(len(paths), args.category_queries, replace=False))
    label_of = dict(zip(paths, labels))
    n_relevant = np.bincount(labels)[labels[chosen]] - 1
    features = [local_index.extractor.extract(paths[i]) for i in chosen]
    length = 100

    def ranked(names_found, own):
        kept = [label_of.get(name, -1) for name in names_found if name != own]
        return np.array((kept + [-1] * length)[:length])

    runs = {"CNN alone": median_ms(
        lambda q: [global_index.names[j] for j in
                   global_index.query(descriptors[chosen[q]], k=length + 1)[1]],
        range(len(chosen)))}
    for rerank in args.rerank:
        runs[f"CNN short-list {rerank}, verified"] = median_ms(
            lambda q, r=rerank: [global_index.names[j] for j in verified_query(
                global_index, local_index, paths[chosen[q]], k=length + 1, rerank=r,
                descriptor=descriptors[chosen[q]], features=features[q])[1]],
            range(len(chosen)))
    rows = []
    for label, (answers, ms) in runs.items():
        got = np.array([ranked(a, paths[i]) for a, i in zip(answers, chosen)])
        relevant = got == labels[chosen][:, None]
        rows.append({"method": label,
                     "P@4": round(float(relevant[:, :4].mean()), 4),
                     "P@10": round(float(relevant[:, :10].mean()), 4),
                     "mAP@100": round(float(average_precision(
                         relevant, np.minimum(n_relevant, length)).mean()), 4),
                     "ms": round(ms, 1)})
        print("category", rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-learned"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--rerank", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--category-queries", type=int, default=500)
    args = parser.parse_args(argv)
    meta = run_metadata("hybrid.py", argv)
    references, queries, truth = smvs(args.data)
    caltech = caltech101(args.data, download=False)
    others = distractors(args.data, None, args.seed)
    labels = np.asarray(caltech.labels)
    paths = references + others
    descriptors = np.concatenate([describe_all(references, args.work),
                                  describe_all(others, args.work)])
    global_index = GlobalIndex()
    global_index.add_descriptors(descriptors, paths)
    local_index, build_s = timed(Index.build, paths, FeatureExtractor("rootsift"),
                                 args.n_words, random_state=args.seed, n_jobs=args.jobs)
    print(f"built the local index of {len(local_index)} images in {build_s:.0f} s",
          flush=True)
    instance, extraction = instance_rows(args, global_index, local_index, references,
                                         queries, truth)
    category = category_rows(args, global_index, local_index, others, labels,
                             descriptors[len(references):])
    results = {**meta, "images": len(paths), "local_build_s": round(build_s),
               "extraction": extraction, "instance": instance, "category": category,
               "args": vars(args) | {"data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "hybrid", results, report(results))


def report(r: dict) -> str:
    e, a = r["extraction"], r["args"]
    lines = [
        "# Hybrid search: a CNN short-list verified with local features", "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        f"One database of {r['images']:,} images (the 50 SMVS DVD covers and all of "
        "Caltech-101) in two indexes: a `GlobalIndex` of EfficientNet-Lite0 "
        "descriptors (exact search) and an `Index` with the library's defaults "
        f"(RootSIFT, {a['n_words']:,} words; built in {r['local_build_s']} s). "
        "ms: the median search time per query with the query's descriptor and "
        f"features given; extracting them costs {e['cnn_ms']} ms (CNN) and "
        f"{e['local_features_ms']} ms (RootSIFT) per phone photo.", "",
        "## Instance search: 200 phone photos of the covers", "",
        "| method | top-1 | top-10 | ms |", "|---|---|---|---|"]
    lines += [f"| {x['method']} | {x['top1']:.3f} | {x['top10']:.3f} | {x['ms']} |"
              for x in r["instance"]]
    lines += [
        "", f"## Category search: {a['category_queries']} Caltech-101 queries", "",
        "Each query leaves itself out; relevant = the same class; mAP over the "
        "top 100 (relevant images beyond it count as not found).", "",
        "| method | P@4 | P@10 | mAP@100 | ms |", "|---|---|---|---|---|"]
    lines += [f"| {x['method']} | {x['P@4']:.4f} | {x['P@10']:.4f} | "
              f"{x['mAP@100']:.4f} | {x['ms']} |" for x in r["category"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
