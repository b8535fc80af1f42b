"""One writer at a time: concurrent writers of an index folder never lose an
update, a stale writer is refused, and readers never wait."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

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

    def racing(cls, path, manifest, verify, previous=None):
        if not raced:
            raced.append(True)
            writer.add(image_files[2:3])
            writer.compact()  # one new segment: the old one's files go
            writer.save(saved)
        return real_load(cls, path, manifest, verify, previous)

    monkeypatch.setattr(Index, "_load", classmethod(racing))
    assert len(Index.load(saved)) == 3 and raced


def test_saving_where_the_index_was_deleted_loses_nothing(saved, image_files):
    index = Index.load(saved)
    shutil.rmtree(saved)
    index.add(image_files[:1])
    index.save(saved)  # nobody's update is there to lose
    assert len(Index.load(saved)) == 1


def _save_racing_before_opening(monkeypatch, save):
    """A file-system shim: the first time a reader opens a data file, another
    writer's save (which removes that file) runs just before the open."""
    real_open = storage.os.open
    raced = []

    def racing_open(path, flags, *args, **kwargs):
        if not raced and storage.is_data_file_name(os.path.basename(str(path))):
            raced.append(path)
            save()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", racing_open)
    return raced


def test_a_file_removed_between_the_manifest_and_its_open_means_read_again(
        saved, image_files, monkeypatch):
    writer = Index.load(saved)
    writer.add(image_files[:2])
    writer.save(saved)

    def save():
        writer.add(image_files[2:3])
        writer.compact()  # every segment file of the manifest read goes
        writer.save(saved)

    raced = _save_racing_before_opening(monkeypatch, save)
    loaded = Index.load(saved)
    assert raced and len(loaded) == 3
    loaded.check_integrity()


def test_a_global_index_reader_reads_the_new_manifest_too(tmp_path, image_files,
                                                          monkeypatch):
    from test_global_index import Thumbnail

    from cvsearch import GlobalIndex

    folder = tmp_path / "global"
    writer = GlobalIndex.build(image_files[:3], Thumbnail())
    writer.save(folder)

    def save():
        writer.add(image_files[3:5])
        writer.compact()
        writer.save(folder)

    raced = _save_racing_before_opening(monkeypatch, save)
    assert len(GlobalIndex.load(folder, Thumbnail())) == 5 and raced


def test_a_mapped_index_reads_on_after_its_files_are_removed(saved, image_files):
    writer = Index.load(saved)
    writer.add(image_files[:3])
    writer.save(saved)
    reader = Index.load(saved)
    writer.compact()
    writer.save(saved)  # removes every file the reader mapped
    reader.check_integrity()  # hashes what it mapped, not the files by name
    assert reader.query(image_files[1], k=1, rerank=3)[1][0] == 1


def test_a_folder_replaced_by_another_index_is_never_overwritten(saved, image_files,
                                                                 tmp_path):
    """Serve X, rebuild it as Y (the same generation), swap Y in: a writer that
    loaded X is refused instead of writing X's images over Y."""
    stale = Index.load(saved)
    stale.add(image_files[:4])
    stale.save(saved)  # generation 2, 4 images
    rebuilt = Index.load(saved)
    rebuilt.remove([0, 1])
    other = tmp_path / "rebuilt"
    fresh = Index(rebuilt.extractor, rebuilt.n_words)
    fresh.vocabulary = rebuilt.vocabulary
    fresh.add(image_files[2:4])
    fresh.save(other)
    fresh.add(image_files[4:5])
    fresh.save(other)  # also generation 2, another lineage
    assert storage.read_generation(other) == storage.read_generation(saved)
    shutil.rmtree(saved)
    shutil.move(str(other), str(saved))
    stale.add(image_files[5:6])
    with pytest.raises(ValueError, match="replaced by another index"):
        stale.save(saved)
    assert sorted(Index.load(saved).names.values()) == sorted(image_files[2:5])


def test_every_save_of_an_index_keeps_its_lineage(saved, image_files, tmp_path):
    first = storage.read_identity(saved)
    with Index.updating(saved) as index:
        index.add(image_files[:1])
    second = storage.read_identity(saved)
    assert first.lineage == second.lineage and len(first.lineage) == 32
    assert second.generation == first.generation + 1
    assert second.digest != first.digest
    another = Index(index.extractor, index.n_words)
    another.vocabulary = index.vocabulary
    another.save(tmp_path / "another")
    assert storage.read_identity(tmp_path / "another").lineage != first.lineage


def _wait_until_open(pid: int, path, seconds: float = 60) -> None:
    """Return once process ``pid`` holds ``path`` open (Linux's /proc; elsewhere,
    after half a second)."""
    descriptors = f"/proc/{pid}/fd"
    if not os.path.isdir(descriptors):
        time.sleep(0.5)
        return
    path, deadline = os.path.realpath(path), time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd in os.listdir(descriptors):
            try:
                if os.readlink(os.path.join(descriptors, fd)) == path:
                    return
            except OSError:  # closed meanwhile
                pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not open {path} in {seconds} s")


def test_a_writer_waiting_on_a_swapped_folder_locks_the_new_one(saved, tmp_path):
    """A writer blocked on the lock file of a folder that is then replaced
    (``rm -rf X; mv Y X``) must not count the old file's lock as the folder's:
    it waits for whoever holds the new folder's lock."""
    code = ("import sys, time; from cvsearch import storage\n"
            "print('waiting', flush=True)\n"
            "with storage.writer_lock(sys.argv[1]):\n"
            "    print('locked', time.time(), flush=True)\n")
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    with storage.writer_lock(saved):
        waiter = subprocess.Popen([sys.executable, "-c", code, str(saved)],
                                  stdout=subprocess.PIPE, text=True)
        assert waiter.stdout.readline() == "waiting\n"
        # it waits on the old lock file now (it holds it open), however busy
        # the machine
        _wait_until_open(waiter.pid, saved / storage.LOCK_FILE)
        shutil.rmtree(saved)
        shutil.move(str(replacement), str(saved))
        new_lock = storage.writer_lock(saved)
        # a second holder in this process, of the new folder's lock file
        storage._HELD.pop(str(saved.resolve()), None)
        new_lock.__enter__()
    try:  # the old lock is released: the waiter must still wait for the new one
        time.sleep(1.0)
        released = time.time()
    finally:
        new_lock.__exit__(None, None, None)
    line = waiter.stdout.readline()
    waiter.wait(timeout=60)
    assert line.startswith("locked") and float(line.split()[1]) >= released


def test_a_file_missing_for_a_moment_is_read_again(saved, image_files, monkeypatch):
    """A folder being replaced (rm -rf X; mv Y X) can lose a file before its
    manifest: the reader waits a moment and reads again instead of calling a
    consistent folder corrupt."""
    writer = Index.load(saved)
    writer.add(image_files[:2])
    writer.save(saved)
    real_open = storage.os.open
    missed = []

    def flaky_open(path, flags, *args, **kwargs):
        if len(missed) < 2 and storage.is_data_file_name(os.path.basename(str(path))):
            missed.append(path)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", flaky_open)
    assert len(Index.load(saved)) == 2 and len(missed) == 2


def test_a_file_that_stays_missing_is_reported(saved, image_files, monkeypatch):
    writer = Index.load(saved)
    writer.add(image_files[:2])
    writer.save(saved)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    victim = next(p for p in saved.iterdir() if p.name.startswith("seg-ids-"))
    victim.unlink()
    with pytest.raises(storage.MissingDataFileError, match=victim.name):
        Index.load(saved)
