"""Datasets: folder listing, the query/gallery protocol, and the real download
code run against archives served from 127.0.0.1."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from conftest import CALTECH, requires

from cvsearch.datasets import (
    caltech101,
    data_root,
    download_archive,
    image_folder,
    query_gallery,
)

JPEG = b"\xff\xd8\xff\xe0 not really decoded here"


def tarball(members):
    """A .tar.gz of ``{name: bytes}``; a value of the form ('symlink', target)
    makes a link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def caltech_zip(members=None):
    members = members or {
        "101_ObjectCategories/accordion/image_0001.jpg": JPEG,
        "101_ObjectCategories/accordion/image_0002.jpg": JPEG,
        "101_ObjectCategories/yin_yang/image_0001.jpg": JPEG,
        "101_ObjectCategories/BACKGROUND_Google/image_0001.jpg": JPEG,
        "101_ObjectCategories/BACKGROUND_Google/tmp": JPEG,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("caltech-101/101_ObjectCategories.tar.gz", tarball(members))
        archive.writestr("caltech-101/show_annotations.m", b"% not used")
    return buffer.getvalue()


class Server:
    """Serves one body at /archive.zip; ``cut`` sends only that many bytes while
    announcing the full length."""

    def __init__(self, body, cut=None):
        self.body, self.cut, self.requests = body, cut, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body[:server.cut])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/archive.zip"
        self.md5 = hashlib.md5(body).hexdigest()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(body, cut=None):
        servers.append(Server(body, cut))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_checks_unpacks_and_is_cached(serve, tmp_path):
    server = serve(caltech_zip())
    seen = []
    data = caltech101(tmp_path, url=server.url, md5=server.md5,
                      progress=lambda done, total: seen.append((done, total)))
    assert data.classes == ["accordion", "yin_yang"]  # no BACKGROUND_Google
    assert data.labels.tolist() == [0, 0, 1]
    assert all(p.startswith(str(tmp_path / "caltech101" / "101_ObjectCategories"))
               for p in data.paths)
    assert seen[-1] == (len(server.body), len(server.body))
    assert leftovers(tmp_path / "caltech101") == ["101_ObjectCategories"]
    # Second call: the images are there, no download.
    again = caltech101(tmp_path, url=server.url, md5=server.md5,
                       include_background=True)
    assert server.requests == 1
    assert "BACKGROUND_Google" in again.classes
    # the extension-less BACKGROUND_Google/tmp is not listed as an image
    assert not any(p.endswith("tmp") for p in again.paths)


def test_bad_checksum_leaves_nothing(serve, tmp_path):
    server = serve(caltech_zip())
    with pytest.raises(ValueError, match="MD5"):
        caltech101(tmp_path, url=server.url, md5="0" * 32)
    assert leftovers(tmp_path / "caltech101") == []


def test_interrupted_download_leaves_nothing(serve, tmp_path):
    body = caltech_zip()
    server = serve(body, cut=len(body) // 2)
    with pytest.raises(OSError, match="run again"):
        caltech101(tmp_path, url=server.url, md5=hashlib.md5(body).hexdigest())
    assert leftovers(tmp_path / "caltech101") == []


@pytest.mark.parametrize("member", [
    "../escaped.txt", "101_ObjectCategories/../../escaped.txt", "/tmp/escaped.txt"])
def test_hostile_member_paths_are_refused(serve, tmp_path, member):
    server = serve(caltech_zip({"101_ObjectCategories/a/image_0001.jpg": JPEG,
                                member: b"gotcha"}))
    target = tmp_path / "deep" / "root"
    with pytest.raises(ValueError, match="outside the target"):
        caltech101(target, url=server.url, md5=server.md5)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(target / "caltech101") == []


def test_links_are_refused(serve, tmp_path):
    link = ("symlink", "/etc/passwd")
    server = serve(caltech_zip({"101_ObjectCategories/a/image_0001.jpg": JPEG,
                                "101_ObjectCategories/a/link.jpg": link}))
    with pytest.raises(ValueError, match="links"):
        caltech101(tmp_path, url=server.url, md5=server.md5)
    assert leftovers(tmp_path / "caltech101") == []


def test_archive_without_the_tarball_is_an_error(serve, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("other.txt", b"x")
    server = serve(buffer.getvalue())
    with pytest.raises(ValueError, match="no 101_ObjectCategories.tar.gz"):
        download_archive(server.url, server.md5, tmp_path,
                         member="101_ObjectCategories.tar.gz",
                         folder="101_ObjectCategories")
    assert leftovers(tmp_path) == []


def test_environment_variable_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("CVSEARCH_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(FileNotFoundError, match="CVSEARCH_DATA"):
        caltech101(download=False)
    folder = tmp_path / "101_ObjectCategories" / "chair"
    folder.mkdir(parents=True)
    (folder / "image_0001.jpg").write_bytes(JPEG)
    assert caltech101(download=False).classes == ["chair"]


def test_image_folder_and_query_gallery(tmp_path):
    for split, cls, name in [("q", "cat", "a.jpg"), ("q", "dog", "b.png"),
                             ("g", "cat", "c.jpg"), ("g", "dog", "d.JPG"),
                             ("g", "dog", "notes.txt"), ("g", "owl", "e.jpg"),
                             ("x", "sub", "f.jpg")]:
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / cls / name).write_bytes(JPEG)
    protocol = query_gallery(tmp_path / "q", tmp_path / "g", tmp_path / "x")
    assert protocol.queries.classes == ["cat", "dog"]
    names = [p.rsplit("/", 1)[-1] for p in protocol.gallery.paths]
    assert names == ["c.jpg", "d.JPG", "e.jpg", "f.jpg"]
    # owl has no query: never relevant, like the distractor
    assert protocol.gallery.labels.tolist() == [0, 1, -1, -1]
    with pytest.raises(ValueError, match="no gallery images"):
        query_gallery(tmp_path / "g", tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder(tmp_path / "nowhere")


@requires(CALTECH)
def test_the_shared_caltech101():
    data = caltech101(CALTECH.parent, download=False)
    assert len(data.paths) == 8677 and len(data.classes) == 101
    assert np.bincount(data.labels).min() == 31  # inline_skate
    assert len(caltech101(CALTECH.parent, download=False,
                          include_background=True).paths) == 9144


def test_unpacked_bytes_and_members_are_capped(serve, tmp_path):
    """A tarball bomb (megabytes of zeros from a few kilobytes) and an archive of
    too many members stop at the limits, and leave nothing behind."""
    bomb = caltech_zip({"101_ObjectCategories/a/image_0001.jpg": bytes(8 << 20)})
    assert len(bomb) < 100_000
    server = serve(bomb)
    with pytest.raises(ValueError, match="max_unpacked_bytes"):
        download_archive(server.url, server.md5, tmp_path,
                         member="101_ObjectCategories.tar.gz",
                         folder="101_ObjectCategories", max_unpacked_bytes=1 << 20)
    many = caltech_zip({f"101_ObjectCategories/a/image_{i:04d}.jpg": JPEG
                        for i in range(50)})
    server = serve(many)
    with pytest.raises(ValueError, match="max_members"):
        download_archive(server.url, server.md5, tmp_path,
                         member="101_ObjectCategories.tar.gz",
                         folder="101_ObjectCategories", max_members=20)
    assert leftovers(tmp_path) == []


def test_oversized_download_is_refused(serve, tmp_path):
    body = caltech_zip()
    server = serve(body)
    with pytest.raises(ValueError, match="max_download_bytes"):
        download_archive(server.url, server.md5, tmp_path,
                         member="101_ObjectCategories.tar.gz",
                         folder="101_ObjectCategories",
                         max_download_bytes=len(body) - 1)
    assert leftovers(tmp_path) == []


def test_work_folders_of_killed_downloads_are_removed(serve, tmp_path):
    """A download killed with SIGKILL cannot clean up; the next one does, and
    leaves the work folder of a download still running alone."""
    import os
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)  # that process has exited
    target = tmp_path / "caltech101"
    (target / f".cvsearch-download-{dead_pid}-abc" / "unpacked").mkdir(parents=True)
    (target / f".cvsearch-download-{dead_pid}-abc" / "archive.zip").write_bytes(b"x")
    alive = target / f".cvsearch-download-{os.getppid()}-def"
    alive.mkdir()
    server = serve(caltech_zip())
    caltech101(tmp_path, url=server.url, md5=server.md5)
    assert leftovers(target) == [alive.name, "101_ObjectCategories"]
