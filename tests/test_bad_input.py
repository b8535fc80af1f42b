"""The bad-input corpus (tests/bad_corpus.py) through every way in: the reader,
Index.add, Index.build, Index.query and the command line. Nothing crashes or hangs,
no good image of a batch is lost, every rejection names its file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_corpus import INDEXED, REJECTED, make_corpus

from cvsearch import FeatureExtractor, Index, cli
from cvsearch.io import READ_ERRORS, read_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "files")


def good(corpus):
    return [c for c in corpus if c.expected == INDEXED]


def bad(corpus):
    return [c for c in corpus if c.expected == REJECTED]


def assert_names_file(message: str, case):
    assert case.path in message, (case.kind, message)
    assert case.message in message, (case.kind, message)


def test_corpus_covers_thirty_kinds_both_ways(corpus):
    assert len({c.kind for c in corpus}) == len(corpus) >= 30
    assert len(good(corpus)) >= 15 and len(bad(corpus)) >= 15


def test_reader_reads_every_image_and_refuses_every_other_file(corpus):
    for case in corpus:
        if case.expected == INDEXED:
            image = read_image(case.path)
            assert image.ndim == 2 and image.dtype == "uint8"
            if case.shape is not None:
                assert image.shape == case.shape, case.kind
        else:
            with pytest.raises(READ_ERRORS) as error:
                read_image(case.path)
            assert_names_file(str(error.value), case)


@pytest.fixture
def empty_index(trained_index):
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    return index


def test_add_keeps_every_good_image_of_a_mixed_batch(corpus, empty_index, tmp_path):
    skipped = empty_index.add([c.path for c in corpus])
    assert sorted(empty_index.names.values()) == sorted(c.path for c in good(corpus))
    reasons = {s.name: s.reason for s in skipped}
    assert sorted(reasons) == sorted(c.path for c in bad(corpus))
    for case in bad(corpus):
        assert_names_file(reasons[case.path], case)
    # every name, the undecodable non-UTF-8 one too, survives save and load
    empty_index.save(tmp_path / "index")
    assert Index.load(tmp_path / "index").names == empty_index.names


def test_build_over_the_corpus(corpus, image_files):
    paths = list(image_files[:4]) + [c.path for c in corpus]
    index = Index.build(paths, FeatureExtractor("sift"), n_words=50, random_state=0,
                        train_images=len(paths))
    expected = image_files[:4] + [c.path for c in good(corpus)]
    assert sorted(index.names.values()) == sorted(expected)
    assert sorted(s.name for s in index.skipped_) == sorted(c.path for c in bad(corpus))


def test_build_in_worker_processes_gives_the_same_index(corpus, image_files):
    paths = list(image_files[:4]) + [c.path for c in corpus]
    serial = Index.build(paths, FeatureExtractor("sift"), n_words=50, random_state=0)
    parallel = Index.build(paths, FeatureExtractor("sift"), n_words=50, random_state=0,
                           n_jobs=2)
    assert parallel.names == serial.names
    assert [s.name for s in parallel.skipped_] == [s.name for s in serial.skipped_]


def test_query_answers_or_names_the_file(corpus, trained_index):
    for case in corpus:
        if case.expected == INDEXED:
            scores, ids = trained_index.query(case.path, k=3, rerank=3)
            assert len(ids) == 3
        else:
            with pytest.raises(READ_ERRORS) as error:
                trained_index.query(case.path, k=3)
            assert_names_file(str(error.value), case)


def run_cli(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "cvsearch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          errors="backslashreplace")
    return done.returncode, done.stdout, done.stderr


def test_command_line_over_the_corpus(corpus, image_files, trained_index, tmp_path):
    # a folder holding the corpus: every good image indexed, every other file
    # named (the folder "directory.jpg" is searched, not a file, so not named);
    # links are not followed in a folder (a link to one of its files would index
    # it twice), each is named
    folder = Path(corpus[0].path).parent
    files = [c for c in corpus if c.kind != "directory"]
    links = {c.path for c in files if os.path.islink(c.path)}
    code, out, err = run_cli("index", folder, "-o", tmp_path / "idx", "--words", "100",
                             "--features", "sift", "--json", "-q", cwd=tmp_path)
    assert code == 0 and "Traceback" not in err, err
    summary = json.loads(out)
    assert links and summary["images"] == len([c for c in good(files)
                                               if c.path not in links])
    assert {s["name"] for s in summary["skipped"]} == {c.path for c in bad(files)} | links

    # every file by name, added to an index of other images: the good ones are
    # added, each bad one is named with its reason
    trained_index.save(tmp_path / "idx2")
    code, out, err = run_cli("add", tmp_path / "idx2", *[c.path for c in files],
                             "--json", cwd=tmp_path)
    assert code == 0 and "Traceback" not in err, err
    summary = json.loads(out)
    assert summary["added"] == len(good(files))
    assert summary["images"] == len(image_files) + len(good(files))
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {c.path for c in bad(files)}
    for case in bad(files):
        assert case.message in reasons[case.path], (case.kind, reasons[case.path])


def test_command_line_query_of_each_bad_file_is_one_line(corpus, tmp_path, capsys,
                                                          trained_index):
    trained_index.save(tmp_path / "idx")
    for case in bad(corpus):
        code = cli.main(["query", str(tmp_path / "idx"), case.path])
        out, err = capsys.readouterr()
        assert code == 1 and out == "", case.kind
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "error:" in lines[0] and case.message in lines[0], err
        assert case.path in lines[0] or os.path.basename(case.path) in lines[0], err


def test_no_hang_on_a_pipe_in_a_folder(tmp_path):
    """A pipe named like an image, in a folder being indexed, is skipped at once
    (opening it for reading would otherwise wait for a writer forever)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    from cvsearch.io import find_images, looks_like_image

    os.mkfifo(tmp_path / "pipe.png")
    assert not looks_like_image(tmp_path / "pipe.png")
    assert find_images(tmp_path) == ([], [str(tmp_path / "pipe.png")])
