"""Tampered, reordered, spliced and torn history: clear errors, never garbage or a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from appliance.vault import HistoryTampered
from appliance.vault import records as rec
from appliance.vault.history import HistoryStore
from tests.vault_helpers import downgrade_to_v1, fast_unlocked


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


def codec_for(history: HistoryStore, data: bytes) -> rec.Codec:
    """The frame codec of a log (tests may use the key; an attacker has none)."""
    version = rec.log_version(data)
    return rec.Codec(version, data[8 : rec.LOG_HEADER_BYTES], history._keys()["frames"])


def frames(history: HistoryStore, data: bytes) -> list[bytes]:
    scan = codec_for(history, data).scan(data)
    assert scan.error is None and scan.torn == 0
    return [data[f.offset : f.end] for f in scan.frames]


def rebuild(path: Path, parts: list[bytes]) -> None:
    path.write_bytes(path.read_bytes()[: rec.LOG_HEADER_BYTES] + b"".join(parts))


def crc_header(frame: bytes, *, seq: int | None = None, length: int | None = None) -> bytes:
    """What someone without the key can do: rewrite a header's fields and give it the
    CRC-32 check of the earlier (v1) format."""
    old_length, old_seq = struct.unpack_from(">IQ", frame, 2)
    head = rec.FRAME_MAGIC + struct.pack(">IQ", old_length if length is None else length,
                                         old_seq if seq is None else seq)  # fmt: skip
    return head + struct.pack(">I", zlib.crc32(head))


def with_seq(history: HistoryStore, log: Path, frame: bytes, seq: int) -> bytes:
    """The same frame claiming another sequence number, with a *valid* header tag (as
    only the key holder could make): the record's own authentication still refuses it."""
    codec = codec_for(history, log.read_bytes())
    body = frame[codec.header.size : -rec.TRAILER.size]
    return codec.encode(seq, body)


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
    parts = frames(history, path.read_bytes())
    rebuild(path, [parts[0], parts[2], parts[1], parts[3]])
    with pytest.raises(HistoryTampered, match="record 1"):
        history.messages("m", conv)
    # Renumbering the swapped records does not help: without the key the header check
    # fails; with a valid header tag the record's own authentication still refuses it.
    body = rec.HEADERS[2].size
    renumbered = [crc_header(parts[2], seq=1) + parts[2][body:],
                  crc_header(parts[1], seq=2) + parts[1][body:]]  # fmt: skip
    rebuild(path, [parts[0], *renumbered, parts[3]])
    with pytest.raises(HistoryTampered, match="record 1: forged or damaged record header"):
        history.messages("m", conv)
    retagged = [with_seq(history, path, parts[2], 1), with_seq(history, path, parts[1], 2)]
    rebuild(path, [parts[0], *retagged, parts[3]])
    with pytest.raises(HistoryTampered, match="record 1 fails authentication"):
        history.messages("m", conv)


def test_dropped_and_duplicated_records(history: HistoryStore) -> None:
    conv = make(history, n=4)
    path = log_of(history, conv)
    parts = frames(history, path.read_bytes())
    rebuild(path, [parts[0], parts[2], parts[3]])
    with pytest.raises(HistoryTampered, match="record 1: a record is missing"):
        history.messages("m", conv)
    rebuild(path, [parts[0], parts[1], parts[1], parts[2], parts[3]])
    with pytest.raises(HistoryTampered, match="record 2: records are out of order"):
        history.messages("m", conv)
    retagged = [with_seq(history, path, parts[2], 1), with_seq(history, path, parts[3], 2)]
    rebuild(path, [parts[0], *retagged])
    with pytest.raises(HistoryTampered, match="record 1 fails authentication"):
        history.messages("m", conv)


@pytest.mark.parametrize("other_model", ["m", "another-model"])
def test_spliced_records_from_another_conversation(history: HistoryStore, other_model) -> None:
    conv = make(history, n=3)
    donor = make(history, model=other_model, n=3, prefix="donor")
    path = log_of(history, conv)
    parts = frames(history, path.read_bytes())
    donor_parts = frames(history, log_of(history, donor).read_bytes())
    rebuild(path, [parts[0], donor_parts[1], parts[2]])  # same position, same seq
    with pytest.raises(HistoryTampered, match="record 1: forged or damaged record header"):
        history.messages("m", conv)  # the header tag binds the log
    rebuild(path, [parts[0], with_seq(history, path, donor_parts[1], 1), parts[2]])
    with pytest.raises(HistoryTampered, match="record 1 fails authentication .*another conv"):
        history.messages("m", conv)
    rebuild(path, [*parts, with_seq(history, path, donor_parts[0], 3)])  # appended at the end
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
    last = frames(history, full)[-1]
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
    parts = frames(history, path.read_bytes())
    rebuild(path, [parts[0], parts[1], parts[2][:10]])
    log = history.messages("m", conv)
    assert [m.content for m in log.messages] == ["msg 0", "msg 1"] and log.warnings


def test_replacement_record_out_of_place_is_detected(history: HistoryStore) -> None:
    conv = make(history, n=2)
    history.replace_last("m", conv, "new")
    path = log_of(history, conv)
    parts = frames(history, path.read_bytes())
    rebuild(path, [with_seq(history, path, parts[2], 0)])
    with pytest.raises(HistoryTampered, match="record 0 fails authentication"):
        history.messages("m", conv)


def damaged(conv: str, why: str) -> str:
    return (
        f"Conversation {conv} of model 'm' is damaged: {why}. Its files were altered or "
        "corrupted, so it is not shown; other conversations are not affected. Restore "
        "history/ from a backup, or delete this conversation."
    )


@pytest.mark.parametrize("which", [1, 3])
def test_forged_length_reads_as_tampering_not_as_a_crash(history: HistoryStore, which) -> None:
    """Issue 9.6: a length field forged with a recomputed CRC used to read as "last record
    incomplete", hiding every later record (and the next append cut them off). The
    header check is keyed now: without the key a forged header is tampering."""
    conv = make(history, n=4)
    path = log_of(history, conv)
    parts = frames(history, path.read_bytes())
    size = rec.HEADERS[2].size
    for forged in (
        crc_header(parts[which], length=10**6) + parts[which][size:],  # CRC recomputed
        parts[which][:2] + struct.pack(">I", 10**6) + parts[which][6:],  # tag left as it was
    ):
        rebuild(path, [*parts[:which], forged, *parts[which + 1 :]])
        before = path.read_bytes()
        with pytest.raises(HistoryTampered) as err:
            history.messages("m", conv)
        assert str(err.value) == damaged(conv, f"record {which}: forged or damaged record header")
        if which == 3:  # the last record: an append must not cut it off as "torn"
            with pytest.raises(HistoryTampered):
                history.append("m", conv, "user", "next")
            assert history.conversations("m")[0].problem == str(err.value)
        assert path.read_bytes() == before


def test_logs_of_earlier_releases_stay_readable(history: HistoryStore) -> None:
    """CRC-framed logs ("OLSWLOG1") open, take appends in their own format, and a torn
    last record after a crash is still a warning, at every offset."""
    conv = make(history, n=3)
    path = downgrade_to_v1(history, "m", conv)
    assert [m.content for m in history.messages("m", conv).messages] == ["msg 0", "msg 1", "msg 2"]
    history.append("m", conv, "user", "msg 3")
    full = path.read_bytes()
    assert full.startswith(b"OLSWLOG1")
    scan = codec_for(history, full).scan(full)
    assert (scan.error, scan.torn, len(scan.frames)) == (None, 0, 4)
    start = scan.frames[-1].offset
    for cut in range(start + 1, len(full)):
        path.write_bytes(full[:cut])
        log = history.messages("m", conv)
        assert [m.content for m in log.messages] == ["msg 0", "msg 1", "msg 2"]
        assert log.warnings == [
            f"The last record of conversation {conv} was incomplete ({cut - start} bytes, "
            "from an interrupted write) and was skipped."
        ]
    history.append("m", conv, "assistant", "after the crash")
    log = history.messages("m", conv)
    assert log.warnings == [] and log.messages[-1].content == "after the crash"


@pytest.mark.parametrize("which", [1, 3])
def test_forged_length_in_an_earlier_release_log_is_tampering(history: HistoryStore, which):
    """In a CRC-framed log anyone can forge a length; the records it hides are found and
    authenticated with the key, so it reads as tampering, never as a crash."""
    conv = make(history, n=4)
    path = downgrade_to_v1(history, "m", conv)
    data = path.read_bytes()
    scan = codec_for(history, data).scan(data)
    parts = [data[f.offset : f.end] for f in scan.frames]
    size = rec.HEADERS[1].size
    forged = crc_header(parts[which], length=len(data)) + parts[which][size:]
    rebuild(path, [*parts[:which], forged, *parts[which + 1 :]])
    before = path.read_bytes()
    why = f"record {which}: its length field was altered, hiding the records after it"
    with pytest.raises(HistoryTampered) as err:
        history.messages("m", conv)
    assert str(err.value) == damaged(conv, why)
    assert path.read_bytes() == before
    if which == 3:  # the last record: an append must not cut it off as "torn"
        with pytest.raises(HistoryTampered, match="its length field was altered"):
            history.append("m", conv, "user", "next")
        assert path.read_bytes() == before


def test_log_rewritten_in_the_older_format_is_tampering(history: HistoryStore) -> None:
    """A conversation written with keyed frames cannot be downgraded to CRC frames."""
    conv = make(history, n=2)
    path = downgrade_to_v1(history, "m", conv, header=False)
    before = path.read_bytes()
    with pytest.raises(HistoryTampered) as err:
        history.messages("m", conv)
    assert str(err.value) == damaged(
        conv, "its message log was rewritten in an older, weaker format"
    )
    assert path.read_bytes() == before
