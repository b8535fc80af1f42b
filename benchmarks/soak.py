"""Soak test: one index folder under several writer and reader processes and a
``cvsearch serve --workers 2`` with concurrent clients, while a chaos loop
``kill -9``s a random writer or the server every few seconds and restarts it,
and once swaps the folder for a rebuilt one (``rm -rf X; mv Y X``).

Every write is journalled by the process that makes it: its intent before, its
acknowledgement after the save returned (or the service answered). At the end:

- acknowledged adds lost: acknowledged, never followed by a removal's intent,
  and not in the final index;
- deleted images still served or stored: acknowledged removals whose name is in
  the final index, or (after a final compaction) in any file of the folder, or
  whose stored upload is still there;
- reader errors: any exception of ``Index.load`` or a query in the reader
  processes; 5xx answers of the service (a refused connection while the server is
  down is counted apart: that is the kill, not an error);
- the server's RSS (master and workers) every ten seconds.

Writers never add a name twice and remove only names they added, so the final
state of each name is known from its journal alone.

    python benchmarks/soak.py --data ../shared/data --minutes 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from _common import run_metadata

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "soak-token"


# ------------------------------------------------------------------ journals
def journal(path: Path, *fields) -> None:
    """Append one line, flushed to disk before the caller goes on."""
    with open(path, "a") as file:
        file.write("\t".join(str(f) for f in fields) + "\n")
        file.flush()
        os.fsync(file.fileno())


def read_journal(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line.split("\t") for line in lines if line.count("\t") >= 2]


def journal_state(rows) -> tuple[set, set, set]:
    """``(present, removed, ambiguous)`` names: the last acknowledged operation
    of each name, and names with an operation begun but not acknowledged (its
    process was killed: either outcome is right)."""
    last_ack, pending = {}, {}
    for kind, op, name in (r[:3] for r in rows):
        if kind == "intent":
            pending[name] = op
        elif kind == "ack":
            last_ack[name] = op
            pending.pop(name, None)
    present = {n for n, op in last_ack.items() if op == "add" and n not in pending}
    removed = {n for n, op in last_ack.items() if op == "remove" and n not in pending}
    return present, removed, set(pending)


# ------------------------------------------------------------------ processes
def writer_process(folder: str, pool: list[str], journal_path: str, seed: int,
                   stop_at: float) -> None:
    """Add (from its own pool, each name once) and remove (its own names) through
    ``Index.updating``; now and then compact."""
    from cvsearch import Index

    rng = random.Random(seed + int(time.time() * 1000) % 100_000)
    journal_path = Path(journal_path)
    rows = read_journal(journal_path)
    present, _, _ = journal_state(rows)
    used = {r[2] for r in rows}
    fresh = [p for p in pool if p not in used]
    while time.time() < stop_at:
        roll = rng.random()
        if roll < 0.05:
            with Index.updating(folder, timeout=120) as index:
                index.compact()
            continue
        if fresh and (len(present) < 5 or roll < 0.6):
            name = fresh.pop()
            journal(journal_path, "intent", "add", name)
            with Index.updating(folder, timeout=120) as index:
                index.add([name])
                added = name in set(index.names.values())
            if added:
                journal(journal_path, "ack", "add", name)
                present.add(name)
        elif present:
            name = rng.choice(sorted(present))
            journal(journal_path, "intent", "remove", name)
            with Index.updating(folder, timeout=120) as index:
                index.remove([name])
            journal(journal_path, "ack", "remove", name)
            present.discard(name)
        time.sleep(rng.uniform(0.05, 0.3))


def reader_process(folder: str, queries: list[str], stats_path: str, seed: int,
                   stop_at: float) -> None:
    """Load the folder and query it, again and again; count what fails."""
    from cvsearch import Index

    rng = random.Random(seed)
    counts, errors, started = Counter(), [], time.time()
    while time.time() < stop_at:
        try:
            index = Index.load(folder)
            counts["loads"] += 1
            if len(index):
                index.query(rng.choice(queries), k=5, rerank=10)
                counts["queries"] += 1
        except Exception as error:  # what the soak counts
            counts["errors"] += 1
            if len(errors) < 20:
                errors.append(f"at {time.time() - started:.0f} s: "
                              f"{type(error).__name__}: {error}")
        if counts["loads"] % 10 == 0:
            _write_json(stats_path, {"counts": counts, "errors": errors})
    _write_json(stats_path, {"counts": counts, "errors": errors})


def _write_json(path, payload) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(payload, file)
    os.replace(temporary, path)


# ------------------------------------------------------------------ the server
class Server:
    """``cvsearch serve --workers 2`` in its own process group (killed whole)."""

    def __init__(self, folder: Path, port: int, log: Path):
        self.folder, self.port, self.log = folder, port, log
        self.process = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> float:
        import httpx

        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cvsearch", "serve", str(self.folder), "--port",
             str(self.port), "--token", TOKEN, "--workers", "2", "-q"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
            start_new_session=True)
        while time.monotonic() - started < 180:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                time.sleep(0.3)
            if self.process.poll() is not None:
                break
        raise RuntimeError("the server did not start: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()

    def rss_mb(self) -> float | None:
        import psutil

        try:
            main = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [main, *main.children(True)]) / 2**20
        except psutil.Error:
            return None


def tally(counts: Counter, errors: list, kind: str, answer) -> None:
    """Count an answer by its status class; keep the first 5xx texts."""
    counts[f"{kind}_{answer.status_code // 100}xx"] += 1
    if answer.status_code >= 500 and len(errors) < 20:
        errors.append(f"{kind} {answer.status_code}: {answer.text[:300]}")


def search_client(server: Server, queries: list[str], big: list[bytes], counts: Counter,
                  errors: list, stop_at: float, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(timeout=60) as client:
        while time.time() < stop_at:
            if rng.random() < 0.05:
                data, name = rng.choice(big), "big.png"
            else:
                path = rng.choice(queries)
                data, name = Path(path).read_bytes(), Path(path).name
            try:
                answer = client.post(server.url + "/search",
                                     files={"image": (name, data)},
                                     data={"k": "5", "rerank": "10"})
            except httpx.TransportError:
                counts["search_unavailable"] += 1
                time.sleep(0.2)
                continue
            tally(counts, errors, "search", answer)


def service_writer(server: Server, pool: list[str], journal_path: Path, counts: Counter,
                   errors: list, stop_at: float, seed: int) -> None:
    """Add images through ``POST /images`` and delete some through ``DELETE``."""
    import httpx

    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    present = {}  # name -> id
    with httpx.Client(timeout=120) as client:
        while time.time() < stop_at and pool:
            try:
                if len(present) < 5 or rng.random() < 0.6:
                    path = pool.pop()
                    journal(journal_path, "intent", "add", path)
                    answer = client.post(server.url + "/images", headers=auth, files={
                        "images": (Path(path).name, Path(path).read_bytes())})
                    if answer.status_code == 201:
                        (added,) = answer.json()["added"]
                        present[added["name"]] = added["id"]
                        journal(journal_path, "ack", "add", path, added["name"],
                                added["id"])
                else:
                    name = rng.choice(sorted(present))
                    journal(journal_path, "intent", "remove", name)
                    answer = client.delete(f"{server.url}/images/{present[name]}",
                                           headers=auth)
                    if answer.status_code == 200:
                        journal(journal_path, "ack", "remove", name)
                        present.pop(name)
            except httpx.TransportError:
                counts["write_unavailable"] += 1
                time.sleep(0.3)
                continue
            tally(counts, errors, "write", answer)
            time.sleep(rng.uniform(0.1, 0.5))


def service_state(rows) -> tuple[set, set, set]:
    """As :func:`journal_state`, by index name (``uploads/...``)."""
    upload_of, renamed = {}, []
    for row in rows:
        if row[0] == "ack" and row[1] == "add":
            upload_of[row[2]] = row[3]
    for row in rows:
        name = upload_of.get(row[2], row[2]) if row[1] == "add" else row[2]
        renamed.append([row[0], row[1], name])
    return journal_state(renamed)


# ------------------------------------------------------------------ the run
def swap(folder: Path) -> dict:
    """Rebuild the folder's index as a new index (another lineage, compacted,
    ids kept) and swap it in, under the writer lock so no acknowledged write
    falls between."""
    from cvsearch import Index, storage

    started = time.monotonic()
    rebuilt = folder.with_name(folder.name + "-rebuilt")
    shutil.rmtree(rebuilt, ignore_errors=True)
    with storage.writer_lock(folder):
        index = Index.load(folder)
        index.lineage = storage.new_lineage()  # a rebuild is another index
        index.compact()
        index.save(rebuilt)
        if (folder / "uploads").is_dir():
            shutil.copytree(folder / "uploads", rebuilt / "uploads")
        shutil.rmtree(folder)
        shutil.move(str(rebuilt), str(folder))
    return {"images": len(index), "seconds": round(time.monotonic() - started, 2),
            "lineage": index.lineage, "at_s": None}


def build(folder: Path, paths: list[str], n_words: int) -> None:
    from cvsearch import FeatureExtractor, Index

    index = Index.build(paths, FeatureExtractor("sift", max_side=400),
                        n_words=n_words, random_state=0, n_jobs=2)
    index.save(folder)


def big_images(n: int) -> list[bytes]:
    """PNGs of 4000 x 4000 pixels (48 MB decoded) that compress to little."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        big = cv2.resize(small, (4000, 4000), interpolation=cv2.INTER_NEAREST)
        out.append(cv2.imencode(".png", big)[1].tobytes())
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder holding caltech101/")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--work", default="/tmp/cvsearch-soak")
    parser.add_argument("--initial", type=int, default=300, help="images at the start")
    parser.add_argument("--words", type=int, default=500)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--chaos", type=float, nargs=2, default=(4.0, 10.0),
                        metavar=("MIN_S", "MAX_S"), help="seconds between kills")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", default=str(RESULTS / "soak"))
    args = parser.parse_args(argv)

    from cvsearch import Index
    from cvsearch.datasets import caltech101

    paths = [os.path.abspath(p) for p in caltech101(args.data, download=False).paths]
    random.Random(0).shuffle(paths)
    initial, rest = paths[:args.initial], paths[args.initial:]
    pools = [rest[i::args.writers + 1] for i in range(args.writers + 1)]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    folder = work / "index"
    started = time.time()
    build(folder, initial, args.words)
    print(f"built {len(initial)} images in {time.time() - started:.0f} s", flush=True)

    stop_at = time.time() + 60 * args.minutes
    context = mp.get_context("spawn")
    journals = [work / f"writer-{i}.tsv" for i in range(args.writers)]

    def start_writer(i):
        process = context.Process(target=writer_process, args=(
            str(folder), pools[i], str(journals[i]), i, stop_at), daemon=True)
        process.start()
        return process

    writers = [start_writer(i) for i in range(args.writers)]
    reader_stats = [work / f"reader-{i}.json" for i in range(args.readers)]
    readers = [context.Process(target=reader_process, args=(
        str(folder), initial, str(reader_stats[i]), 100 + i, stop_at), daemon=True)
        for i in range(args.readers)]
    for reader in readers:
        reader.start()
    server = Server(folder, args.port, work / "server.log")
    server.start()
    counts, errors = Counter(), []
    big = big_images(2)
    service_journal = work / "service.tsv"
    clients = [threading.Thread(target=search_client, args=(
        server, initial, big, counts, errors, stop_at, 200 + i), daemon=True)
        for i in range(3)]
    clients.append(threading.Thread(target=service_writer, args=(
        server, pools[-1], service_journal, counts, errors, stop_at, 300), daemon=True))
    for client in clients:
        client.start()

    rss, kills, restarts, swapped = [], Counter(), [], None
    rng = random.Random(1)
    next_kill = time.time() + rng.uniform(*args.chaos)
    next_rss = time.time()
    swap_at = time.time() + 30 * args.minutes  # half way
    while time.time() < stop_at:
        now = time.time()
        if now >= next_rss:
            rss.append([round(now - (stop_at - 60 * args.minutes), 1), server.rss_mb()])
            next_rss = now + 10
        if swapped is None and now >= swap_at:
            swapped = swap(folder)
            swapped["at_s"] = round(now - (stop_at - 60 * args.minutes), 1)
            print(f"swapped the folder for a rebuilt index: {swapped}", flush=True)
        if now >= next_kill:
            target = rng.randrange(args.writers + 1)
            if target == args.writers:
                server.kill()
                kills["server"] += 1
                restarts.append(round(server.start(), 2))
            else:
                writers[target].kill()
                writers[target].join()
                kills["writer"] += 1
                writers[target] = start_writer(target)
            next_kill = time.time() + rng.uniform(*args.chaos)
        time.sleep(0.2)
    for client in clients:
        client.join(timeout=180)
    for process in writers + readers:
        process.join(timeout=180)
    rss.append([round(time.time() - (stop_at - 60 * args.minutes), 1), server.rss_mb()])
    server.stop()

    # ------------------------------------------------------------- the checks
    final = Index.load(folder)
    final.check_integrity()
    names = set(final.names.values())
    lost, resurrected, ambiguous = [], [], 0
    for path in journals:
        present, removed, pending = journal_state(read_journal(path))
        lost += sorted(present - names)
        resurrected += sorted(removed & names)
        ambiguous += len(pending)
    service_rows = read_journal(service_journal)
    present, removed, pending = service_state(service_rows)
    lost += sorted(present - names)
    resurrected += sorted(removed & names)
    ambiguous += len(pending)
    uploads_left = sorted(n for n in removed if (folder / n).exists())
    with Index.updating(folder) as index:
        index.compact()
    stored = b"".join(p.read_bytes() for p in folder.iterdir()
                      if p.name.startswith("names-"))
    all_removed = set(removed)
    for path in journals:
        all_removed |= journal_state(read_journal(path))[1]
    still_stored = sorted(n for n in all_removed if json.dumps(n).encode() in stored)

    reader_counts, reader_errors = Counter(), []
    for path in reader_stats:
        stats = json.loads(path.read_text())
        reader_counts.update(stats["counts"])
        reader_errors += stats["errors"]
    acknowledged = Counter()
    for path in [*journals, service_journal]:
        acknowledged.update(f"{r[1]}" for r in read_journal(path) if r[0] == "ack")
    minutes = args.minutes
    first = [v for t, v in rss if v is not None and t <= 600]
    last = [v for t, v in rss if v is not None and t >= 60 * minutes - 600]
    result = {
        **run_metadata("soak.py", argv),
        "minutes": minutes, "initial_images": len(initial), "final_images": len(final),
        "words": args.words, "writers": args.writers, "readers": args.readers,
        "chaos_s": list(args.chaos),
        "operations": {
            "reader_loads": reader_counts["loads"],
            "reader_queries": reader_counts["queries"],
            "acknowledged_adds": acknowledged["add"],
            "acknowledged_removes": acknowledged["remove"],
            "service_searches": sum(v for k, v in counts.items()
                                    if k.startswith("search_") and k[-2:] == "xx"),
            **{k: v for k, v in sorted(counts.items())},
            "kills": dict(kills), "server_restart_s": restarts,
            "unfinished_writes_at_a_kill": ambiguous},
        "swap": swapped,
        "reader_errors": reader_counts["errors"],
        "reader_error_examples": reader_errors[:10],
        "http_5xx": counts["search_5xx"] + counts["write_5xx"],
        "http_5xx_examples": errors[:10],
        "acknowledged_adds_lost": len(lost), "lost_examples": lost[:10],
        "deleted_still_served": len(resurrected),
        "deleted_examples": resurrected[:10],
        "deleted_uploads_left": len(uploads_left),
        "deleted_still_stored_after_compaction": len(still_stored),
        "server_rss_mb": rss,
        "rss_first_10_min_max_mb": round(max(first), 1) if first else None,
        "rss_last_10_min_max_mb": round(max(last), 1) if last else None,
    }
    if first and last:
        result["rss_last_over_first"] = round(max(last) / max(first), 3)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    output.with_suffix(".md").write_text(report(result))
    print(report(result))
    return result


def report(r: dict) -> str:
    ops = r["operations"]
    lines = [
        "# Soak: the store and the service under processes, kill -9 and a swap", "",
        f"`{r['command']}` ({r['date']}; {r['machine']})", "",
        f"{r['minutes']:g} minutes on one index folder ({r['initial_images']} Caltech-101 "
        f"images at the start, {r['final_images']} at the end, SIFT at 400 px, "
        f"{r['words']} words): {r['writers']} processes adding and removing through "
        f"`Index.updating`, {r['readers']} loading and querying, `cvsearch serve "
        "--workers 2` answering three search clients and one client adding and "
        "deleting; a chaos loop `kill -9`s a random writer or the whole server every "
        f"{r['chaos_s'][0]:g}-{r['chaos_s'][1]:g} s and restarts it, and half way "
        "swaps the folder for a rebuilt index (`rm -rf X; mv Y X`).",
        "", "| what | count |", "|---|---|",
        f"| reader loads / queries | {ops['reader_loads']:,} / {ops['reader_queries']:,} |",
        f"| acknowledged adds / removes (library and service) | "
        f"{ops['acknowledged_adds']:,} / {ops['acknowledged_removes']:,} |",
        f"| service searches answered (2xx / 4xx) | {ops.get('search_2xx', 0):,} / "
        f"{ops.get('search_4xx', 0):,} |",
        f"| requests refused while the server was down | "
        f"{ops.get('search_unavailable', 0) + ops.get('write_unavailable', 0):,} |",
        f"| kills: writers / server | {ops['kills'].get('writer', 0)} / "
        f"{ops['kills'].get('server', 0)} |",
        f"| writes begun but not acknowledged (killed, or sent while the server "
        "was down) | "
        f"{ops['unfinished_writes_at_a_kill']} |",
        f"| **reader errors** | **{r['reader_errors']}** |",
        f"| **5xx answers** | **{r['http_5xx']}** |",
        f"| **acknowledged adds lost** | **{r['acknowledged_adds_lost']}** |",
        f"| **deleted images still served** | **{r['deleted_still_served']}** |",
        f"| **deleted uploads left on disk** | **{r['deleted_uploads_left']}** |",
        f"| **deleted images stored after compaction** | "
        f"**{r['deleted_still_stored_after_compaction']}** |",
        f"| server RSS, max of the first / last 10 minutes (MiB) | "
        f"{r['rss_first_10_min_max_mb']} / {r['rss_last_10_min_max_mb']} "
        f"(ratio {r.get('rss_last_over_first')}) |",
        "", f"Swap: {r['swap']}.", ""]
    for key in ("reader_error_examples", "http_5xx_examples", "lost_examples",
                "deleted_examples"):
        if r[key]:
            lines += [f"{key}:", *[f"- {e}" for e in r[key]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
