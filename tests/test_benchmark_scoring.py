"""How benchmarks/duplicates.py judges found groups against planted groups and
Caltech-101's labelled own copies (no data needed: names only)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name):
    """A script of benchmarks/ loaded by its path: the folder is not a package
    (the script puts its own folder on the path for its helpers)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}",
                                                  BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


duplicates = _benchmark("duplicates")

DATA = "data/caltech101/101_ObjectCategories"
NAMES = [f"{DATA}/{n}" for n in (
    "cat/image_0001.jpg", "cat/image_0002.jpg", "cat/image_0003.jpg",
    "dog/image_0001.jpg", "dog/image_0002.jpg", "owl/image_0001.jpg",
    "owl/image_0002.jpg", "owl/image_0003.jpg")] + [
    "work/planted-0-2/0000_mirror.jpg", "work/planted-0-2/0001_crop20.jpg",
    "work/planted-0-2/0001_jpeg10.jpg"]
CAT1, CAT2, CAT3, DOG1, DOG2, OWL1, OWL2, OWL3, COPY0, COPY1A, COPY1B = NAMES
PLANTED = [[CAT1, COPY0], [DOG1, COPY1A, COPY1B]]
#: cat 1 and 2 show one picture; owl 1 and 2 too (no original among them)
OWN = [["cat/image_0001.jpg", "cat/image_0002.jpg"],
       ["owl/image_0001.jpg", "owl/image_0002.jpg"]]


def found(*groups):
    return [SimpleNamespace(ids=[NAMES.index(n) for n in g]) for g in groups]


def test_planted_groups_take_their_originals_own_copies():
    planted, own = duplicates.labelled_truth(PLANTED, NAMES, OWN)
    assert planted == [frozenset({CAT1, CAT2, COPY0}),
                       frozenset({DOG1, COPY1A, COPY1B})]
    assert own == {frozenset({OWL1, OWL2})}


def test_planted_groups_whose_originals_show_one_picture_merge():
    planted, own = duplicates.labelled_truth(
        PLANTED, NAMES, OWN + [["cat/image_0002.jpg", "dog/image_0001.jpg"]])
    whole = frozenset({CAT1, CAT2, COPY0, DOG1, COPY1A, COPY1B})
    assert planted == [whole, whole]
    assert own == {frozenset({OWL1, OWL2})}


def test_names_by_id_as_an_index_gives_them():
    by_id = dict(enumerate(NAMES))  # Index.names is a mapping id -> name
    assert duplicates.labelled_truth(PLANTED, by_id, OWN) == duplicates.labelled_truth(
        PLANTED, NAMES, OWN)


def test_labelled_files_outside_the_collection_are_left_out():
    names = [n for n in NAMES if n != OWL2]
    planted, own = duplicates.labelled_truth(PLANTED, names, OWN)
    assert own == set()  # one owl left: no group


def test_score_counts_exact_truth_groups_only():
    groups = found([CAT1, CAT2, COPY0],  # right: with its own copy
                   [DOG1, COPY1A],  # a copy missing: wrong
                   [OWL1, OWL2, OWL3])  # a different picture added: wrong
    result = duplicates.score(groups, PLANTED, NAMES, OWN)
    assert result["right"] == 1
    assert result["precision"] == round(1 / 3, 4)
    assert result["recall"] == 0.5
    assert (result["own_copy_groups"], result["own_copy_groups_found"]) == (1, 0)
    assert result["groups_of_different_pictures"] == 1
    # planted alone, Caltech-101's own copies ignored: the cat group is not exact
    assert (result["exact"], result["strict_recall"]) == (0, 0.0)


def test_score_of_the_right_answer_is_one():
    groups = found([CAT1, CAT2, COPY0], [DOG1, COPY1A, COPY1B], [OWL1, OWL2])
    result = duplicates.score(groups, PLANTED, NAMES, OWN)
    assert (result["precision"], result["recall"]) == (1.0, 1.0)
    assert result["groups_of_different_pictures"] == 0


def test_the_labelled_file_is_well_formed():
    labels = json.loads(duplicates.OWN_COPIES.read_text())
    members = [m for s in labels["copies"] for m in s]
    assert len(members) == len(set(members)), "a file in two sets: merge them"
    assert all(len(s) >= 2 for s in labels["copies"])
    looked = {m for g in labels["looked_at"] for m in g}
    assert set(members) <= looked, "every labelled file was looked at"
    assert all(len(Path(m).parts) == 2 and m.endswith(".jpg") for m in members)


def test_the_clean_collection_keeps_one_file_of_each_labelled_picture():
    # --clean: what is left of Caltech-101 holds no labelled copy of itself
    sets = duplicates.load_own_copies()
    left_out = duplicates.own_copies_left_out()
    kept = [[m for m in s if m not in left_out] for s in sets]
    assert all(len(k) == 1 for k in kept)
    assert len(left_out) == sum(len(s) for s in sets) - len(sets)


def test_planted_copies_of_other_originals_are_not_used_again(tmp_path):
    duplicates.claim_planted_folder(tmp_path, ["a/1.jpg", "b/2.jpg"])
    duplicates.claim_planted_folder(tmp_path, ["a/1.jpg", "b/2.jpg"])  # the same
    with pytest.raises(SystemExit, match="other originals"):
        duplicates.claim_planted_folder(tmp_path, ["a/1.jpg", "c/3.jpg"])


def test_planted_copies_of_unknown_originals_are_not_used_again(tmp_path):
    (tmp_path / "0000_jpeg10.jpg").write_bytes(b"made before originals were recorded")
    with pytest.raises(SystemExit, match="not which originals"):
        duplicates.claim_planted_folder(tmp_path, ["a/1.jpg"])


def test_a_saved_index_is_used_again_only_for_the_same_files():
    digest = duplicates.paths_digest(["a/1.jpg", "b/2.jpg"])
    assert digest == duplicates.paths_digest(["a/1.jpg", "b/2.jpg"])
    assert digest != duplicates.paths_digest(["a/1.jpg", "c/3.jpg"])
    assert digest != duplicates.paths_digest(["b/2.jpg", "a/1.jpg"])
