"""The drop-in watcher with real files copied slowly into a temporary models/."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.library.library import Library
from appliance.library.watcher import DropInWatcher
from tests.helpers import make_hf_folder, slow_copy, write_gguf


def wait_for(check: Callable[[], object], timeout: float = 6.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


def by_path(library: Library, rel: str) -> dict | None:
    return next((e for e in library.entries() if e.path == rel), None)


@pytest.fixture(params=["inotify", "polling"])
def watcher(request, library: Library) -> Iterator[DropInWatcher]:
    w = DropInWatcher(library, polling=request.param == "polling").start()
    yield w
    w.stop()


@pytest.fixture
def inotify_watcher(library: Library) -> Iterator[DropInWatcher]:
    w = DropInWatcher(library).start()
    yield w
    w.stop()


def test_polling_is_chosen_by_environment(library: Library, monkeypatch) -> None:
    monkeypatch.setenv("APPLIANCE_WATCHER", "polling")
    assert DropInWatcher(library).polling is True
    monkeypatch.delenv("APPLIANCE_WATCHER")
    assert DropInWatcher(library).polling is False


def test_slow_copy_registers_only_once_complete(
    watcher: DropInWatcher, library: Library, demo_model: Path
) -> None:
    target = library.paths.models / demo_model.name
    seen_early: list[dict] = []
    done = threading.Event()

    def spy() -> None:
        while not done.is_set():
            if by_path(library, demo_model.name):
                seen_early.append(by_path(library, demo_model.name))
            time.sleep(0.05)

    thread = threading.Thread(target=spy)
    thread.start()
    finished = slow_copy(demo_model, target, chunks=12, pause=0.3)
    done.set()
    thread.join()
    assert seen_early == [], "registered while the copy was still going"
    entry = wait_for(lambda: by_path(library, demo_model.name), timeout=5)
    assert entry, "not registered after the copy finished"
    assert time.monotonic() - finished <= 3.0
    assert entry.metadata.parameters == 134_515_008
    assert wait_for(lambda: library.get(entry.id).sha256, timeout=20) == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )


def test_stalled_copy_is_not_registered(
    inotify_watcher: DropInWatcher, library: Library, demo_model: Path
) -> None:
    """A copy that pauses longer than the settle time is still not registered half-done."""
    target = library.paths.models / "stalled.gguf"
    data = demo_model.read_bytes()
    with target.open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(2.5)  # longer than the 1.5 s settle time
        assert by_path(library, "stalled.gguf") is None
        assert any(e.action == "waiting" for e in inotify_watcher.events)
        fh.write(data[len(data) // 2 :])
    assert wait_for(lambda: by_path(library, "stalled.gguf"), timeout=3)


def test_partial_names_are_ignored_until_renamed(
    watcher: DropInWatcher, library: Library, tmp_path: Path
) -> None:
    models = library.paths.models
    for name in ("a.gguf.part", "b.gguf.partial", "c.gguf.tmp", "d.gguf.crdownload", ".e.gguf"):
        write_gguf(models / name)
    time.sleep(2.5)
    assert library.entries() == []
    (models / "a.gguf.part").rename(models / "a.gguf")
    assert wait_for(lambda: by_path(library, "a.gguf"), timeout=3)
    assert [e.path for e in library.entries()] == ["a.gguf"]


def test_delete_marks_missing_and_rename_updates_path(
    watcher: DropInWatcher, library: Library
) -> None:
    models = library.paths.models
    write_gguf(models / "keep.gguf")
    entry = wait_for(lambda: by_path(library, "keep.gguf"))
    (models / "sub").mkdir()
    (models / "keep.gguf").rename(models / "sub" / "renamed.gguf")
    moved = wait_for(lambda: by_path(library, "sub/renamed.gguf"))
    assert moved and moved.id == entry.id and moved.status == "present"
    (models / "sub" / "renamed.gguf").unlink()
    assert wait_for(lambda: library.get(entry.id).status == "missing")
    assert len(library.entries()) == 1


def test_hf_folder_copied_in_registers_once(
    watcher: DropInWatcher, library: Library, tmp_path: Path
) -> None:
    source = make_hf_folder(tmp_path / "src" / "tiny-llama", sharded=True)
    dest = library.paths.models / "tiny-llama"
    dest.mkdir()
    for path in sorted(source.iterdir()):
        shutil.copy(path, dest / path.name)
        time.sleep(0.2)
    entry = wait_for(lambda: by_path(library, "tiny-llama"))
    assert entry and entry.format == "hf-folder" and entry.metadata.shards == 2
    time.sleep(0.5)
    assert [e.path for e in library.entries()] == ["tiny-llama"]


def test_bad_file_is_rejected_with_reason(watcher: DropInWatcher, library: Library) -> None:
    (library.paths.models / "notes.gguf").write_text("not a model")
    event = wait_for(lambda: [e for e in watcher.events if e.action == "rejected"])
    assert event[0].path == "notes.gguf"
    assert "does not start with the GGUF magic number" in event[0].detail
    assert library.entries() == []


def test_startup_scan_catches_up(library: Library) -> None:
    models = library.paths.models
    gone = library.register(write_gguf(models / "gone.gguf")).entry
    (models / "gone.gguf").unlink()
    write_gguf(models / "old.gguf", name="old")
    write_gguf(models / "new.gguf", name="new")
    settled = time.time() - 10
    os.utime(models / "old.gguf", (settled, settled))
    w = DropInWatcher(library).start()
    try:
        # Changes made while the app was down are picked up by the scan at start...
        assert library.get(gone.id).status == "missing"
        assert by_path(library, "old.gguf")
        # ...except a file modified just now, which may still be copying: it waits.
        assert by_path(library, "new.gguf") is None
        assert wait_for(lambda: by_path(library, "new.gguf"), timeout=3)
        # The watcher reports an outcome just after the registry holds it: wait for it.
        assert wait_for(lambda: len(w.events) >= 3, timeout=3)
        assert [e.action for e in w.events] == [
            "missing",
            "registered",
            "registered",
        ]  # in the order done
    finally:
        w.stop()


def test_move_while_down_is_followed(library: Library) -> None:
    models = library.paths.models
    entry = library.register(write_gguf(models / "m.gguf")).entry
    (models / "moved").mkdir()
    (models / "m.gguf").rename(models / "moved" / "m.gguf")
    report = library.scan()
    assert report.moved == [entry.id]
    assert library.get(entry.id).path == "moved/m.gguf"
    assert len(library.entries()) == 1


def test_symlinks_are_not_followed(
    watcher: DropInWatcher, library: Library, tmp_path: Path
) -> None:
    """The link is ignored while a real file dropped after it is registered: the watcher
    is alive and saw both, so the link's absence means it was skipped, not missed."""
    (library.paths.models / "link.gguf").symlink_to(write_gguf(tmp_path / "real.gguf"))
    write_gguf(library.paths.models / "plain.gguf")
    assert wait_for(lambda: by_path(library, "plain.gguf")), "the watcher registered nothing"
    time.sleep(0.5)  # the link was created first: it would be registered by now
    assert [e.path for e in library.entries()] == ["plain.gguf"]
    assert [e.path for e in watcher.events] == ["plain.gguf"]


def _events_for(watcher: DropInWatcher, rel: str) -> list[str]:
    """The log lines about rel, without their time stamp."""
    return [e.line()[9:] for e in watcher.events if e.path == rel]


def test_removed_model_is_not_registered_again(watcher: DropInWatcher, library: Library) -> None:
    models = library.paths.models
    write_gguf(models / "gone.gguf")
    entry = wait_for(lambda: by_path(library, "gone.gguf"))
    assert wait_for(lambda: library.get(entry.id).sha256)
    data = (models / "gone.gguf").read_bytes()
    library.remove(entry.id)
    later = time.time() + 5
    os.utime(models / "gone.gguf", (later, later))  # same bytes, new mtime: an event on it
    write_gguf(models / "other.gguf")  # and an event on the folder
    assert wait_for(lambda: by_path(library, "other.gguf"))
    time.sleep(0.5)
    assert [e.path for e in library.entries()] == ["other.gguf"]
    assert (models / "gone.gguf").read_bytes() == data
    assert _events_for(watcher, "gone.gguf") == [
        f"registered gone.gguf: id {entry.id}, llama.cpp",
        f"hidden     gone.gguf: id {entry.id} was removed from the library and stays hidden; "
        f"unhide it to add it again (`appliance models unhide {entry.id}`)",
    ]
    library.unhide(entry.id)
    assert library.get(entry.id).status == "present"


def test_each_rejected_drop_in_is_reported_once(watcher: DropInWatcher, library: Library) -> None:
    """Later drop-ins do not repeat the rejection, and the name is not printed twice."""
    models = library.paths.models
    (models / "text.gguf").write_text("not a model")
    assert wait_for(lambda: _events_for(watcher, "text.gguf"))
    for name in ("a", "b"):
        write_gguf(models / f"{name}.gguf")
        assert wait_for(lambda name=name: by_path(library, f"{name}.gguf"))
    time.sleep(0.5)
    assert _events_for(watcher, "text.gguf") == [
        "rejected   text.gguf: This file does not start with the GGUF magic number."
    ]
    assert (models / "text.gguf").read_text() == "not a model"


def test_an_event_during_the_check_does_not_report_it_again(
    inotify_watcher: DropInWatcher, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9.8: an event on the same, unchanged file that arrives while the watcher reads it
    (the copy's last close or chmod) queued it again: the rejection was printed twice,
    a settle time apart."""
    take_in = library.take_in

    def late_event(candidate: Path):
        inotify_watcher.touch(candidate)  # what the observer thread may do meanwhile
        return take_in(candidate)

    monkeypatch.setattr(library, "take_in", late_event)
    models = library.paths.models
    (models / "text.gguf").write_text("not a model")
    assert wait_for(lambda: _events_for(inotify_watcher, "text.gguf"))
    time.sleep(inotify_watcher.settle_s + 1.0)
    assert _events_for(inotify_watcher, "text.gguf") == [
        "rejected   text.gguf: This file does not start with the GGUF magic number."
    ]


def test_truncated_registered_file_is_marked_damaged(
    watcher: DropInWatcher, library: Library
) -> None:
    models = library.paths.models
    data = write_gguf(models / "cut.gguf").read_bytes()
    entry = wait_for(lambda: by_path(library, "cut.gguf"))
    (models / "cut.gguf").write_bytes(data[:-100])
    damaged = wait_for(lambda: library.get(entry.id).status == "damaged")
    assert damaged, "the truncated file still shows as present"
    problem = (
        "Tensor 'output.weight' ends at byte 2,688 but the file has only 2,588 bytes: the file "
        "is truncated or still being copied. Copy it again from the original."
    )
    now = library.get(entry.id)
    assert (now.problem, now.size_bytes, now.sha256) == (problem, 2588, None)
    assert f"damaged    cut.gguf: id {entry.id}: {problem}" in _events_for(watcher, "cut.gguf")
    (models / "cut.gguf").write_bytes(data)
    assert wait_for(lambda: library.get(entry.id).status == "present")
    assert len(library.entries()) == 1
