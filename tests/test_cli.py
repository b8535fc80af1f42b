"""End to end: the command line on real photos (UKBench, when the shared data is
there) and on synthetic images (always).

Commands run in this process, through ``cvsearch.cli.main`` with its own standard
streams, working folder and warnings: a subprocess per command spent most of these
tests starting Python and importing (one to three seconds a command, scikit-learn
most of it). The real ``python -m cvsearch`` runs in a subprocess where the process
itself is the point: what a command imports, here; exit codes, concurrent writers,
undecodable names and the service, in their own test files.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import pytest
from conftest import UKBENCH, requires

from cvsearch.cli import main

#: Python's own warning filters, as a fresh interpreter has them
FRESH_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"),
                         ("ignore", DeprecationWarning, ""),
                         ("ignore", PendingDeprecationWarning, ""),
                         ("ignore", ImportWarning, ""), ("ignore", ResourceWarning, "")]


def run(*args, cwd):
    """Run ``cvsearch ARGS`` in the folder ``cwd``; return (exit code, stdout,
    stderr). Warnings print to its stderr, as in a fresh interpreter."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in FRESH_WARNING_FILTERS:
                warnings.filterwarnings(action, category=category, module=module,
                                        append=True)
            warnings.showwarning = _print_warning
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as done:  # argparse: --help, usage errors
                code = done.code
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def assert_one_line_error(code, err, *needles, expected_code=1):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or expected_code == 2, err  # argparse adds its usage line
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Photos of objects 0-2 in photos/ (with a text file and a truncated JPEG),
    object 3 in more/."""
    root = tmp_path_factory.mktemp("cli")
    (root / "photos" / "nested").mkdir(parents=True)
    (root / "more").mkdir()
    for i in range(16):
        source = UKBENCH / "images" / f"ukbench{i:05d}.jpg"
        if i >= 12:
            folder = root / "more"
        else:
            folder = root / "photos" / ("nested" if i % 2 else "")
        shutil.copy(source, folder / source.name)
    (root / "photos" / "notes.txt").write_text("not a photo")
    data = (UKBENCH / "images" / "ukbench00020.jpg").read_bytes()
    (root / "photos" / "broken.jpg").write_bytes(data[:len(data) // 3])
    return root


@requires(UKBENCH)
def test_index_query_add_remove_info(workdir):
    code, out, err = run("index", "photos", "-o", "idx", "--words", "500", "--json",
                         "--jobs", "2", cwd=workdir)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["images"] == 12
    skipped = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"photos/notes.txt", "photos/broken.jpg"}
    assert "not an image" in skipped["photos/notes.txt"]

    code, out, err = run("query", "idx", "photos/ukbench00002.jpg", "-k", "4",
                         "--rerank", "8", "--json", "--show", "grid.png",
                         "--match-rank", "2",
                         "--matches", "match.png", cwd=workdir)
    assert code == 0, err
    results = json.loads(out)["results"]
    top4 = {r["name"].rsplit("/", 1)[-1] for r in results}
    assert top4 == {f"ukbench{i:05d}.jpg" for i in range(4)}
    assert results[0]["inliers"] >= 20 and results[0]["rank"] == 1
    assert cv2.imread(str(workdir / "grid.png")).shape[1] > 4 * 200
    assert cv2.imread(str(workdir / "match.png")) is not None

    code, out, err = run("query", "idx", "photos/ukbench00002.jpg", "-k", "3",
                         cwd=workdir)
    assert code == 0 and out.splitlines()[0].split() == ["rank", "score", "inliers",
                                                         "name"]
    assert len(out.splitlines()) == 4

    code, out, err = run("add", "idx", "more", "--json", cwd=workdir)
    assert code == 0, err
    assert json.loads(out) == {"index": "idx", "added": 4, "images": 16, "skipped": []}
    code, out, _ = run("query", "idx", "more/ukbench00013.jpg", "-k", "4", "--rerank",
                       "8", "--json", cwd=workdir)
    # the added photos are searched with their keypoints: another view verified
    results = json.loads(out)["results"]
    assert results[0]["name"] == "more/ukbench00013.jpg"
    assert any(r["name"].startswith("more/") and r["decision"] == "object"
               for r in results[1:])

    code, out, err = run("remove", "idx", "more/ukbench00012.jpg",
                         "more/ukbench00014.jpg", "--json", cwd=workdir)
    assert code == 0, err
    assert json.loads(out)["images"] == 14
    code, out, _ = run("query", "idx", "more/ukbench00013.jpg", "-k", "14", "--json",
                       cwd=workdir)
    names = [r["name"] for r in json.loads(out)["results"]]
    assert "more/ukbench00012.jpg" not in names and len(names) == 14

    code, out, err = run("info", "idx", "--json", cwd=workdir)
    assert code == 0, err
    info = json.loads(out)
    assert info["images"] == 14 and info["words"] == 500
    assert info["features"]["method"] == "rootsift" and info["format_version"] == 2
    assert info["disk_bytes"] > 0
    code, out, _ = run("info", "idx", cwd=workdir)
    assert "14 (" in out and "500 words" in out


@requires(UKBENCH)
def test_error_paths(workdir):
    code, _, err = run("index", "photos", "-o", "bad-idx", "--words", "300", "-q",
                       cwd=workdir)
    assert code == 0, err
    assert_one_line_error(*run("query", "nowhere", "photos/ukbench00000.jpg",
                               cwd=workdir)[::2], "nowhere", "no such index")
    assert_one_line_error(*run("query", "bad-idx", "missing.jpg", cwd=workdir)[::2],
                          "missing.jpg")
    assert_one_line_error(*run("query", "bad-idx", "photos/notes.txt",
                               cwd=workdir)[::2], "notes.txt", "cannot decode")
    assert_one_line_error(*run("query", "bad-idx", "photos/broken.jpg",
                               cwd=workdir)[::2], "broken.jpg")
    assert_one_line_error(*run("index", "photos", "-o", "bad-idx", cwd=workdir)[::2],
                          "already holds an index", "--overwrite")
    assert_one_line_error(*run("index", "nowhere", "-o", "x", cwd=workdir)[::2],
                          "nowhere")
    assert_one_line_error(*run("index", "more", "-o", "few", "-q", cwd=workdir)[::2],
                          "n_words=20000", "--words")
    assert not (workdir / "few").exists()
    assert_one_line_error(*run("add", "bad-idx", "nowhere.jpg", cwd=workdir)[::2],
                          "nowhere.jpg")
    # an unknown name changes nothing
    assert_one_line_error(*run("remove", "bad-idx", "photos/ukbench00000.jpg",
                               "no-such-name", cwd=workdir)[::2], "no-such-name")
    assert json.loads(run("info", "bad-idx", "--json", cwd=workdir)[1])["images"] == 12
    # bad options: argparse's exit code 2 and a usage line
    assert_one_line_error(*run("query", "bad-idx", "photos/ukbench00000.jpg", "-k", "0",
                               cwd=workdir)[::2], "-k", expected_code=2)
    assert_one_line_error(*run("index", "photos", "-o", "y", "--features", "surf",
                               cwd=workdir)[::2], "surf", expected_code=2)
    assert_one_line_error(*run("index", "photos", "-o", "y", "--power", "3", "-q",
                               cwd=workdir)[::2], "power")
    assert_one_line_error(*run("index", "photos", "-o", "y", "--tf-power", "0", "-q",
                               cwd=workdir)[::2], "tf_power")
    # a tampered index names the file
    database = next((workdir / "bad-idx").glob("seg-post_rows-*"))
    data = bytearray(database.read_bytes())
    data[len(data) // 2] ^= 0xFF
    database.write_bytes(bytes(data))
    assert_one_line_error(*run("query", "bad-idx", "photos/ukbench00000.jpg",
                               cwd=workdir)[::2], database.name)
    assert_one_line_error(*run("info", "bad-idx", cwd=workdir)[::2], database.name)


def test_help_lists_every_option_with_its_default():
    for command in ("index", "add", "remove", "query", "info", "serve"):
        code, out, _ = run(command, "--help", cwd=".")
        assert code == 0
    code, out, _ = run("serve", "--help", cwd=".")
    out = " ".join(out.split())  # help lines wrap anywhere
    for option in ("--host", "--port", "--workers", "--token", "--max-upload-mb"):
        assert option in out
    assert "(default: 127.0.0.1)" in out and "(default: 20)" in out
    code, out, _ = run("index", "--help", cwd=".")
    for option in ("--features", "--words", "--jobs", "--seed", "--max-side",
                   "--dense-step", "--power", "--tf-power", "--pyramid"):
        assert option in out
    assert "(default: 20000)" in out and "(default: rootsift)" in out


def test_a_small_index_is_searched_without_loading_scikit_learn_or_numba(
        trained_index, image_files, tmp_path):
    """A command's start is its imports: scikit-learn (for training) and numba
    (for large stores) cost about a second each, and a search or an ``info`` of
    a small index needs neither, nor does the error for a missing index."""
    trained_index.save(tmp_path / "idx")
    probe = ("import sys, runpy; sys.argv = ['cvsearch'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('cvsearch', run_name='__main__')\n"
             "except SystemExit as done:\n    code = done.code\n"
             "print(code, 'sklearn' in sys.modules, 'numba' in sys.modules)")
    for args in (["query", "idx", image_files[3], "-k", "2"],
                 ["query", "nowhere", image_files[3]], ["info", "idx"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        code, sklearn, numba = done.stdout.split()[-3:]
        assert (sklearn, numba) == ("False", "False"), (args, done.stderr)
        assert code == ("1" if "nowhere" in args else "0"), done.stderr


def test_synthetic_round_trip_and_errors_need_no_data(image_files, tmp_path):
    """The command line on synthetic images: a clean clone without the shared data
    still runs it end to end."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in image_files[:10]:
        shutil.copy(path, photos)
    (photos / "notes.txt").write_text("not a photo")
    # neither a hidden folder nor a link (here to a file already there) is indexed
    (photos / ".hidden").mkdir()
    shutil.copy(image_files[11], photos / ".hidden")
    (photos / "link.png").symlink_to(photos / Path(image_files[0]).name)
    code, out, err = run("index", photos, "-o", "idx", "--words", "200", "--features",
                         "sift", "--max-side", "1024", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["images"] == 10
    assert {"name": str(photos / "link.png"), "reason": "a symbolic link: folders are "
            "indexed without following links (pass the link itself to index what it "
            "points to)"} in json.loads(out)["skipped"]
    code, out, err = run("query", "idx", image_files[3], "-k", "2", "--rerank", "5",
                         "--json", cwd=tmp_path)
    assert code == 0, err
    top = json.loads(out)["results"][0]
    assert top["name"].endswith("texture_03.png") and top["inliers"] >= 20
    code, out, err = run("query", "idx", image_files[3], "-k", "2", "--rerank", "5",
                         "--expand", "2", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["results"][0] == top  # the verified result stays first
    assert_one_line_error(*run("query", "idx", image_files[3], "--expand", "2",
                               cwd=tmp_path)[::2], "expand needs rerank")
    code, out, err = run("add", "idx", image_files[10], tmp_path / "gone.png", "--json",
                         cwd=tmp_path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["added"] == 1 and summary["skipped"] == [
        {"name": str(tmp_path / "gone.png"), "reason": "no such file or folder"}]
    assert_one_line_error(*run("query", "idx", photos / "notes.txt",
                               cwd=tmp_path)[::2], "notes.txt", "cannot decode")
    assert_one_line_error(*run("query", "nowhere", image_files[0], cwd=tmp_path)[::2],
                          "no such index")
    assert_one_line_error(*run("serve", "nowhere", cwd=tmp_path)[::2], "no such index")
    assert_one_line_error(*run("serve", photos, cwd=tmp_path)[::2], "no index there")
    assert_one_line_error(*run("serve", "idx", "--port", "99999", cwd=tmp_path)[::2],
                          "port 99999", "1 to 65535")
    # a name given twice is one image removed
    name = str(photos / Path(image_files[4]).name)
    code, out, err = run("remove", "idx", name, name, cwd=tmp_path)
    assert code == 0 and "removed 1 image;" in out, err
    # read limits given to index are kept with the index: add and query use them
    code, _, err = run("index", photos, "-o", "strict", "--words", "200", "--features",
                       "sift", "--max-pixels", "300000", "-q", cwd=tmp_path)
    assert code == 0, err  # 480 x 480 images: 230,400 pixels each
    large = tmp_path / "large.png"
    cv2.imwrite(str(large), cv2.resize(cv2.imread(image_files[0]), (700, 700)))
    assert_one_line_error(*run("query", "strict", large, cwd=tmp_path)[::2],
                          "large.png", "limit of 300,000")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Eight synthetic textures in two class folders, and a warped copy of one."""
    from conftest import textured_image, warped

    root = tmp_path_factory.mktemp("catalog")
    for i in range(8):
        folder = root / "cat" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"t{i}.png"), textured_image(i))
    cv2.imwrite(str(root / "query.png"), warped(textured_image(3), 20, 0.8)[0])
    return root


def test_a_global_index_from_the_command_line(catalog):
    """index --method cnn, query (alone and verified by a bag-of-words index of
    the same images), add, remove and info, on a CNN-descriptor index."""
    code, out, err = run("index", "cat", "-o", "g", "--method", "cnn", "--json",
                         "--overwrite", cwd=catalog)
    assert code == 0, err
    assert json.loads(out)["images"] == 8
    code, out, err = run("query", "g", "cat/a/t2.png", "-k", "3", "--json", cwd=catalog)
    assert code == 0, err
    first = json.loads(out)["results"][0]
    assert first["name"] == "cat/a/t2.png" and first["score"] > 0.999
    assert first["inliers"] is None
    code, _, err = run("index", "cat", "-o", "l", "--words", "300", "--overwrite",
                       cwd=catalog)
    assert code == 0, err
    code, out, err = run("query", "g", "query.png", "-k", "3", "--rerank", "8",
                         "--verify-with", "l", "--json", "--matches", "m.png",
                         cwd=catalog)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["name"] == "cat/b/t3.png" and results[0]["inliers"] >= 30
    assert all(r["inliers"] < 10 for r in results[1:])
    assert cv2.imread(str(catalog / "m.png")) is not None
    code, out, err = run("add", "g", "query.png", "--json", cwd=catalog)
    assert code == 0 and json.loads(out)["images"] == 9, err
    code, out, err = run("remove", "g", "query.png", "--json", cwd=catalog)
    assert code == 0 and json.loads(out)["images"] == 8, err
    code, out, err = run("info", "g", "--json", cwd=catalog)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "global" and info["dim"] == 1280, err
    assert info["images"] == 8 and info["disk_bytes"] > 8 * 1280 * 4


def test_global_index_mistakes_are_one_line_errors(catalog):
    code, _, err = run("index", "cat", "-o", "g2", "--method", "cnn", "--overwrite",
                       "--flip-average", cwd=catalog)
    assert code == 0, err
    code, out, err = run("info", "g2", "--json", cwd=catalog)
    assert code == 0 and "flip_average=True" in json.loads(out)["describer"], err
    code, _, err = run("query", "g2", "query.png", "--rerank", "5", cwd=catalog)
    assert_one_line_error(code, err, "--verify-with")
    code, _, err = run("query", "g2", "query.png", "--rerank", "5", "--verify-with",
                       "g2", cwd=catalog)
    assert_one_line_error(code, err, "has no local features")
    code, _, err = run("query", "g2", "query.png", "--expand", "3", cwd=catalog)
    assert_one_line_error(code, err, "--expand is for bag-of-words indexes")
    code, _, err = run("index", "cat/a", "-o", "g3", "--method", "cnn", "--projection",
                       "triplet", cwd=catalog)
    assert_one_line_error(code, err, "one sub-folder", "found 1")


def test_relative_names_are_found_from_anywhere(image_files, tmp_path):
    """An index built from 'photos/' keeps where it was built: its relative
    names still find their files when it is served or grown elsewhere."""
    from cvsearch import Index
    from cvsearch.service import Library, Settings

    photos = tmp_path / "work" / "photos"
    photos.mkdir(parents=True)
    for path in image_files[:6]:
        shutil.copy(path, photos)
    code, _, err = run("index", "photos", "-o", "idx", "--words", "100", "--features",
                       "sift", "-q", cwd=tmp_path / "work")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(image_files[7], elsewhere / "new.png")
    code, _, err = run("add", tmp_path / "work" / "idx", "new.png", "-q", cwd=elsewhere)
    assert code == 0, err
    index = Index.load(tmp_path / "work" / "idx")
    assert index.images_root == str(tmp_path / "work")
    assert "photos/texture_00.png" in index.names.values()
    assert "../elsewhere/new.png" in index.names.values()
    library = Library(Settings(index_dir=tmp_path / "work" / "idx"))  # cwd: the repo
    assert library.missing_files == 0
    assert all(library.path_of(i).is_file() for i in index.ids.tolist())


def test_the_keypoint_budget_is_shared_from_the_command_line(image_files, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in image_files[:6]:
        shutil.copy(path, photos)
    code, _, err = run("index", photos, "-o", "idx", "--words", "100", "--features",
                       "sift", "--max-keypoints", "160", "-q",
                       cwd=tmp_path)
    assert code == 0, err
    info = json.loads(run("info", "idx", "--json", cwd=tmp_path)[1])
    assert info["features"]["budget_grid"] == 4
    assert info["features"]["min_keypoints"] == 100
    described = run("info", "idx", cwd=tmp_path)[1]
    assert "budget shared over 4 x 4 cells" in described
    assert "lower contrast under 100 keypoints" in described
    code, _, err = run("index", photos, "-o", "one", "--words", "100", "--features",
                       "sift", "--max-keypoints", "160", "--budget-grid", "1",
                       "--min-keypoints", "0", "-q", cwd=tmp_path)
    assert code == 0, err
    described = run("info", "one", cwd=tmp_path)[1]
    assert "budget shared" not in described and "lower contrast" not in described
    code, _, err = run("index", photos, "-o", "bad", "--min-keypoints", "-1", "-q",
                       cwd=tmp_path)
    assert code == 2 and "--min-keypoints: must be >= 0, got -1" in err
    assert_one_line_error(*run("index", photos, "-o", "orb-idx", "--features", "orb",
                               "--budget-grid", "4", "-q", cwd=tmp_path)[::2],
                          "budget_grid")


def test_copies_from_the_command_line(image_files, tmp_path):
    """query says what each result is (a mirrored copy is a copy with --mirror),
    and duplicates groups a folder's copies, names the one to keep, and writes
    its JSON and its report."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in image_files[:8]:
        shutil.copy(path, photos)
    original = cv2.imread(image_files[2])
    cv2.imwrite(str(photos / "copy_small.jpg"), cv2.resize(original, (300, 300)))
    cv2.imwrite(str(photos / "copy_crop.jpg"), original[50:400, 30:420])
    mirrored = tmp_path / "mirrored.jpg"
    cv2.imwrite(str(mirrored), original[:, ::-1])
    code, out, err = run("index", photos, "-o", "idx", "--words", "300", "--features",
                         "sift", "-q", cwd=tmp_path)
    assert code == 0, err
    code, out, err = run("query", "idx", mirrored, "-k", "3", "--rerank", "10",
                         "--mirror", "--json", "--matches", "m.png", cwd=tmp_path)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert results[0]["name"].endswith("texture_02.png")
    assert results[0]["decision"] == "copy" and results[0]["mirrored"]
    assert results[0]["log_nfa"] < -2 and results[0]["coverage"] >= 0.5
    assert results[0]["agreement"] >= 0.8  # the thumbnails agree, mirrored
    assert results[0]["contained"] >= 0.9  # the same frame
    assert results[0]["scale"] == pytest.approx(1.0, rel=0.05)  # and size
    # the copies of the original are mirrored copies too
    assert sorted(Path(r["name"]).name for r in results[1:]) == [
        "copy_crop.jpg", "copy_small.jpg"]
    assert [r["decision"] for r in results] == ["copy"] * 3
    # a thumbnail is searched at twice its size too, and drawn so
    cv2.imwrite(str(tmp_path / "thumb.png"), cv2.resize(original, (96, 96),
                                                          interpolation=cv2.INTER_AREA))
    code, out, err = run("query", "idx", "thumb.png", "-k", "3", "--rerank", "10",
                         "--json", "--matches", "t.png", cwd=tmp_path)
    assert code == 0, err
    top = json.loads(out)["results"][0]
    assert Path(top["name"]).name in ("texture_02.png", "copy_small.jpg",
                                      "copy_crop.jpg") and top["decision"] == "copy"
    assert top["finer"] and (tmp_path / "t.png").is_file()
    code, out, err = run("query", "idx", "thumb.png", "-k", "1", "--rerank", "10",
                         cwd=tmp_path)
    assert code == 0 and "copy (at 2x)" in out, out
    code, out, err = run("query", "idx", image_files[9], "-k", "3", "--rerank", "10",
                         "--mirror", "--json", cwd=tmp_path)
    assert {r["decision"] for r in json.loads(out)["results"]} <= {"none", "unverified"}
    code, out, err = run("query", "idx", mirrored, "-k", "3", "--rerank", "10",
                         cwd=tmp_path)
    assert code == 0 and "decision" in out.splitlines()[0], err
    assert "copy" not in out  # the mirror image is not searched for without --mirror
    code, out, err = run("duplicates", "idx", "--json", "groups.json", "--report",
                         "report.html", "-q", cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0].startswith("1 groups of copies (3 of 10 images)")
    groups = json.loads((tmp_path / "groups.json").read_text())["groups"]
    assert len(groups) == 1 and groups[0]["keep"].endswith("texture_02.png")
    assert sorted(Path(n).name for n in groups[0]["images"]) == [
        "copy_crop.jpg", "copy_small.jpg", "texture_02.png"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure") == 3 and "weakest edge" in page
    assert page.count("data:image/jpeg;base64,") == 4  # three thumbnails, one match
    # the stored words alone (no file read again) find this group too
    code, out, err = run("duplicates", "idx", "--json", "--stored-words", "-q",
                         cwd=tmp_path)
    assert code == 0, err
    assert [g["images"] for g in json.loads(out)["groups"]] == [groups[0]["images"]]
    # a folder of images is indexed in memory first: the same groups
    code, out, err = run("duplicates", photos, "--json", "--words", "300",
                         "--features", "sift", "-q", cwd=tmp_path)
    assert code == 0, err
    assert [sorted(g["images"]) for g in json.loads(out)["groups"]] == \
        [sorted(g["images"]) for g in groups]
    assert_one_line_error(*run("duplicates", "nowhere", cwd=tmp_path)[::2],
                          "no such index folder or folder of images")
