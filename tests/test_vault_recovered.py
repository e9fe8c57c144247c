"""No read deletes history: logs found without their header are recovered conversations."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.vault import HistoryError, HistoryTampered, UnknownConversation
from appliance.vault import history as history_mod
from appliance.vault.history import RECOVERED_TITLE, HistoryStore
from tests.vault_helpers import PASSWORD, FakeClock, fast_unlocked, fast_vault, snapshot


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def history(clock: FakeClock) -> HistoryStore:
    return fast_unlocked(clock=clock).history


def make(history: HistoryStore, contents: list[str], title: str = "t") -> str:
    conv = history.create("m", title)
    for i, text in enumerate(contents):
        history.append("m", conv.id, "user" if i % 2 == 0 else "assistant", text)
    return conv.id


def log_of(history: HistoryStore, conv_id: str) -> Path:
    (path,) = history.root.glob(f"*/{conv_id}-*.log")
    return path


def note(rid: str) -> str:
    return (
        f"Conversation {rid} was recovered: its messages were found in history/ without the "
        "header that names them (for example after restoring part of a backup), so its "
        "title and date are lost. Send a message to keep it as a regular conversation, or "
        "delete it."
    )


def contents(history: HistoryStore, conv_id: str) -> list[str]:
    return [m.content for m in history.messages("m", conv_id).messages]


def test_a_log_without_its_header_is_listed_not_deleted(history: HistoryStore, clock) -> None:
    """Issue 9.2: listing used to delete a log whose .conv was missing."""
    conv = make(history, ["question", "answer"])
    log = log_of(history, conv)
    rid = log.stem
    next(history.root.glob(f"*/{conv}.conv")).unlink()  # a partial restore, say
    before = snapshot(history.root)
    listed = history.conversations("m")
    assert snapshot(history.root) == before  # the read deleted nothing
    assert [(c.id, c.title, c.message_count, c.recovered, c.problem) for c in listed] == [
        (rid, RECOVERED_TITLE, 2, True, None)
    ]
    assert history.model_ids() == ["m"] and history.count("m") == 1
    assert history.latest("m") is None  # a recovered conversation never resumes by itself
    log_read = history.messages("m", rid)
    assert [m.content for m in log_read.messages] == ["question", "answer"]
    assert log_read.warnings == [note(rid)]
    assert "question" in history.export("m", rid, "md")
    assert snapshot(history.root) == before
    with pytest.raises(HistoryError, match=f"{rid} is a recovered conversation: keep it"):
        history.append("m", rid, "user", "more")
    assert snapshot(history.root) == before
    kept = history.adopt("m", rid)  # no header at all: it gets one, nothing is copied
    assert (kept.id, kept.title, kept.message_count, kept.recovered) == (conv, RECOVERED_TITLE,
                                                                         2, False)  # fmt: skip
    assert log.read_bytes() == before[str(log.relative_to(history.root))]
    history.append("m", conv, "user", "continued")
    assert contents(history, conv) == ["question", "answer", "continued"]
    assert [c.id for c in history.conversations("m")] == [conv]


def test_restoring_an_older_header_keeps_the_current_log(history: HistoryStore) -> None:
    """Issue 9.2: restoring an older .conv after a clear deleted the *current* log."""
    conv = make(history, ["old 1", "old 2"])
    header = next(history.root.glob(f"*/{conv}.conv"))
    backup = header.read_bytes()
    history.clear("m", conv)
    history.append("m", conv, "user", "new after clear")
    current = log_of(history, conv)
    header.write_bytes(backup)  # names the log that clear deleted
    before = snapshot(history.root)
    listed = {c.id: c for c in history.conversations("m")}
    assert snapshot(history.root) == before
    rid = current.stem
    assert set(listed) == {conv, rid}
    assert "its message log is missing" in listed[conv].problem
    assert (listed[rid].recovered, listed[rid].message_count) == (True, 1)
    assert contents(history, rid) == ["new after clear"]
    assert snapshot(history.root) == before
    kept = history.adopt("m", rid)  # a header exists: copied into a new conversation
    assert kept.id not in (conv, rid) and kept.title == RECOVERED_TITLE
    assert contents(history, kept.id) == ["new after clear"]
    assert not current.exists()  # moved, not lost
    assert {c.id for c in history.conversations("m")} == {conv, kept.id}


def test_a_damaged_header_leaves_its_log_readable(history: HistoryStore) -> None:
    conv = make(history, ["kept message"])
    header = next(history.root.glob(f"*/{conv}.conv"))
    header.write_bytes(b"\0" * len(header.read_bytes()))
    listed = {c.id: c for c in history.conversations("m")}
    rid = log_of(history, conv).stem
    assert "header fails authentication" in listed[conv].problem
    assert contents(history, rid) == ["kept message"]
    history.delete("m", conv)  # deleting the damaged header keeps the log it cannot name
    assert [(c.id, c.recovered) for c in history.conversations("m")] == [(rid, True)]
    assert contents(history, rid) == ["kept message"]


def test_deleting_a_conversation_keeps_its_recovered_sibling(history: HistoryStore) -> None:
    conv = make(history, ["first life"])
    header = next(history.root.glob(f"*/{conv}.conv"))
    backup = header.read_bytes()
    history.clear("m", conv)  # (deletes the log of "first life")
    history.append("m", conv, "user", "second life")
    second = log_of(history, conv)
    header.write_bytes(backup)
    history.delete("m", conv)  # the restored header names only its own (missing) log
    assert [(c.id, c.recovered) for c in history.conversations("m")] == [(second.stem, True)]
    history.delete("m", second.stem)  # a recovered log is deleted only when asked
    assert not second.exists() and history.conversations("m") == []
    assert history.model_ids() == []


def crash(*args, **kwargs):
    raise KeyboardInterrupt  # the process dies after the header was switched or removed


def test_an_interrupted_clear_does_not_bring_messages_back(history, monkeypatch) -> None:
    conv = make(history, ["cleared 1", "cleared 2"])
    old_log = log_of(history, conv)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(history_mod, "_unlink_logs", crash)
        history.clear("m", conv)
    assert old_log.exists()
    listed = history.conversations("m")
    assert [(c.id, c.message_count, c.recovered) for c in listed] == [(conv, 0, False)]
    assert old_log.exists()  # a read deletes nothing, not even a retired log
    history.clear("m", conv)  # the next clear finishes the job the user asked for
    assert not old_log.exists()


def test_an_interrupted_delete_is_finished_at_the_next_unlock(history, monkeypatch) -> None:
    gone, kept = make(history, ["to delete"]), make(history, ["to keep"])
    log = log_of(history, gone)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(history_mod, "_unlink_logs", crash)
        history.delete("m", gone)
    assert log.exists()
    assert [c.id for c in history.conversations("m")] == [kept]  # not listed as recovered
    again = fast_vault().unlock(PASSWORD).history
    assert not log.exists() and not list(history.root.glob("*/*.deleting"))
    assert [c.id for c in again.conversations("m")] == [kept]
    assert contents(again, kept) == ["to keep"]


def test_empty_or_damaged_orphans(history: HistoryStore) -> None:
    """An orphan log with no record (an interrupted create) is not listed; a damaged
    one is listed with its problem; neither is deleted by reading."""
    empty = make(history, [])
    next(history.root.glob(f"*/{empty}.conv")).unlink()
    damaged = make(history, ["x", "y"])
    next(history.root.glob(f"*/{damaged}.conv")).unlink()
    path = log_of(history, damaged)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot(history.root)
    listed = history.conversations("m")
    assert [(c.id, c.recovered) for c in listed] == [(path.stem, True)]
    assert "record 1 fails authentication" in listed[0].problem
    with pytest.raises(HistoryTampered, match=f"Conversation {path.stem} of model 'm'"):
        history.messages("m", path.stem)
    with pytest.raises(HistoryTampered):
        history.adopt("m", path.stem)
    assert snapshot(history.root) == before
    with pytest.raises(UnknownConversation, match="has no conversation"):
        history.messages("m", f"{empty}-{'0' * 32}")


def test_a_damaged_model_id_is_reported_and_repaired(history: HistoryStore) -> None:
    """Issue 9.6: a damaged model.id silently hid the model's history from every list."""
    conv = make(history, ["still here"])
    (model_id_file,) = history.root.glob("*/model.id")
    model_id_file.write_bytes(b"\x00" * 40)
    message = (
        f"history/{model_id_file.parent.name}: the model id stored in its model.id cannot be "
        "read (the file was altered, damaged or is missing), so this model's conversations "
        "are listed under no model. They are kept: open them by model id (`appliance "
        f"history list MODEL`), or restore history/{model_id_file.parent.name}/model.id from "
        "a backup. The file is rewritten the next time a conversation of that model is started."
    )
    assert history.unreadable_models() == [message]
    assert fast_vault().unlock(PASSWORD).warnings == [message]
    assert history.model_ids() == []
    assert contents(history, conv) == ["still here"]  # found by its id all the same
    history.create("m")
    assert history.model_ids() == ["m"] and history.unreadable_models() == []
