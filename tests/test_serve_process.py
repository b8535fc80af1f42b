"""``cvsearch serve`` as a real process on 127.0.0.1: killed with SIGKILL in the
middle of a stream of adds it loses no acknowledged add, and its page works in a
real (headless Chromium) browser."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import UKBENCH, process_alive, textured_image, warped

pytest.importorskip("fastapi", reason="the service needs the 'server' extra")
httpx = pytest.importorskip("httpx", reason="the service tests need httpx")

from cvsearch import FeatureExtractor, Index  # noqa: E402

TOKEN = "t0ken"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m cvsearch serve`` in a child process, up when each of its
    ``workers`` has answered /health (``self.workers``: their process ids)."""

    def __init__(self, index_dir, *extra, workers=1, cwd=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # a file, not a pipe: a pipe nobody reads fills up and blocks the server
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cvsearch", "serve", str(index_dir), "--port",
             str(self.port), "--token", TOKEN, "--workers", str(workers), "-q", *extra],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        # Each worker listens once it has loaded the index: on a busy machine the
        # second can start well after the first answers (half a second here, with
        # three busy loops on two cores), and until then every connection goes to
        # the first (CI once saw 60 requests in a row answered by one of two
        # workers). A new connection each: either worker accepts it.
        self.workers = set()
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = httpx.get(self.url + "/health", timeout=5)
                if answer.status_code == 200:
                    self.workers.add(answer.json()["worker"])
                    if len(self.workers) == workers:
                        return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the server did not start ({len(self.workers)} of {workers} "
                    "workers answered): " + self.errors()[-2000:])
            time.sleep(0.05 if self.workers else 0.2)

    def errors(self) -> str:
        """What the server wrote on stderr (with -q, only errors)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture()
def index_dir(trained_index, tmp_path):
    folder = tmp_path / "index"
    trained_index.save(folder)
    return folder


def test_kill_9_during_adds_loses_no_acknowledged_add(index_dir):
    """Two clients add images one by one; the server is killed with SIGKILL while
    adds are in flight. After a restart, every add answered with success is in
    the index (and nothing half-written breaks loading)."""
    server = Server(index_dir)
    acknowledged, failures, lock = [], [], threading.Lock()
    stop = threading.Event()

    def adder(first: int):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(first, first + 200):
                if stop.is_set():
                    return
                data = cv2.imencode(".png", textured_image(1000 + i, size=240))[1]
                try:
                    answer = client.post(
                        "/images", headers={"Authorization": f"Bearer {TOKEN}"},
                        files={"images": (f"img{i}.png", data.tobytes(), "image/png")})
                except httpx.TransportError:
                    return  # killed while this one was in flight: not acknowledged
                if answer.status_code != 201:
                    failures.append(answer.text)
                    return
                with lock:
                    acknowledged.extend(a["name"] for a in answer.json()["added"])

    adders = [threading.Thread(target=adder, args=(k * 1000,)) for k in range(2)]
    for thread in adders:
        thread.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 8 and time.monotonic() < deadline and not failures:
        time.sleep(0.05)
    server.kill()  # SIGKILL: no clean-up of any kind
    stop.set()
    assert "Traceback" not in server.errors(), server.errors()[-3000:]
    for thread in adders:
        thread.join(60)
    assert failures == [] and len(acknowledged) >= 8
    restarted = Server(index_dir)
    try:
        names = set(Index.load(index_dir).names.values())
        lost = [name for name in acknowledged if name not in names]
        assert lost == []
        # at most the adds in flight (one per client) landed without an answer
        assert 12 + len(acknowledged) <= len(names) <= 12 + len(acknowledged) + 2
        stats = httpx.get(restarted.url + "/stats").json()
        assert stats["images"] == len(names)
    finally:
        restarted.stop()


def test_several_workers_see_each_others_writes(index_dir):
    """With --workers 2, an add through one process is saved under the folder's
    lock and every worker answers with it a moment later (each reloads when the
    saved generation changes, checked once a second)."""
    server = Server(index_dir, workers=2)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            new = textured_image(77)
            ids = []
            for i in range(4):  # the requests land on either worker
                answer = client.post("/images", headers=auth, files={"images": (
                    f"w{i}.png", cv2.imencode(".png", textured_image(80 + i))[1]
                    .tobytes(), "image/png")})
                assert answer.status_code == 201, answer.text
                ids += [a["id"] for a in answer.json()["added"]]
            assert ids == [12, 13, 14, 15]  # no worker lost another's add
            answer = client.post("/images", headers=auth, files={"images": (
                "new.png", cv2.imencode(".png", new)[1].tobytes(), "image/png")})
            assert answer.json()["added"][0]["id"] == 16
            time.sleep(1.5)
        query = cv2.imencode(".png", warped(new, rotation=8)[0])[1].tobytes()
        workers = set()
        for attempt in range(40):  # a new connection each: both workers answer
            health = httpx.get(server.url + "/health", timeout=30).json()
            workers.add(health["worker"])
            assert health["images"] == 17
            found = httpx.post(server.url + "/search", data={"k": "1"}, timeout=30,
                               files={"image": ("q.png", query, "image/png")}).json()
            assert found["results"][0]["id"] == 16
            # its match picture, asked on a new connection: either worker draws
            # it (they share their recent queries through a folder)
            picture = httpx.get(server.url + found["results"][0]["match_url"],
                                timeout=30)
            assert picture.status_code == 200, picture.text
            assert picture.headers["content-type"] == "image/png"
            if len(workers) == 2 and attempt >= 7:
                break
        assert len(workers) == 2
    finally:
        server.stop()
    assert "Traceback" not in server.errors(), server.errors()[-3000:]
    assert len(Index.load(index_dir)) == 17


def test_one_client_connection_reaches_every_worker(index_dir):
    """With --workers 2, a client's requests on one kept-alive connection spread
    over the workers: each response closes its connection, so the next request
    is accepted by whichever worker is free (kept alive, a connection stays with
    the worker that accepted it: all 320 searches of benchmarks/serve.py's 16
    clients once went to one of two workers)."""
    server = Server(index_dir, workers=2)  # both workers serve
    try:
        workers = set()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while len(workers) < 2 and time.monotonic() < deadline:
                answer = client.get("/health")
                assert answer.headers["connection"] == "close"
                workers.add(answer.json()["worker"])
                time.sleep(0.02)
        assert workers == server.workers
    finally:
        server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_workers_end_when_the_server_is_killed(index_dir, tmp_path):
    """kill -9 of ``serve --workers 2`` leaves no worker serving on, holding the
    port with nothing to supervise it: both end, nothing listens on the port, and
    the folder in which they shared their recent queries is gone."""
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    server = Server(index_dir, workers=2,
                    env={**os.environ, "TMPDIR": str(temporary)})
    workers = server.workers  # both answered
    try:
        assert len(workers) == 2
        server.kill()
        deadline = time.monotonic() + 60
        while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(process_alive(w) for w in workers)
        assert [p.name for p in temporary.iterdir()] == []
        # nothing listens on the port: a connection is refused. (Binding it
        # again is no test of that: while other tests run, any of their
        # connections may hold the same number as its own ephemeral port, and
        # a bind without SO_REUSEADDR then fails; CI saw it once.)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    finally:
        server.stop()
        for worker in workers:
            if process_alive(worker):
                os.kill(worker, signal.SIGKILL)


# ------------------------------------------------------------------ browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser():
    """Headless Chromium driven by Selenium (Debian's chromium + chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def photos_and_query(tmp_path, trained_index):
    """(index folder, query file, names expected first): the first 16 UKBench
    photos when the shared data is here, else synthetic textures."""
    if (UKBENCH / "images").is_dir():
        paths = [str(UKBENCH / "images" / f"ukbench{i:05d}.jpg") for i in range(16)]
        index = Index.build(paths, FeatureExtractor("rootsift"), n_words=1000,
                            random_state=0)
        folder = tmp_path / "ukbench-index"
        index.save(folder)
        return folder, paths[1], {Path(p).name for p in paths[:4]}
    folder = tmp_path / "index"
    trained_index.save(folder)
    query = tmp_path / "photo of texture 5.png"
    cv2.imwrite(str(query), warped(textured_image(5), rotation=12, scale=0.9)[0])
    return folder, str(query), {"texture_05.png"}


needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
           "(.ci/run does)")


@contextlib.contextmanager
def page_of(folder):
    """The service of index ``folder`` and its page, loaded in headless Chromium
    (the driver, stopped after)."""
    pytest.importorskip("selenium", reason="the browser test needs selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(folder)
    driver = browser()
    try:
        driver.get(server.url + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "images" in d.find_element(By.ID, "stats").text)
        yield driver
    finally:
        driver.quit()
        server.stop()


def search_on_page(driver, path) -> list:
    """Upload ``path`` on the page; its result cards, once shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(os.path.abspath(path))
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results li.card"))
    return driver.find_elements(By.CSS_SELECTOR, "#results li.card")


@needs_browser
def test_the_page_in_a_real_browser(tmp_path, trained_index):
    folder, query, expected = photos_and_query(tmp_path, trained_index)
    with page_of(folder) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        cards = search_on_page(driver, query)
        names = [Path(card.get_attribute("data-name")).name for card in cards]
        assert expected <= set(names[:len(expected)]), names
        assert "results in" in driver.find_element(By.ID, "timing").text
        # the page shows the service's decision: the query is (a copy of) the
        # first result
        assert cards[0].find_element(By.CSS_SELECTOR, ".badge").text.startswith("copy")
        # thumbnails loaded, and a result opens its match picture
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"))
        cards[0].click()
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const i = document.getElementById('viewer-image');"
            "return document.getElementById('viewer').open && i.complete"
            " && i.naturalWidth > 0"))
        # a bad file gets the service's message, shown on the page
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image at all")
        driver.find_element(By.CSS_SELECTOR, "#viewer .close").click()
        driver.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not an image" in driver.find_element(By.ID, "error").text


@needs_browser
def test_the_page_says_a_thumbnail_matched_at_twice_its_size(tmp_path, trained_index):
    """A 64-pixel thumbnail of a photo of texture 5 matches it best through its
    features at twice its size (tests/test_decision.py): the page's badge says
    so, as it says "mirror"."""
    folder = tmp_path / "index"
    trained_index.save(folder)
    photo = warped(textured_image(5), rotation=12, scale=0.9)[0]
    thumb = tmp_path / "thumb.png"
    cv2.imwrite(str(thumb), cv2.resize(photo, (64, 64 * photo.shape[0] // photo.shape[1]),
                                       interpolation=cv2.INTER_AREA))
    with page_of(folder) as driver:
        from selenium.webdriver.common.by import By

        card = search_on_page(driver, thumb)[0]
        assert Path(card.get_attribute("data-name")).name == "texture_05.png"
        assert card.find_element(By.CSS_SELECTOR, ".badge").text.startswith(
            "copy (at 2x)")
