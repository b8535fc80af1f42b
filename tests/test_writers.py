"""One writer at a time: concurrent writers of an index folder never lose an
update, a stale writer is refused, and readers never wait."""

import json
import shutil
import subprocess
import sys
import threading

import pytest

from cvsearch import FeatureExtractor, Index, storage


@pytest.fixture
def saved(trained_index, tmp_path):
    folder = tmp_path / "index"
    index = Index(FeatureExtractor("sift", max_side=1024), n_words=400)
    index.vocabulary = trained_index.vocabulary
    index.save(folder)
    return folder


def test_a_stale_writer_is_refused_not_silently_overwriting(saved, image_files):
    first, second = Index.load(saved), Index.load(saved)
    first.add(image_files[:2])
    first.save(saved)
    second.add(image_files[2:4])
    with pytest.raises(ValueError, match="changed since this index was loaded"):
        second.save(saved)
    assert sorted(Index.load(saved).names.values()) == sorted(image_files[:2])
    first.add(image_files[4:5])  # the writer that saved last may save again
    first.save(saved)
    assert len(Index.load(saved)) == 3


def test_threads_updating_one_folder_lose_nothing(saved, image_files):
    errors = []

    def writer(paths):
        try:
            for path in paths:
                with Index.updating(saved) as index:
                    index.add([path])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(image_files[i::3],))
               for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(Index.load(saved).names.values()) == sorted(image_files)


def test_updating_saves_nothing_when_the_block_fails(saved, image_files):
    with pytest.raises(RuntimeError, match="boom"):
        with Index.updating(saved) as index:
            index.add(image_files[:3])
            raise RuntimeError("boom")
    assert len(Index.load(saved)) == 0


def test_lock_is_reentrant_and_times_out_for_another_process(saved):
    with storage.writer_lock(saved):
        with storage.writer_lock(saved):  # the same thread may nest
            pass
        code = ("import sys; from cvsearch import storage\n"
                "try:\n"
                "    with storage.writer_lock(sys.argv[1], timeout=0.3): pass\n"
                "except TimeoutError as e: print('timeout', e)\n")
        done = subprocess.run([sys.executable, "-c", code, str(saved)],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout.startswith("timeout") and str(saved) in done.stdout
    # released: another process gets it at once
    done = subprocess.run([sys.executable, "-c", code, str(saved)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "" and done.returncode == 0, done.stderr


def test_readers_do_not_wait_for_a_writer(saved, image_files):
    with storage.writer_lock(saved):
        assert len(Index.load(saved)) == 0  # no lock taken by a reader


def test_two_command_line_adds_started_together_keep_both_batches(saved, image_files,
                                                                   tmp_path):
    batches = [tmp_path / "a", tmp_path / "b"]
    for batch, paths in zip(batches, (image_files[:6], image_files[6:])):
        batch.mkdir()
        for path in paths:
            shutil.copy(path, batch)
    runs = [subprocess.Popen([sys.executable, "-m", "cvsearch", "add", str(saved),
                              str(batch), "--json", "-q"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for batch in batches]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sorted(json.loads(out)["added"] for out, _ in outputs) == [6, 6]
    assert len(Index.load(saved)) == 12


def test_a_reader_that_loses_the_race_reads_the_new_manifest(saved, image_files,
                                                             monkeypatch):
    """A save between a reader's reading of the manifest and of the data files
    removes the files the reader was about to open: it reads the new manifest."""
    writer = Index.load(saved)
    writer.add(image_files[:2])
    writer.save(saved)  # the manifest the reader will read names this segment
    real_load = Index._load.__func__
    raced = []

    def racing(cls, path, manifest, verify):
        if not raced:
            raced.append(True)
            writer.add(image_files[2:3])
            writer.compact()  # one new segment: the old one's files go
            writer.save(saved)
        return real_load(cls, path, manifest, verify)

    monkeypatch.setattr(Index, "_load", classmethod(racing))
    assert len(Index.load(saved)) == 3 and raced


def test_saving_where_the_index_was_deleted_loses_nothing(saved, image_files):
    index = Index.load(saved)
    shutil.rmtree(saved)
    index.add(image_files[:1])
    index.save(saved)  # nobody's update is there to lose
    assert len(Index.load(saved)) == 1
