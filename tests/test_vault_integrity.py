"""Tampered, reordered, spliced and torn history: clear errors, never garbage or a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from appliance.vault import HistoryTampered
from appliance.vault import records as rec
from appliance.vault.history import HistoryStore
from tests.vault_helpers import fast_unlocked


@pytest.fixture
def history() -> HistoryStore:
    return fast_unlocked().history


def make(history: HistoryStore, model: str = "m", n: int = 3, prefix: str = "msg") -> str:
    conv = history.create(model, f"{prefix} title")
    for i in range(n):
        history.append(model, conv.id, "user" if i % 2 == 0 else "assistant", f"{prefix} {i}")
    return conv.id


def log_of(history: HistoryStore, conv_id: str) -> Path:
    return next(history.root.glob(f"*/{conv_id}-*.log"))


def frames(data: bytes) -> list[bytes]:
    scan = rec.scan(data)
    assert scan.error is None and scan.torn == 0
    return [data[f.offset : f.end] for f in scan.frames]


def rebuild(path: Path, parts: list[bytes]) -> None:
    path.write_bytes(path.read_bytes()[: rec.LOG_HEADER_BYTES] + b"".join(parts))


def with_seq(frame: bytes, seq: int) -> bytes:
    """The same frame claiming another sequence number, header CRC recomputed."""
    head = frame[:2] + frame[2:6] + struct.pack(">Q", seq)
    return head + struct.pack(">I", zlib.crc32(head)) + frame[rec.HEADER.size :]


def test_every_byte_flip_of_a_log_is_an_authentication_error(history: HistoryStore) -> None:
    conv = make(history, n=3)
    path = log_of(history, conv)
    original = path.read_bytes()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(HistoryTampered, match=f"Conversation {conv} of model 'm' is damaged"):
            history.messages("m", conv)
    path.write_bytes(original)
    assert [m.content for m in history.messages("m", conv).messages] == ["msg 0", "msg 1", "msg 2"]


def test_every_byte_flip_of_a_header_is_refused(history: HistoryStore) -> None:
    conv = make(history)
    path = next(history.root.glob(f"*/{conv}.conv"))
    original = path.read_bytes()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0x40
        path.write_bytes(bytes(damaged))
        with pytest.raises(HistoryTampered, match="header fails authentication"):
            history.messages("m", conv)


def test_reordered_records(history: HistoryStore) -> None:
    conv = make(history, n=4)
    path = log_of(history, conv)
    parts = frames(path.read_bytes())
    rebuild(path, [parts[0], parts[2], parts[1], parts[3]])
    with pytest.raises(HistoryTampered, match="record 1"):
        history.messages("m", conv)
    # Renumbering the swapped records does not help: the number is authenticated.
    rebuild(path, [parts[0], with_seq(parts[2], 1), with_seq(parts[1], 2), parts[3]])
    with pytest.raises(HistoryTampered, match="record 1 fails authentication"):
        history.messages("m", conv)


def test_dropped_and_duplicated_records(history: HistoryStore) -> None:
    conv = make(history, n=4)
    path = log_of(history, conv)
    parts = frames(path.read_bytes())
    rebuild(path, [parts[0], parts[2], parts[3]])
    with pytest.raises(HistoryTampered, match="record 1: a record is missing"):
        history.messages("m", conv)
    rebuild(path, [parts[0], parts[1], parts[1], parts[2], parts[3]])
    with pytest.raises(HistoryTampered, match="record 2: records are out of order"):
        history.messages("m", conv)
    rebuild(path, [parts[0], with_seq(parts[2], 1), with_seq(parts[3], 2)])
    with pytest.raises(HistoryTampered, match="record 1 fails authentication"):
        history.messages("m", conv)


@pytest.mark.parametrize("other_model", ["m", "another-model"])
def test_spliced_records_from_another_conversation(history: HistoryStore, other_model) -> None:
    conv = make(history, n=3)
    donor = make(history, model=other_model, n=3, prefix="donor")
    path = log_of(history, conv)
    parts = frames(path.read_bytes())
    donor_parts = frames(log_of(history, donor).read_bytes())
    rebuild(path, [parts[0], donor_parts[1], parts[2]])  # same position, same seq
    with pytest.raises(HistoryTampered, match="record 1 fails authentication .*another conv"):
        history.messages("m", conv)
    rebuild(path, [*parts, with_seq(donor_parts[0], 3)])  # appended at the end
    with pytest.raises(HistoryTampered, match="record 3 fails authentication"):
        history.messages("m", conv)


def test_swapped_log_files(history: HistoryStore) -> None:
    a, b = make(history, prefix="a"), make(history, prefix="b")
    log_a, log_b = log_of(history, a), log_of(history, b)
    data_a, data_b = log_a.read_bytes(), log_b.read_bytes()
    log_a.write_bytes(data_b)
    log_b.write_bytes(data_a)
    for conv in (a, b):
        with pytest.raises(HistoryTampered, match="belongs to another conversation"):
            history.messages("m", conv)
    log_a.unlink()
    with pytest.raises(HistoryTampered, match="message log is missing"):
        history.messages("m", a)


def test_other_conversations_stay_readable(history: HistoryStore) -> None:
    bad, good = make(history, prefix="bad"), make(history, prefix="good")
    path = log_of(history, bad)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # inside the last record
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    assert [m.content for m in history.messages("m", good).messages][-1] == "good 2"
    listed = {c.id: c for c in history.conversations("m")}
    assert listed[good].problem is None and listed[good].message_count == 3
    assert "record 2 fails authentication" in listed[bad].problem
    assert history.latest("m").id == good
    with pytest.raises(HistoryTampered):
        history.messages("m", bad)
    with pytest.raises(HistoryTampered):
        history.append("m", bad, "user", "more")
    assert path.read_bytes() == before  # nothing appended to a damaged log
    history.append("m", good, "user", "still fine")
    history.delete("m", bad)  # a damaged conversation can still be deleted
    assert [c.id for c in history.conversations("m")] == [good]


def test_listing_is_shallow_but_opening_checks_everything(history: HistoryStore) -> None:
    """Listing reads headers and last records only (O(1) per conversation); damage in the
    middle of a log shows when the conversation is opened."""
    conv = make(history, n=3)
    path = log_of(history, conv)
    data = bytearray(path.read_bytes())
    data[rec.LOG_HEADER_BYTES + 40] ^= 0xFF  # inside the first record
    path.write_bytes(bytes(data))
    assert history.conversations("m")[0].message_count == 3
    with pytest.raises(HistoryTampered, match="record 0 fails authentication"):
        history.messages("m", conv)


def test_torn_last_record_at_every_offset(history: HistoryStore) -> None:
    conv = make(history, n=3)
    path = log_of(history, conv)
    full = path.read_bytes()
    last = frames(full)[-1]
    start = len(full) - len(last)
    for cut in range(start + 1, len(full)):
        path.write_bytes(full[:cut])
        log = history.messages("m", conv)
        assert [m.content for m in log.messages] == ["msg 0", "msg 1"]
        assert log.warnings == [
            f"The last record of conversation {conv} was incomplete ({cut - start} bytes, "
            "from an interrupted write) and was skipped."
        ]
        info = history.conversations("m")[0]
        assert (info.message_count, info.problem) == (2, None)
    path.write_bytes(full[: start + 7])
    history.append("m", conv, "assistant", "after the crash")  # cuts the torn bytes off
    log = history.messages("m", conv)
    assert log.warnings == []
    assert [m.content for m in log.messages] == ["msg 0", "msg 1", "after the crash"]
    assert [m.seq for m in log.messages] == [0, 1, 2]


def test_zero_filled_tail_is_torn(history: HistoryStore) -> None:
    conv = make(history, n=2)
    path = log_of(history, conv)
    with path.open("ab") as fh:
        fh.write(bytes(4096))
    log = history.messages("m", conv)
    assert len(log.messages) == 2 and "4096 bytes" in log.warnings[0]
    history.append("m", conv, "user", "next")
    assert history.messages("m", conv).warnings == []


def test_truncation_mid_file_keeps_the_readable_prefix(history: HistoryStore) -> None:
    conv = make(history, n=4)
    path = log_of(history, conv)
    parts = frames(path.read_bytes())
    rebuild(path, [parts[0], parts[1], parts[2][:10]])
    log = history.messages("m", conv)
    assert [m.content for m in log.messages] == ["msg 0", "msg 1"] and log.warnings


def test_replacement_record_out_of_place_is_detected(history: HistoryStore) -> None:
    conv = make(history, n=2)
    history.replace_last("m", conv, "new")
    path = log_of(history, conv)
    parts = frames(path.read_bytes())
    rebuild(path, [with_seq(parts[2], 0)])
    with pytest.raises(HistoryTampered, match="record 0 fails authentication"):
        history.messages("m", conv)
