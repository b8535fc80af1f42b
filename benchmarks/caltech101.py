"""Caltech-101 category retrieval: classical bag of words beside a CNN baseline.

Protocol (as the ResNet-50 anchor of "Practical Deep Learning for Cloud, Mobile and
Edge", ch. 4): the 8,677 images of the 101 classes (BACKGROUND_Google left out),
leave-one-out (every image queries all the others, itself excluded), relevant =
same class. Reports mAP over full rankings, P@4, P@10, per-class mAP, build time,
ms per query and index memory for:

* SIFT, RootSIFT and ORB bag of words (detected keypoints) at two vocabulary sizes;
* dense RootSIFT with power-law normalisation and a spatial pyramid, and an
  ablation of those levers;
* geometric re-ranking of the top 50 (the library's default verification), on a
  fixed-seed sample of queries, beside the same sample without it;
* EfficientNet-Lite0 global descriptors (cv2.dnn): exact cosine kNN, Annoy
  (cv2.ANNIndex) and PCA to 128 dimensions.

Writes caltech101.json, caltech101.md and PNG plots to --output (benchmarks/results;
quick mode adds a ``_quick`` suffix).

    python benchmarks/caltech101.py --data ../shared/data       # full run
    python benchmarks/caltech101.py --data ../shared/data --quick   # 10 classes

``--data`` (or $CVSEARCH_DATA) is a folder holding ``caltech101/101_ObjectCategories``
(or ``101_ObjectCategories``); if the images are not there they are downloaded
from CaltechDATA into it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from cvsearch import FeatureExtractor, Index
from cvsearch.datasets import caltech101
from cvsearch.evaluation import average_precision, per_class_map, precision_recall_curve

QUICK_CLASSES = ["accordion", "bonsai", "brain", "butterfly", "chair", "crab",
                 "dolphin", "ewer", "laptop", "sunflower"]
GRID_QUERIES = [("chair", 3), ("sunflower", 5), ("laptop", 2)]  # (class, n-th image)
TSNE_CLASSES = ["airplanes", "bonsai", "car_side", "chair", "Faces_easy", "ketch",
                "laptop", "Leopards", "Motorbikes", "sunflower", "watch", "wild_cat"]

#: The bag-of-words rows use the word counts as they are (the library's default
#: damps them for instance search; see benchmarks/results/instance.md).
CATEGORY_TF_POWER = 1.0
#: The sparse local features compared (``--features``), each at every vocabulary size.
CLASSICAL = ("sift", "rootsift", "orb")


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def progress_printer(label):
    """A progress hook that prints every 10%."""
    state = {"last": -1}

    def hook(stage, done, total):
        tenth = 10 * done // max(1, total)
        if tenth != state["last"]:
            state["last"] = tenth
            log(f"  {label} {stage}: {done}/{total}")
    return hook


# ----------------------------------------------------------------- evaluation
def leave_one_out(score_rows, labels: np.ndarray, chunk: int = 1000) -> dict:
    """Metrics of every image querying all the others.

    Parameters
    ----------
    score_rows : callable
        ``score_rows(start, stop)`` -> ndarray (stop - start, n) of similarities of
        queries start..stop-1 with all n images.
    labels : ndarray of shape (n,)

    Returns
    -------
    dict with ``ap`` (n,), ``p4``, ``p10`` (n,) and the PR curve
    """
    n = len(labels)
    class_sizes = np.bincount(labels)
    ap, p4, p10, curves = [], [], [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores = np.asarray(score_rows(start, stop), np.float32)
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        # Stable sort: ties go to the smaller id, as Index.query breaks them.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
        relevant = labels[order] == labels[start:stop, None]
        n_relevant = class_sizes[labels[start:stop]] - 1
        ap.append(average_precision(relevant, n_relevant))
        p4.append(relevant[:, :4].mean(axis=1))
        p10.append(relevant[:, :10].mean(axis=1))
        curves.append(precision_recall_curve(relevant, n_relevant)[1] * (stop - start))
    return {"ap": np.concatenate(ap), "p4": np.concatenate(p4),
            "p10": np.concatenate(p10), "pr": np.sum(curves, axis=0) / n}


def ranked_metrics(ranked_ids: np.ndarray, queries: np.ndarray, labels: np.ndarray):
    """AP, P@4 and P@10 of given rankings (query itself already left out)."""
    relevant = labels[ranked_ids] == labels[queries, None]
    n_relevant = np.bincount(labels)[labels[queries]] - 1
    return (average_precision(relevant, n_relevant), relevant[:, :4].mean(axis=1),
            relevant[:, :10].mean(axis=1))


def sparse_rows(vectors):
    """``score_rows`` for L2-normalised sparse rows: dense BLAS when it fits."""
    if vectors.shape[0] * vectors.shape[1] * 4 <= 3 * 2**30:
        dense = vectors.toarray()
        return lambda a, b: dense[a:b] @ dense.T
    transposed = vectors.T.tocsr()
    return lambda a, b: (vectors[a:b] @ transposed).toarray()


def summary(metrics: dict, labels, classes) -> dict:
    per_class = per_class_map(metrics["ap"], labels)
    return {"mAP": round(float(metrics["ap"].mean()), 4),
            "P@4": round(float(metrics["p4"].mean()), 4),
            "P@10": round(float(metrics["p10"].mean()), 4),
            "per_class_mAP": {classes[c]: round(v, 4) for c, v in per_class.items()},
            "pr_curve": [round(float(v), 4) for v in metrics["pr"]]}


def time_queries(function, items, repeat_max: int) -> float:
    """Mean ms of ``function(item)`` over the first ``repeat_max`` items."""
    items = items[:repeat_max]
    function(items[0])  # warm up
    start = time.perf_counter()
    for item in items:
        function(item)
    return 1000 * (time.perf_counter() - start) / len(items)


# ------------------------------------------------------------------ classical
def extract_all(extractor, paths, n_jobs):
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs, batch_size=32)(
        delayed(extractor.extract)(p) for p in paths)


def evaluate_bow(name, index, data, args, results, indexes, start, **details):
    """Leave-one-out metrics, query time and memory of one bag-of-words index."""
    metrics = leave_one_out(sparse_rows(index.vectors()), data.labels)
    entry = summary(metrics, data.labels, data.classes)
    entry.update(kind="bag of words", n_words=index.n_words, **details,
                 ms_per_query=round(time_queries(
                     lambda p: index.query(p, k=10),
                     [data.paths[i] for i in args.timing_ids], args.timing_n), 1),
                 memory_mb=round(index.nbytes / 2**20, 1))
    results[name] = entry
    indexes[name] = index
    log(f"{name}: mAP {entry['mAP']:.4f} P@4 {entry['P@4']:.4f} "
        f"({time.perf_counter() - start:.0f} s)")
    return entry


def run_classical(data, args, results, indexes):
    paths = data.paths
    for method in args.features:
        extractor = FeatureExtractor(method)
        start = time.perf_counter()
        features = extract_all(extractor, paths, args.n_jobs)
        extract_s = time.perf_counter() - start
        log(f"{method}: extracted {len(paths)} images in {extract_s:.0f} s, "
            f"{np.mean([len(f.descriptors) for f in features]):.0f} per image")
        for n_words in args.vocab_sizes:
            name = f"{method}-{n_words}"
            start = time.perf_counter()
            index = Index.build(features, extractor, n_words, names=paths,
                                random_state=args.seed, n_jobs=args.n_jobs,
                                tf_power=CATEGORY_TF_POWER)
            build_s = time.perf_counter() - start
            evaluate_bow(name, index, data, args, results, indexes, start,
                         features=method, build_s=round(extract_s + build_s, 1))
        del features


def run_dense(data, args, results, indexes):
    extractor = FeatureExtractor("rootsift", max_side=300, dense_step=8)
    start = time.perf_counter()
    base = Index.build(data.paths, extractor, args.dense_words, random_state=args.seed,
                       n_jobs=args.n_jobs, progress=progress_printer("dense"),
                       tf_power=CATEGORY_TF_POWER)
    build_s = time.perf_counter() - start
    log(f"dense: built in {build_s:.0f} s")
    best = None
    for power, levels in [(1.0, 0), (0.5, 0), (1.0, 2), (0.5, 1), (0.5, 2)]:
        index = base.reweighted(power=power, pyramid_levels=levels)
        name = f"dense-rootsift-{args.dense_words}-p{power:g}-L{levels}"
        start = time.perf_counter()
        entry = evaluate_bow(name, index, data, args, results, indexes, start,
                             features="dense rootsift (step 8, sizes 16/24/32, max "
                             "side 300)", power=power, pyramid_levels=levels,
                             build_s=round(build_s, 1))
        if best is None or entry["mAP"] > results[best]["mAP"]:
            best = name
    return best


def run_rerank(data, args, results, indexes, names):
    """Re-rank the top 50 of a fixed sample of leave-one-out queries."""
    labels = data.labels
    sample = args.rerank_ids
    rows = []
    for name in names:
        index = indexes[name]
        vectors = index.vectors()
        scores = (vectors[sample] @ vectors.T).toarray()
        scores[np.arange(len(sample)), sample] = -np.inf
        bow = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
        reranked = bow.copy()
        start = time.perf_counter()
        for row, query in enumerate(sample):
            _, ids = index.similar(int(query), k=args.shortlist, rerank=args.shortlist)
            # the re-ranked short-list, then the rest of the bag-of-words ranking:
            # the index's and this matrix product's scores may round apart, and
            # order near-ties at the end of the short-list differently
            rest = bow[row][~np.isin(bow[row], ids)]
            reranked[row] = np.concatenate([ids, rest])
        ms = 1000 * (time.perf_counter() - start) / len(sample)
        entry = {"base": name, "queries": len(sample), "shortlist": args.shortlist,
                 "ms_rerank_per_query": round(ms, 1)}
        for key, ranking in (("bow", bow), ("rerank", reranked)):
            ap, p4, p10 = ranked_metrics(ranking, sample, labels)
            entry[key] = {"mAP": round(float(ap.mean()), 4),
                          "P@4": round(float(p4.mean()), 4),
                          "P@10": round(float(p10.mean()), 4)}
        rows.append(entry)
        log(f"rerank {name}: {entry['bow']} -> {entry['rerank']}")
    results["rerank_sample"] = rows


# ------------------------------------------------------------------------ CNN
def run_cnn(data, args, results):
    import cv2
    from sklearn.decomposition import PCA

    from cvsearch.cnn import CNNDescriptor

    labels, classes, paths = data.labels, data.classes, data.paths
    cnn = CNNDescriptor(args.cnn_model, input_size=args.cnn_input_size,
                        resize=args.cnn_resize, mean=args.cnn_mean, std=args.cnn_std,
                        rgb=not args.cnn_bgr)
    start = time.perf_counter()
    descriptors = cnn.describe_many(paths, progress=None)
    describe_s = time.perf_counter() - start
    log(f"cnn: described {len(paths)} images in {describe_s:.0f} s")
    ms_describe = 1000 * describe_s / len(paths)
    queries = descriptors[args.timing_ids[:args.timing_n]]

    def exact_ms(vectors, query_vectors):
        start = time.perf_counter()
        for q in query_vectors:
            scores = vectors @ q
            np.argpartition(-scores, 10)[:10]
        return 1000 * (time.perf_counter() - start) / len(query_vectors)

    exact = leave_one_out(lambda a, b: descriptors[a:b] @ descriptors.T, labels)
    entry = summary(exact, labels, classes)
    search_exact = exact_ms(descriptors, queries)
    entry.update(kind="cnn", search="exact cosine", dim=descriptors.shape[1],
                 build_s=round(describe_s, 1),
                 ms_per_query=round(ms_describe + search_exact, 1),
                 ms_search=round(search_exact, 3),
                 memory_mb=round(descriptors.nbytes / 2**20, 1))
    results["cnn-exact"] = entry
    log(f"cnn-exact: mAP {entry['mAP']:.4f} P@4 {entry['P@4']:.4f}")

    # Annoy (built into OpenCV 5). It returns the top `knn` only; the relevant
    # images it does not return count as never found, so its mAP is a lower bound.
    start = time.perf_counter()
    annoy = cv2.ANNIndex_create(descriptors.shape[1], cv2.ANNIndex_DIST_ANGULAR)
    annoy.setSeed(args.seed)
    annoy.addItems(descriptors)
    annoy.build(args.annoy_trees)
    annoy_build = time.perf_counter() - start
    knn = min(len(paths), args.annoy_knn + 1)
    ranked = np.empty((len(paths), knn - 1), np.int64)
    start = time.perf_counter()
    for s in range(0, len(paths), 1000):
        ids, _ = annoy.knnSearch(descriptors[s:s + 1000], knn)
        for row, query in enumerate(range(s, min(len(paths), s + 1000))):
            found = ids[row][ids[row] != query][:knn - 1]
            ranked[query, :len(found)] = found
            ranked[query, len(found):] = -1
    annoy_list_ms = 1000 * (time.perf_counter() - start) / len(paths)
    # Speed as users search: the top 10 of one query at a time.
    start = time.perf_counter()
    for q in queries:
        annoy.knnSearch(q[None], 11)
    annoy_ms = 1000 * (time.perf_counter() - start) / len(queries)
    valid = ranked >= 0
    relevant = valid & (labels[np.where(valid, ranked, 0)] == labels[:, None])
    n_relevant = np.bincount(labels)[labels] - 1
    annoy_metrics = {"ap": average_precision(relevant, n_relevant),
                     "p4": relevant[:, :4].mean(axis=1),
                     "p10": relevant[:, :10].mean(axis=1),
                     "pr": precision_recall_curve(relevant, n_relevant)[1]}
    entry = summary(annoy_metrics, labels, classes)
    entry.update(kind="cnn", search=f"Annoy ({args.annoy_trees} trees, top "
                 f"{knn - 1})", dim=descriptors.shape[1],
                 build_s=round(describe_s + annoy_build, 1),
                 ms_per_query=round(ms_describe + annoy_ms, 1),
                 ms_search=round(annoy_ms, 3),
                 ms_search_full_list=round(annoy_list_ms, 3),
                 speedup_vs_exact=round(search_exact / annoy_ms, 2),
                 share_of_exact_mAP=round(entry["mAP"] / results["cnn-exact"]["mAP"], 4),
                 memory_mb=round(descriptors.nbytes / 2**20, 1))
    results["cnn-annoy"] = entry
    log(f"cnn-annoy: mAP {entry['mAP']:.4f} ({entry['share_of_exact_mAP']:.3f} of "
        f"exact), search {annoy_ms:.3f} ms vs {search_exact:.3f} ms")

    # PCA to 128 dimensions, re-normalised, exact cosine.
    start = time.perf_counter()
    pca = PCA(n_components=min(128, len(paths) - 1), random_state=args.seed)
    reduced = pca.fit_transform(descriptors).astype(np.float32)
    reduced /= np.linalg.norm(reduced, axis=1, keepdims=True) + 1e-12
    pca_s = time.perf_counter() - start
    pca_metrics = leave_one_out(lambda a, b: reduced[a:b] @ reduced.T, labels)
    entry = summary(pca_metrics, labels, classes)
    search_pca = exact_ms(reduced, reduced[args.timing_ids[:args.timing_n]])
    entry.update(kind="cnn", search="PCA-128, exact cosine", dim=reduced.shape[1],
                 build_s=round(describe_s + pca_s, 1),
                 ms_per_query=round(ms_describe + search_pca, 1),
                 ms_search=round(search_pca, 3),
                 speedup_vs_exact=round(search_exact / search_pca, 2),
                 share_of_exact_mAP=round(entry["mAP"] / results["cnn-exact"]["mAP"], 4),
                 memory_mb=round(reduced.nbytes / 2**20, 1))
    results["cnn-pca128"] = entry
    log(f"cnn-pca128: mAP {entry['mAP']:.4f} ({entry['share_of_exact_mAP']:.3f} of exact)")
    return descriptors


# ---------------------------------------------------------------------- plots
def plot_pr(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for name, entry in results.items():
        if isinstance(entry, dict) and "pr_curve" in entry:
            curve = entry["pr_curve"]
            style = "-" if entry["kind"] == "cnn" else "--"
            ax.plot(np.linspace(0, 1, len(curve)), curve, style,
                    label=f"{name} (mAP {entry['mAP']:.3f})")
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1),
           title="Caltech-101 leave-one-out: precision-recall, mean over queries")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(classical: dict, cnn: dict, names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(cnn["per_class_mAP"])
    x = np.array([classical["per_class_mAP"][c] for c in classes])
    y = np.array([cnn["per_class_mAP"][c] for c in classes])
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.scatter(x, y, s=14)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for i in np.argsort(x - y)[-6:].tolist() + np.argsort(y - x)[-4:].tolist():
        ax.annotate(classes[i], (x[i], y[i]), fontsize=7)
    ax.set(xlabel=f"{names[0]}: per-class mAP", ylabel=f"{names[1]}: per-class mAP",
           xlim=(0, 1), ylim=(0, 1),
           title="Per-class mAP: best classical vs CNN (above the line: CNN better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(data, bow_index, cnn_descriptors, classes_shown, seed, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.manifold import TSNE

    wanted = [data.classes.index(c) for c in classes_shown if c in data.classes]
    chosen = np.flatnonzero(np.isin(data.labels, wanted))
    rng = np.random.default_rng(seed)
    # At most 60 images per class keeps the map legible and quick.
    chosen = np.concatenate([rng.permutation(chosen[data.labels[chosen] == c])[:60]
                             for c in wanted])
    bow = bow_index.vectors()[chosen]
    spaces = {
        "bag of words (best classical)": TruncatedSVD(50, random_state=seed)
        .fit_transform(bow),
        "CNN": PCA(50, random_state=seed)
        .fit_transform(cnn_descriptors[chosen]),
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, (title, values) in zip(axes, spaces.items()):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        xy = TSNE(2, init="pca", random_state=seed, perplexity=30).fit_transform(values)
        for c in wanted:
            mask = data.labels[chosen] == c
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, label=data.classes[c])
        ax.set_title(f"t-SNE: {title}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def result_grids(data, bow_index, bow_name, cnn_descriptors, output, suffix):
    import cv2

    from cvsearch.pictures import results_grid

    written = []
    vectors = bow_index.vectors()
    for cls, nth in GRID_QUERIES:
        if cls not in data.classes:
            continue
        query = int(np.flatnonzero(data.labels == data.classes.index(cls))[nth])
        _, bow_ids = bow_index.similar(query, k=5)
        scores = cnn_descriptors @ cnn_descriptors[query]
        scores[query] = -np.inf
        cnn_ids = np.argsort(-scores, kind="stable")[:5]
        rows = []
        for title, ids, values in ((bow_name, bow_ids, None),
                                   ("CNN exact", cnn_ids, scores[cnn_ids])):
            if values is None:
                values = (vectors[ids] @ vectors[query].T).toarray().ravel()
            rows.append(results_grid(
                data.paths[query], [data.paths[i] for i in ids], scores=values,
                names=[f"{data.classes[data.labels[i]]}/{Path(data.paths[i]).name}"
                       for i in ids],
                relevant=data.labels[ids] == data.labels[query], tile=150,
                title=f"query: {'CNN' if title.startswith('CNN') else 'dense BoW'}"))
        width = max(r.shape[1] for r in rows)
        picture = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)),
                                    constant_values=255) for r in rows])
        path = output / f"caltech101{suffix}_grid_{cls}.png"
        cv2.imwrite(str(path), picture)
        written.append(path.name)
    return written


# --------------------------------------------------------------------- report
def markdown(results: dict, meta: dict, plots: list) -> str:
    lines = [f"# Caltech-101 retrieval{' (quick mode)' if meta['quick'] else ''}", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; date: {meta['date']}; total run time "
             f"{meta['total_s'] / 60:.1f} min.  ",
             f"Protocol: {meta['n_images']} images of {meta['n_classes']} classes "
             "(BACKGROUND_Google left out); every image queries all the others "
             "(itself left out); relevant = same class. mAP over full rankings.", "",
             "Build time includes feature extraction (the plain bag-of-words rows "
             "extract once per feature type and count it in both vocabulary sizes). "
             "ms/query is a whole query from the image file (extraction, "
             "assignment, scoring), mean over "
             f"{meta['timing_n']} queries. Times are wall-clock on a shared machine; "
             "compare them within this run.", "",
             "| method | words / dim | mAP | P@4 | P@10 | build s | ms/query | "
             "memory MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, e in results.items():
        if not isinstance(e, dict) or "mAP" not in e:
            continue
        size = e.get("n_words", e.get("dim"))
        lines.append(f"| {name} | {size} | {e['mAP']:.4f} | {e['P@4']:.4f} | "
                     f"{e['P@10']:.4f} | {e['build_s']} | {e['ms_per_query']} | "
                     f"{e['memory_mb']} |")
    lines += ["", "Dense rows: dense RootSIFT (grid step 8 px, patches 16/24/32 px, "
              "images at most 300 px), `pN` = power-law exponent, `LN` = spatial "
              "pyramid levels; all share one build (`Index.reweighted`).", ""]
    if results.get("rerank_sample"):
        lines += ["## Geometric re-ranking (sample of queries)", "",
                  f"A fixed-seed sample (seed {meta['seed']}) of leave-one-out queries; "
                  "the top 50 are verified with the library's defaults (transforms from "
                  "keypoint shapes; RANSAC where dense features have none), the rest keep "
                  "their bag-of-words order.", "",
                  "| base | queries | mAP BoW | mAP re-ranked | P@4 BoW | P@4 re-ranked "
                  "| P@10 BoW | P@10 re-ranked | ms re-rank/query |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["rerank_sample"]:
            lines.append(f"| {r['base']} | {r['queries']} | {r['bow']['mAP']:.4f} | "
                         f"{r['rerank']['mAP']:.4f} | {r['bow']['P@4']:.4f} | "
                         f"{r['rerank']['P@4']:.4f} | {r['bow']['P@10']:.4f} | "
                         f"{r['rerank']['P@10']:.4f} | {r['ms_rerank_per_query']} |")
        lines.append("")
    if "cnn-exact" in results:
        lines += ["## CNN search: exact, Annoy, PCA-128", "",
                  "| search | mAP | share of exact mAP | search ms/query | speed-up |",
                  "|---|---|---|---|---|"]
        for name in ("cnn-exact", "cnn-annoy", "cnn-pca128"):
            e = results[name]
            lines.append(f"| {e['search']} | {e['mAP']:.4f} | "
                         f"{e.get('share_of_exact_mAP', 1.0):.3f} | {e['ms_search']} | "
                         f"{e.get('speedup_vs_exact', 1.0)}x |")
        lines += ["", "Search ms: the top 10 of one query against all images, "
                  "descriptor given. Annoy's mAP is measured on its top "
                  f"{results['cnn-annoy']['search'].split('top ')[-1].rstrip(')')} "
                  "list per query, counting relevant images beyond it as never found "
                  "(a lower bound).", ""]
    lines += ["## Pictures", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding (caltech101/)101_ObjectCategories; the "
                             "archive is downloaded there if absent (default: "
                             "$CVSEARCH_DATA, else ~/.cache/cvsearch)")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {len(QUICK_CLASSES)} classes and small vocabularies")
    parser.add_argument("--n-jobs", type=int, default=-1,
                        help="worker processes for feature extraction (default: "
                             "%(default)s, all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN baseline")
    parser.add_argument("--features", nargs="+", choices=CLASSICAL, default=list(CLASSICAL),
                        help="the sparse local features to compare, each with every "
                             "vocabulary size (default: all; the dense rows always run)")
    parser.add_argument("--cnn-model", type=Path, default=None,
                        help="an ONNX model to use instead of EfficientNet-Lite0, e.g. "
                             "a ResNet-50 you exported (its pooled output is the "
                             "descriptor)")
    parser.add_argument("--cnn-input-size", type=int, default=224)
    parser.add_argument("--cnn-resize", type=int, default=256,
                        help="shorter side before the centre crop")
    parser.add_argument("--cnn-mean", type=float, nargs=3, default=[127.0] * 3,
                        help="per-channel mean, 0-255 units, model channel order "
                             "(ImageNet torchvision models: 123.7 116.3 103.5)")
    parser.add_argument("--cnn-std", type=float, nargs=3, default=[128.0] * 3,
                        help="per-channel std (torchvision models: 58.4 57.1 57.4)")
    parser.add_argument("--cnn-bgr", action="store_true",
                        help="feed BGR instead of RGB")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def download_progress(done, total):
        if total and done % (10 * 2**20) < 2**20:
            log(f"downloading Caltech-101: {done / 2**20:.0f} / {total / 2**20:.0f} MiB")

    data = caltech101(args.data, progress=download_progress)
    if args.quick:
        keep = np.flatnonzero(np.isin(np.array(data.classes)[data.labels], QUICK_CLASSES))
        labels = np.unique(data.labels[keep], return_inverse=True)[1]
        data = type(data)([data.paths[i] for i in keep], labels,
                          [c for c in data.classes if c in QUICK_CLASSES])
    args.vocab_sizes = (200, 1000) if args.quick else (1000, 10_000)
    args.dense_words = 1000
    args.shortlist = 50
    args.annoy_trees, args.annoy_knn = 20, (len(data.paths) - 1 if args.quick else 2000)
    rng = np.random.default_rng(args.seed)
    args.rerank_ids = np.sort(rng.choice(len(data.paths), 60 if args.quick else 300,
                                         replace=False))
    args.timing_ids = rng.choice(len(data.paths), 100, replace=False)
    args.timing_n = 20 if args.quick else 100
    log(f"{len(data.paths)} images, {len(data.classes)} classes")

    results, indexes = {}, {}
    run_classical(data, args, results, indexes)
    best_dense = run_dense(data, args, results, indexes)
    best_plain = max((n for n in results if not n.startswith("dense")),
                     key=lambda n: results[n]["mAP"])
    run_rerank(data, args, results, indexes, [best_plain, best_dense])
    descriptors = None if args.no_cnn else run_cnn(data, args, results)

    suffix = "_quick" if args.quick else ""
    args.output.mkdir(parents=True, exist_ok=True)
    plots = []
    plot_pr(results, args.output / f"caltech101{suffix}_pr.png")
    plots.append(f"caltech101{suffix}_pr.png")
    if descriptors is not None:
        plot_per_class(results[best_dense], results["cnn-exact"],
                       [best_dense, "cnn-exact"],
                       args.output / f"caltech101{suffix}_per_class.png")
        plots.append(f"caltech101{suffix}_per_class.png")
        plot_tsne(data, indexes[best_dense], descriptors,
                  QUICK_CLASSES if args.quick else TSNE_CLASSES, args.seed,
                  args.output / f"caltech101{suffix}_tsne.png")
        plots.append(f"caltech101{suffix}_tsne.png")
        plots += result_grids(data, indexes[best_dense], best_dense, descriptors,
                              args.output, suffix)

    command = "python benchmarks/caltech101.py"
    if args.data is not None:
        command += f" --data {args.data}"
    if args.quick:
        command += " --quick"
    if args.no_cnn:
        command += " --no-cnn"
    if list(args.features) != list(CLASSICAL):
        command += " --features " + " ".join(args.features)
    meta = {"command": command + f" --seed {args.seed}", "quick": args.quick,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}, n_jobs={args.n_jobs}",
            "date": str(date.today()), "seed": args.seed,
            "n_images": len(data.paths), "n_classes": len(data.classes),
            "timing_n": args.timing_n, "total_s": time.perf_counter() - started,
            "best_classical": best_dense}
    (args.output / f"caltech101{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1))
    (args.output / f"caltech101{suffix}.md").write_text(markdown(results, meta, plots))
    log(f"done in {meta['total_s'] / 60:.1f} min; wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
