"""Learned global descriptors on Caltech-101: triplet-loss projections against the
raw CNN descriptor, and approximate against exact search.

Every image is described once by EfficientNet-Lite0 (cvsearch.cnn, cached in
--work). Two fixed splits (--seed):

* seen classes: half of each class's images train the projection; the other half
  are queries and gallery, leave-one-out within them;
* unseen classes: 20 whole classes are held out of training (the projection is
  trained on the training halves of the other 81); leave-one-out within the 20.

Rows: the raw 1,280-d descriptor, PCA-128 (plain and whitened, fitted on the
training images) and triplet projections to 128: linear with the triplet loss
alone (batch-hard, semi-hard), then with the similarity-preserving term, with the
hidden layer, and with both (the library's default). Then exact search against
faiss's HNSW and IVF (``GlobalIndex(search=...)``) on the default projection, at
8,677 images and at 100,000 (the 8,677 repeated with noise, each copy keeping its
class), with ms per query. mAP is over full rankings for the
splits; for exact against approximate both rank their top --list results (a
query's relevant images beyond it count as not found, for both).

    python benchmarks/learned.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import describe_all, run_metadata, timed, write_results

from cvsearch.datasets import caltech101
from cvsearch.evaluation import average_precision, relevance
from cvsearch.global_index import GlobalIndex
from cvsearch.projection import PCAProjection, TripletProjection

RESULTS = Path(__file__).parent / "results"


def leave_one_out(vectors: np.ndarray, labels: np.ndarray) -> dict:
    """mAP and P@4 of every row against all the others, by cosine."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    n_relevant = np.bincount(labels)[labels] - 1
    ap, p4 = [], []
    for start in range(0, len(v), 1000):
        scores = v[start:start + 1000] @ v.T
        rows = np.arange(start, min(start + 1000, len(v)))
        scores[rows - start, rows] = -np.inf
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
        relevant = relevance(ranked, labels[rows], labels)
        ap.append(average_precision(relevant, n_relevant[rows]))
        p4.append(relevant[:, :4].mean(axis=1))
    return {"mAP": round(float(np.concatenate(ap).mean()), 4),
            "P@4": round(float(np.concatenate(p4).mean()), 4)}


def splits(labels: np.ndarray, seed: int, unseen: int):
    """Boolean masks: (train, seen evaluation), and (train without the unseen
    classes, unseen evaluation)."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        train[members[:len(members) // 2]] = True
    held = rng.choice(np.unique(labels), unseen, replace=False)
    in_held = np.isin(labels, held)
    return (train, ~train), (train & ~in_held, in_held)


def methods(args):
    """(label, a fresh projection or None) of each row: the baselines, the
    triplet loss alone on a linear map (as first built), then the similarity
    term, the hidden layer and the averaging of the weights added one by one
    (margin 0.3 and similarity weight 0.5, the defaults, but in the first); the
    last row is the library's default TripletProjection."""
    def triplet(**options):
        return TripletProjection(args.dim, steps=args.steps,
                                 learning_rate=args.learning_rate,
                                 random_state=args.seed,
                                 **{"margin": args.margin, **options})

    return [
        ("raw descriptor, flip-averaged (1,280-d)", None),
        ("PCA-128", PCAProjection(args.dim)),
        ("PCA-128 whitened", PCAProjection(args.dim, whiten=True)),
        ("triplet 128, linear, batch-hard, margin 0.2 (as first built)", triplet(
            hidden=0, similarity_weight=0.0, averaging=0.0, mining="batch-hard",
            margin=0.2)),
        ("triplet 128, linear, semi-hard", triplet(
            hidden=0, similarity_weight=0.0, averaging=0.0)),
        ("triplet 128, linear, semi-hard + similarity 0.5", triplet(
            hidden=0, averaging=0.0)),
        ("triplet 128, hidden 512, semi-hard", triplet(
            similarity_weight=0.0, averaging=0.0)),
        ("triplet 128, hidden 512, semi-hard + similarity 0.5", triplet(averaging=0.0)),
        ("triplet 128, hidden 512, semi-hard + similarity 0.5, averaged weights "
         "(the default)", triplet()),
    ]


#: Settings of TripletProjection compared on validation images (see
#: validation_rows); the library's defaults are the best of them.
CANDIDATES = [{"margin": m, "similarity_weight": w}
              for m, w in ((0.2, 1.0), (0.1, 1.0), (0.3, 1.0), (0.4, 1.0), (0.3, 0.5))]


def validation_rows(args, descriptors, labels, seen, unseen) -> list:
    """Each CANDIDATES setting on validation images taken from the training
    images only (seed + 1): a quarter of each class's training half (as the seen
    split), and 20 of the unseen split's 81 training classes held out (as the
    unseen split). The test halves and the 20 test classes are never used."""
    rng = np.random.default_rng(args.seed + 1)
    train = seen[0]
    seen_val = np.zeros_like(train)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(train & (labels == c)))
        seen_val[members[:max(2, len(members) // 4)]] = True
    unseen_train = unseen[0]
    held = rng.choice(np.unique(labels[unseen_train]), args.unseen, replace=False)
    unseen_val = unseen_train & np.isin(labels, held)
    folds = {"seen": (train & ~seen_val, seen_val),
             "unseen": (unseen_train & ~unseen_val, unseen_val)}
    raw = {name: leave_one_out(descriptors[v], labels[v])
           for name, (_, v) in folds.items()}
    rows = []
    for options in CANDIDATES:
        row = {"options": options}
        for name, (fit_on, v) in folds.items():
            projection = TripletProjection(
                args.dim, steps=args.steps, learning_rate=args.learning_rate,
                random_state=args.seed, **{"margin": args.margin, **options}
            ).fit(descriptors[fit_on], labels[fit_on])
            row[name] = leave_one_out(projection.transform(descriptors[v]), labels[v])
        row["unseen_drop"] = round(raw["unseen"]["mAP"] - row["unseen"]["mAP"], 4)
        print("validation", row, flush=True)
        rows.append(row)
    return [{"options": "raw descriptor", **raw, "unseen_drop": 0.0}] + rows


def ranked_lists(index: GlobalIndex, queries, exclude, length: int):
    """Top ``length`` ids of each query (itself, ``exclude[i]``, left out) and
    ms per query."""
    out = np.full((len(queries), length), -1, np.int64)
    start = time.perf_counter()
    for i, q in enumerate(queries):
        _, ids = index.query(q, k=length + 1)
        ids = ids[ids != exclude[i]][:length]
        out[i, :len(ids)] = ids
    return out, 1000 * (time.perf_counter() - start) / len(queries)


def approximate_rows(args, descriptors, labels, projection) -> list:
    """Exact against faiss's HNSW and IVF at 8,677 images and at --large (noisy
    copies of the descriptors, each keeping its class)."""
    rng = np.random.default_rng(args.seed)
    rows = []
    query_ids = rng.choice(len(descriptors), args.queries, replace=False)
    for size in (len(descriptors), args.large):
        copies = -(-size // len(descriptors))
        stacked = np.concatenate([descriptors] + [
            descriptors + rng.normal(0, args.noise, descriptors.shape).astype(np.float32)
            for _ in range(copies - 1)])[:size]
        stacked_labels = np.tile(labels, copies)[:size]
        n_relevant = np.bincount(stacked_labels)[labels[query_ids]] - 1
        exact = None
        for search in ("exact", "hnsw", "ivf"):
            index = GlobalIndex(search=search, projection=projection,
                                candidates=args.candidates)
            _, add_s = timed(index.add_descriptors, stacked,
                             [str(i) for i in range(size)])
            _, build_s = timed(index.warm_up)  # the graph or the cells
            ranked, ms = ranked_lists(index, stacked[query_ids], query_ids, args.list)
            relevant = relevance(ranked, labels[query_ids], stacked_labels)
            row = {"images": size, "search": search,
                   "mAP": round(float(average_precision(
                       relevant, np.minimum(n_relevant, args.list)).mean()), 4),
                   "P@4": round(float(relevant[:, :4].mean()), 4), "ms": round(ms, 3),
                   "build_s": round(add_s + build_s, 2)}
            if exact is None:
                exact = row
            row["share_of_exact_mAP"] = round(row["mAP"] / exact["mAP"], 4)
            row["speedup"] = round(exact["ms"] / row["ms"], 2)
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvsearch-learned"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen", type=int, default=20)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--validate", action=argparse.BooleanOptionalAction,
                        default=True, help="also compare the CANDIDATES settings "
                        "on validation images drawn from the training images")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="describe each image and its mirror, averaged "
                             "(CNNDescriptor(flip_average=True)); the plain "
                             "descriptor's row is kept first")
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=0.01,
                        help="standard deviation of the noise of each copy")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--list", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=200)
    args = parser.parse_args(argv)
    meta = run_metadata("learned.py", argv)
    data = caltech101(args.data, download=False)
    labels = np.asarray(data.labels)
    paths = [str(p) for p in data.paths]
    plain = describe_all(paths, args.work)
    descriptors = describe_all(paths, args.work, flip_average=args.flip_average)
    seen, unseen = splits(labels, args.seed, args.unseen)
    rows = []
    for label, projection in [("raw descriptor (1,280-d), as in caltech101.md", None)
                              ] * args.flip_average + methods(args):
        row = {"method": label}
        source = plain if "caltech101.md" in label else descriptors
        for split, (train, evaluate) in (("seen", seen), ("unseen", unseen)):
            if projection is None:
                vectors, fit_s = source[evaluate], 0.0
            else:
                fitted, fit_s = timed(type(projection)(**projection.get_params()).fit,
                                      source[train], labels[train])
                vectors = fitted.transform(source[evaluate])
                if split == "seen":
                    row["projection"] = fitted
            row[split] = {**leave_one_out(vectors, labels[evaluate]),
                          "images": int(evaluate.sum()), "fit_s": round(fit_s, 1)}
        print(label, row["seen"], row["unseen"], flush=True)
        rows.append(row)
    validation = validation_rows(args, descriptors, labels, seen, unseen) \
        if args.validate else []
    best = rows[-1]  # the library's default projection, fitted on the seen split
    approximate = approximate_rows(args, descriptors, labels, best["projection"])
    for row in rows:
        row.pop("projection", None)
    results = {**meta, "rows": rows, "approximate": approximate,
               "validation": validation,
               "approximate_embedding": best["method"], "args": vars(args) | {
                   "data": str(args.data), "work": str(args.work)}}
    write_results(RESULTS, "learned", results, report(results))


def report(r: dict) -> str:
    a = r["args"]
    lines = [
        "# Learned global descriptors on Caltech-101", "",
        f"`{r['command']}` on {r['date']} ({r['machine']}).", "",
        "EfficientNet-Lite0 descriptors (1,280-d) of the 8,677 images"
        + (", each averaged with its mirror image's (`CNNDescriptor(flip_average="
           "True)`), but in the first row" if a["flip_average"] else "") +
        ". *Seen*: half "
        "of each class's images (seed "
        f"{a['seed']}) train the projection; the other half are queries and gallery, "
        f"leave-one-out. *Unseen*: {a['unseen']} whole classes held out of training "
        "(the projection is trained on the other classes' training halves); "
        "leave-one-out within them. mAP over full rankings.", "",
        "| method | seen mAP | seen P@4 | unseen mAP | unseen P@4 | fit s |",
        "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        s, u = row["seen"], row["unseen"]
        lines.append(f"| {row['method']} | {s['mAP']:.4f} | {s['P@4']:.4f} | "
                     f"{u['mAP']:.4f} | {u['P@4']:.4f} | {s['fit_s']} |")
    lines += [
        "", "## How the defaults were chosen", "",
        "Each setting trained on training images only and measured on validation "
        "images drawn from them (seed + 1): *seen*, a quarter of each class's "
        f"training half; *unseen*, {a['unseen']} of the unseen split's training "
        "classes held out. The default is the setting with the best seen P@4 "
        "among those that lose at most 0.01 unseen mAP against the raw "
        "descriptor. The test images above were used for nothing here.", "",
        "| setting | seen mAP | seen P@4 | unseen mAP | unseen P@4 | unseen mAP "
        "drop |", "|---|---|---|---|---|---|"]
    for row in r.get("validation", []):
        lines.append(f"| {row['options']} | {row['seen']['mAP']:.4f} | "
                     f"{row['seen']['P@4']:.4f} | {row['unseen']['mAP']:.4f} | "
                     f"{row['unseen']['P@4']:.4f} | {row['unseen_drop']:+.4f} |")
    lines += [
        "", f"## Approximate search ({r['approximate_embedding']})", "",
        "GlobalIndex with faiss's HNSW (M 32, efSearch 128) and IVF (4 sqrt(n) "
        f"cells, 16 probed), {a['candidates']} candidates scored again exactly, "
        f"against exact search: {a['queries']} queries, each ranking its top "
        f"{a['list']} (itself left out; relevant images beyond the list count as "
        "not found, for every search). Beyond 8,677 images the descriptors are "
        f"repeated with Gaussian noise (sd {a['noise']}), each copy keeping its "
        "class. ms: per query, descriptor given; build: adding the vectors and "
        "making the graph or the cells.",
        "", "| images | search | mAP@list | share of exact | P@4 | ms | speed-up | "
        "build s |", "|---|---|---|---|---|---|---|---|"]
    for row in r["approximate"]:
        lines.append(f"| {row['images']:,} | {row['search']} | {row['mAP']:.4f} | "
                     f"{row['share_of_exact_mAP']:.3f} | {row['P@4']:.4f} | "
                     f"{row['ms']} | {row['speedup']}x | {row['build_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
