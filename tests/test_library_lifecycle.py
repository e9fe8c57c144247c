"""Removed models stay hidden; changed files are read again; bad drop-ins are listed.

Issue 9, items 3, 7 and 8, at the library level (the watcher, CLI and pages have their
own tests). Each test also checks that no model file was deleted or altered.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import ImportRefused, RegistryCorrupt, UnknownModel
from appliance.library.library import Change, DropInProblem, Library
from appliance.library.registry import SCHEMA, Registry
from appliance.model_entry import ModelEntry
from tests.helpers import write_gguf

TRUNCATED = (
    "Tensor 'output.weight' ends at byte 2,688 but the file has only 2,588 bytes: the file "
    "is truncated or still being copied. Copy it again from the original."
)


def _settled(path: Path, age_s: float = 60.0) -> Path:
    """Give path an mtime in the past, as a finished copy has."""
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def _add(library: Library, name: str = "m0") -> tuple[ModelEntry, Path, bytes]:
    path = _settled(write_gguf(library.paths.models / f"{name}.gguf"))
    entry = library.register(path).entry
    library.hasher.join()
    return library.get(entry.id), path, path.read_bytes()


# -- what registering did is said, not worked out again ------------------------------------
def test_register_says_what_happened(library: Library) -> None:
    path = write_gguf(library.paths.models / "m.gguf")
    first = library.register(path)
    assert (first.change, first.entry.id) == (Change.ADDED, "m")
    assert library.register(path).change is Change.UNCHANGED
    assert library.register(path, name="Renamed").change is Change.UPDATED
    (library.paths.models / "sub").mkdir()
    moved = path.rename(library.paths.models / "sub" / "m.gguf")
    assert library.mark_missing(path) == ["m"]
    again = library.register(moved)
    assert (again.change, again.entry.id, again.entry.path) == (Change.MOVED, "m", "sub/m.gguf")
    moved.rename(path)
    assert library.recheck("m").change is Change.MISSING
    assert library.take_in(path).change is Change.MOVED  # back where it was first
    library.remove("m")
    assert library.take_in(path).change is Change.HIDDEN


def test_a_dropped_file_reads_the_registry_twice(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once to see whether it is registered or hidden, once in the transaction that adds
    it (hashing, later and in the background, reads it again to store the sha256)."""
    library.register(_settled(write_gguf(library.paths.models / "old.gguf")))
    library.hasher.join()
    monkeypatch.setattr(library.hasher, "submit", lambda _model_id: None)
    reads = []
    load = Registry.load
    monkeypatch.setattr(Registry, "load", lambda self: reads.append(1) or load(self))
    outcome = library.take_in(write_gguf(library.paths.models / "new.gguf"))
    assert (outcome.change, len(reads)) == (Change.ADDED, 2)


# -- 9.3: a removed model stays hidden --------------------------------------------------


def test_removed_model_is_not_added_back_by_a_scan(library: Library) -> None:
    entry, path, data = _add(library)
    library.remove(entry.id)
    report = library.scan()
    assert library.entries() == []
    assert report.hidden == ["m0.gguf"] and report.added == []
    assert path.read_bytes() == data  # the files stay, untouched
    (hidden,) = library.hidden()
    assert (hidden.entry.id, hidden.entry.path, hidden.on_disk) == ("m0", "m0.gguf",
                                                                          "unchanged")  # fmt: skip
    # ...and again at the next start (a new Library on the same folder).
    Library().scan()
    assert library.entries() == []


def test_unhide_brings_back_id_name_and_defaults(library: Library) -> None:
    entry, path, data = _add(library)
    library.rename(entry.id, "My model")
    library.set_defaults(entry.id, {"temperature": 0.2})
    library.remove(entry.id)
    restored = library.unhide(entry.id)
    assert (restored.id, restored.name, restored.status) == ("m0", "My model", "present")
    assert restored.defaults["temperature"] == 0.2
    assert restored.sha256 == entry.sha256
    assert library.hidden() == []
    assert library.scan().added == []
    assert [e.id for e in library.entries()] == ["m0"]
    assert path.read_bytes() == data


def test_unhide_of_an_unknown_id_says_how_to_list(library: Library) -> None:
    with pytest.raises(UnknownModel) as err:
        library.unhide("nope")
    assert str(err.value) == (
        "No hidden model with id 'nope'. Run `appliance models hidden` to see the hidden ones."
    )


def test_same_bytes_copied_back_stay_hidden(library: Library, tmp_path: Path) -> None:
    """Same path, size and sha256 but a new mtime (copied back in): still the hidden model."""
    entry, path, data = _add(library)
    library.remove(entry.id)
    shutil.copyfile(path, tmp_path / "saved.gguf")
    path.unlink()
    shutil.copyfile(tmp_path / "saved.gguf", path)
    _settled(path, 30)
    assert library.scan().hidden == ["m0.gguf"]
    assert library.entries() == []
    assert path.read_bytes() == data


def test_a_different_file_at_a_hidden_path_is_a_new_model(library: Library) -> None:
    entry, path, _ = _add(library)
    library.remove(entry.id)
    # Same size, different bytes: a different model at the same path.
    other = write_gguf(path, tensors={"token_embd.weight": np.full((32, 16), 2, np.float32),
                                      "output.weight": np.ones((8, 16), np.float16)})  # fmt: skip
    _settled(other)
    assert other.stat().st_size == entry.size_bytes
    report = library.scan()
    library.hasher.join()
    # The hidden id stays reserved (its chat history is keyed by it).
    assert report.added == ["m0-2"]
    assert library.get("m0-2").sha256 != entry.sha256
    with pytest.raises(ImportRefused) as err:
        library.unhide("m0")
    assert str(err.value) == (
        "m0.gguf now holds another model, m0 (id m0-2), added after m0 was hidden, so m0's "
        "own file is no longer there. Nothing was changed."
    )
    assert [h.entry.id for h in library.hidden()] == ["m0"]


def test_remove_with_delete_files_hides_nothing(library: Library) -> None:
    entry, path, _ = _add(library)
    library.remove(entry.id, delete_files=True)
    assert not path.exists() and library.hidden() == []


def test_registry_without_hidden_list_loads_unchanged(library: Library) -> None:
    """A registry.json written before `hidden` existed reads as before; nothing rewrites it."""
    entry, _, _ = _add(library)
    doc = json.loads(library.paths.registry.read_text())
    del doc["hidden"]
    library.paths.registry.write_text(json.dumps(doc, indent=1))
    before = library.paths.registry.read_bytes()
    assert library.entries() == [entry]
    assert library.hidden() == []
    assert library.scan().changed() is False
    assert library.paths.registry.read_bytes() == before


def test_hidden_records_are_validated(library: Library) -> None:
    entry, _, _ = _add(library)
    doc = {"schema": SCHEMA, "version": 1, "models": [],
           "hidden": [{"entry": entry.to_json()}, {"hidden_at": "2026-01-01", "entry": {"id": "x"}}]}  # fmt: skip
    library.paths.registry.write_text(json.dumps(doc))
    with pytest.raises(RegistryCorrupt) as err:
        library.entries()
    assert (
        "has 2 problem(s): hidden[0]: expected an object with 'hidden_at' and 'entry'; "
        "hidden[1]: entry 'x': 'name' is missing." in str(err.value)
    )


# -- 9.7: a registered file that changed is read again ----------------------------------


def test_truncated_file_is_marked_damaged_with_the_reason(library: Library) -> None:
    entry, path, data = _add(library)
    path.write_bytes(data[:-100])
    report = library.refresh()
    assert report.damaged == {"m0": TRUNCATED}
    now = library.get("m0")
    assert (now.status, now.problem, now.size_bytes, now.sha256) == (
        "damaged", TRUNCATED, len(data) - 100, None)  # fmt: skip
    assert path.read_bytes() == data[:-100]  # reading never changes the file
    # Unchanged since: nothing is re-read and nothing reported.
    assert library.refresh().changed() is False
    # A good copy put back makes it present again, with its old id and hash.
    path.write_bytes(data)
    assert library.refresh().updated == ["m0"]
    library.hasher.join()
    again = library.get("m0")
    assert (again.status, again.problem, again.sha256) == ("present", None, entry.sha256)


def test_replaced_file_is_read_again(library: Library) -> None:
    entry, path, _ = _add(library)
    write_gguf(path, "qwen2", name="Replacement", context=4096)
    assert library.refresh().updated == ["m0"]
    library.hasher.join()
    now = library.get("m0")
    assert (now.architecture, now.metadata.model_name) == ("qwen2", "Replacement")
    assert now.metadata.context_length == 4096
    assert now.sha256 not in (None, entry.sha256)
    assert now.size_bytes == path.stat().st_size


def test_scan_reports_damaged_entries(library: Library) -> None:
    _, path, _ = _add(library)
    path.write_bytes(b"GGUF junk")
    _settled(path)
    report = library.scan(settle_s=1.5)
    reason = (
        "GGUF version 1853188640 is unknown (this app reads versions 1 to 3): the file is "
        "corrupted or from a much newer llama.cpp."
    )
    assert report.damaged == {"m0": reason}
    assert (library.get("m0").status, library.get("m0").problem) == ("damaged", reason)
    assert path.read_bytes() == b"GGUF junk"


def test_a_file_changing_right_now_is_left_for_the_watcher(library: Library) -> None:
    _, path, data = _add(library)
    path.write_bytes(data[:-100])  # mtime is now: it may still be copying
    report = library.scan(settle_s=1.5)
    assert report.busy == [path] and report.damaged == {}
    assert library.get("m0").status == "present"


# -- 9.8: drop-ins that cannot be used are listed with the reason -----------------------


def test_rejected_drop_ins_are_listed_with_the_reason(library: Library) -> None:
    _add(library)
    notes = library.paths.models / "notes.gguf"
    notes.write_text("not a model")
    empty = library.paths.models / "sub" / "empty.bin"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    fresh = library.paths.models / "copying.gguf"
    fresh.write_bytes(b"GGUF")
    for path in (notes, empty):
        _settled(path)
    assert library.rejected_drop_ins() == [
        DropInProblem("notes.gguf", "This file does not start with the GGUF magic number."),
        DropInProblem("sub/empty.bin", "empty.bin is empty (0 bytes). Copy the model again."),
    ]
    assert notes.read_text() == "not a model"
