"""The service under load: 16 clients searching while one adds images.

Builds (once, cached in --work) an index of 2,000 Caltech-101 images (RootSIFT,
fixed seed), starts ``cvsearch serve`` on 127.0.0.1, and drives it with
``--clients`` concurrent clients, each sending a fixed number of searches (photos
from other Caltech-101 images), while one more client adds ``--adds`` images, one
per request. Then the server is stopped and the index reloaded from disk to count
the adds. The same work is then done through the Python API: the same searches
from as many threads (read, decode, extract, query: what the service does) while
one more thread adds the same images, saving each, so the service's overhead over
the library is a ratio measured in one run.

    python benchmarks/serve.py --data ../shared/data

Writes benchmarks/results/serve.json and serve.md; with --screenshot (headless
Chromium and selenium), benchmarks/results/serve_page.png too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import run_metadata

from cvsearch import FeatureExtractor, Index, thread_budget
from cvsearch.datasets import caltech101
from cvsearch.io import decode_image

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "benchmark-token"


def build_index(args, folder: Path, paths: list[str]) -> None:
    if (folder / "index.json").exists():
        return
    index = Index.build(paths, FeatureExtractor("rootsift"), n_words=args.n_words,
                        random_state=0, n_jobs=2, train_images=1000)
    index.save(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, workers: int, log: Path):
    import httpx

    # stderr to a file, not a pipe: a pipe nobody reads fills up and blocks it
    process = subprocess.Popen(
        [sys.executable, "-m", "cvsearch", "serve", str(folder), "--port", str(port),
         "--token", TOKEN, "--workers", str(workers), "-q"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    url = f"http://127.0.0.1:{port}"
    # Up once every worker has answered: each listens after it has loaded the
    # index, and until the last does, the others take every search (a new
    # connection each time, so that any worker may accept it).
    answered = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url + "/health", timeout=2)
            if answer.status_code == 200:
                answered.add(answer.json()["worker"])
                if len(answered) == workers:
                    return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.05 if answered else 0.3)
    process.kill()
    raise RuntimeError(f"the server did not start ({len(answered)} of {workers} "
                       "workers answered): " + log.read_text()[-2000:])


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def drive(url: str, queries: list[str], adds: list[str], args) -> dict:
    """The clients: searches split over ``args.clients`` threads, adds in one."""
    import httpx

    latencies, errors, acknowledged = [], [], []
    lock = threading.Lock()

    def searcher(mine: list[str]):
        with httpx.Client(base_url=url, timeout=120) as client:
            for path in mine:
                data = Path(path).read_bytes()
                started = time.perf_counter()
                try:
                    answer = client.post("/search", files={
                        "image": (Path(path).name, data, "image/jpeg")},
                        data={"k": str(args.k), "rerank": str(args.rerank)})
                    ok = answer.status_code == 200
                except httpx.HTTPError as error:
                    ok, answer = False, error
                took = time.perf_counter() - started
                with lock:
                    (latencies.append(took) if ok else errors.append(
                        f"search {path}: {getattr(answer, 'text', answer)}"))

    def adder():
        with httpx.Client(base_url=url, timeout=120) as client:
            for path in adds:
                try:
                    answer = client.post(
                        "/images", headers={"Authorization": f"Bearer {TOKEN}"},
                        files={"images": (Path(path).name, Path(path).read_bytes(),
                                          "image/jpeg")})
                    ok = answer.status_code == 201
                except httpx.HTTPError as error:
                    ok, answer = False, error
                with lock:
                    if ok:
                        acknowledged.extend(a["name"] for a in answer.json()["added"])
                    else:
                        errors.append(f"add {path}: {getattr(answer, 'text', answer)}")

    shares = [queries[i::args.clients] for i in range(args.clients)]
    searchers = [threading.Thread(target=searcher, args=(s,)) for s in shares]
    adding = threading.Thread(target=adder)
    started = time.perf_counter()
    for thread in [*searchers, adding]:
        thread.start()
    for thread in searchers:
        thread.join()
    # the searches' own span, as library_run measures it: the adds may go on
    wall = time.perf_counter() - started
    with lock:
        added_meanwhile = len(acknowledged)
    adding.join()
    adds_s = time.perf_counter() - started
    return {"queries": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "adds_s": round(adds_s, 2),
            "queries_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1),
            "adds_while_searching": added_meanwhile, "acknowledged": acknowledged}


def library_run(folder: Path, queries: list[str], adds: list[str], args) -> dict:
    """The same work through the Python API: the searches from as many threads,
    while one more thread adds the same images one at a time, saving each (what
    the service does for a POST /images)."""
    index = Index.load(folder).warm_up()

    def one(path):
        started = time.perf_counter()
        image = decode_image(Path(path).read_bytes(), path, grayscale=False)
        # what the service computes for a search: the decisions too
        index.query(index.extractor.extract(image), k=args.k, rerank=args.rerank,
                    return_evidence=True)
        return time.perf_counter() - started

    added = []

    def adder():
        for path in adds:
            image = decode_image(Path(path).read_bytes(), path, grayscale=False)
            index.add([index.extractor.extract(image)], names=[path])
            index.save(folder)
            added.append(path)

    # as the service does: concurrent searches fill the cores, each one thread
    with thread_budget(1):
        started = time.perf_counter()
        writer = threading.Thread(target=adder)
        writer.start()
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = list(pool.map(one, queries))
        wall = time.perf_counter() - started
        added_meanwhile = len(added)
        writer.join()
        adds_s = time.perf_counter() - started
    return {"queries": len(latencies), "wall_s": round(wall, 2),
            "adds_s": round(adds_s, 2),
            "queries_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1),
            "adds_while_searching": added_meanwhile, "images_after": len(index)}


def photo_of(path: str, out: Path) -> Path:
    """A photo-like copy of an image: turned, zoomed, in perspective (what a
    phone photo of the same picture looks like), written to ``out``."""
    import cv2

    image = cv2.imread(path)
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0.08 * w, 0.12 * h], [0.95 * w, 0.02 * h], [0.9 * w, 0.97 * h],
                      [0.02 * w, 0.85 * h]])
    warped = cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h),
                                 borderMode=cv2.BORDER_REPLICATE)
    cv2.imwrite(str(out), cv2.convertScaleAbs(warped, alpha=0.9, beta=12))
    return out


def screenshot(url: str, query: str, path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,860",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(os.path.abspath(query))
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const i = [...document.querySelectorAll('#results img')];"
            "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0)"))
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder holding caltech101/")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--n-words", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=320,
                        help="searches in all (split over the clients)")
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rerank", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes (default: one per core)")
    parser.add_argument("--screenshot", action="store_true",
                        help="also write results/serve_page.png (headless Chromium)")
    parser.add_argument("--screenshot-only", action="store_true",
                        help="only write results/serve_page.png, no load test")
    parser.add_argument("--work", default=None, help="scratch folder (default: temp)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="cvsearch-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    data = caltech101(args.data, download=False)
    order = np.random.default_rng(0).permutation(len(data.paths))
    indexed = [data.paths[i] for i in order[:args.images]]
    adds = [data.paths[i] for i in order[args.images:args.images + args.adds]]
    queries = [data.paths[i] for i in order[-args.queries:]]
    cached = work / f"index-{args.images}"
    build_index(args, cached, indexed)
    folder = work / "served"  # a fresh copy: the adds go there
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    subprocess.run(["cp", "-r", str(cached), str(folder)], check=True)

    log = work / "server.log"
    process, url = start_server(folder, free_port(), args.workers, log)
    try:
        if args.screenshot or args.screenshot_only:
            # a phone-like photo of an indexed picture: what instance search is for
            shown = next(p for p in indexed if "/dollar_bill/" in p)
            query = photo_of(shown, work / "photo of a dollar bill.jpg")
            screenshot(url, str(query), RESULTS / "serve_page.png")
            if args.screenshot_only:
                return 0
        service = drive(url, queries, adds, args)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    service["server_errors"] = log.read_text().count("Traceback")
    reloaded = Index.load(folder)
    names = set(reloaded.names.values())
    acknowledged = service.pop("acknowledged")
    lost = [n for n in acknowledged if n not in names]
    library_folder = work / "library"  # the same start, for the Python API's adds
    subprocess.run(["rm", "-rf", str(library_folder)], check=True)
    subprocess.run(["cp", "-r", str(cached), str(library_folder)], check=True)
    library = library_run(library_folder, queries, adds, args)
    result = {
        "service": service, "library": library,
        "adds_acknowledged": len(acknowledged), "adds_lost": len(lost),
        "images_after": len(reloaded),
        "p50_service_over_library": round(service["p50_ms"] / library["p50_ms"], 3),
        "qps_service_over_library": round(service["queries_per_s"]
                                          / library["queries_per_s"], 3)}
    print(json.dumps(result, indent=1))
    write_results(args, argv, result)
    return 0 if not service["errors"] and not lost and not service[
        "server_errors"] else 1


def write_results(args, argv, result):
    meta = run_metadata("serve.py", argv)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(
        {**meta, "settings": {k: v for k, v in vars(args).items()
                              if k not in ("work", "data")}, **result}, indent=1) + "\n")
    s, lib = result["service"], result["library"]
    lines = [
        "# The service under load", "",
        f"`{meta['command']}` on {meta['date']} ({meta['machine']}).", "",
        f"An index of {args.images:,} Caltech-101 images (RootSIFT, {args.n_words:,} "
        f"words) served by `cvsearch serve` on 127.0.0.1 ({args.workers} "
        f"worker{'s' if args.workers > 1 else ''}). "
        f"{args.clients} clients send {args.queries} searches in all (k={args.k}, "
        f"re-rank {args.rerank}; photos of other Caltech-101 images) while one more "
        f"client adds {args.adds} images, one per request, each saved before its "
        "answer. Then the same work through the Python API in this process: the "
        "same searches from as many threads (read, decode, extract, query with "
        "the decisions the service returns; one thread each, "
        "`thread_budget(1)`, as the service's searches) while one more thread "
        "adds the same images, saving after each.", "",
        "Searches per second are over the searches' own span (from the start "
        "until the last search is answered), the same clock on both sides; the "
        "adds may go on after it.", "",
        "| | searches | errors | queries/s | p50 ms | p95 ms | adds done while "
        f"searching | all {args.adds} adds done after (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| service (HTTP) | {s['queries']} | {len(s['errors'])} | "
        f"{s['queries_per_s']} | {s['p50_ms']} | {s['p95_ms']} | "
        f"{s['adds_while_searching']} | {s['adds_s']} |",
        f"| Python API, same work | {lib['queries']} | 0 | {lib['queries_per_s']} "
        f"| {lib['p50_ms']} | {lib['p95_ms']} | {lib['adds_while_searching']} | "
        f"{lib['adds_s']} |",
        f"| service / library | | | {result['qps_service_over_library']} | "
        f"{result['p50_service_over_library']} | | | |", "",
        f"Server-side errors logged: {s['server_errors']}. "
        f"Adds: {result['adds_acknowledged']} acknowledged, {result['adds_lost']} lost "
        f"(counted in the index reloaded from disk after the run: "
        f"{result['images_after']:,} images).", ""]
    if s["errors"]:
        lines += ["Errors:", ""] + [f"- {e[:200]}" for e in s["errors"][:20]]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
