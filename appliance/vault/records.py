"""The on-disk framing of a conversation log: an append-only file of sealed records.

    log    = magic (8 bytes) || log_id (16 bytes) || frame*
    frame  = "\\xa5R" || length u32 || seq u64 || check || body (`length` bytes) || length u32

`body` is nonce || AES-256-GCM ciphertext; its associated data binds the model, the
conversation, the log and the sequence number, so a record cannot be moved, reordered
or replayed unnoticed. The header `check` tells a torn last frame (the file simply ends
early, as after a crash mid-write) from a damaged or forged one, and the trailing
length lets the last frame be found from the end of the file: appends stay O(1).

Two versions exist:

- "OLSWLOG2" (written today): `check` is an 8-byte HMAC-SHA256 tag, keyed from the
  data key, over the log id and the header. A forged length field fails the tag, so it
  reads as tampering, never as a crash.
- "OLSWLOG1" (written by earlier releases; still read and appended to): `check` is a
  CRC-32, which anyone can recompute. Readers of such logs authenticate the frames a
  "torn" tail may be hiding (see `v1_hidden_lengths`) before calling it a crash.
"""

from __future__ import annotations

import hmac
import os
import struct
import zlib
from dataclasses import dataclass, field

LOG_MAGIC_V1 = b"OLSWLOG1"
LOG_MAGIC_V2 = b"OLSWLOG2"
MAGICS = {LOG_MAGIC_V1: 1, LOG_MAGIC_V2: 2}
LOG_ID_BYTES = 16
LOG_HEADER_BYTES = len(LOG_MAGIC_V2) + LOG_ID_BYTES
FRAME_MAGIC = b"\xa5R"
TAG_BYTES = 8
HEAD_BYTES = 2 + 4 + 8  # marker, length, seq: what the check covers
HEADERS = {1: struct.Struct(">2sIQI"), 2: struct.Struct(f">2sIQ{TAG_BYTES}s")}
TRAILER = struct.Struct(">I")
MIN_BODY = 12 + 16
MAX_BODY = 64 * 1024 * 1024
CURRENT_VERSION = 2


@dataclass(frozen=True)
class Frame:
    offset: int
    seq: int
    body: bytes
    overhead: int

    @property
    def end(self) -> int:
        return self.offset + self.overhead + len(self.body)


@dataclass
class Scan:
    """The frames of a log. `torn` counts trailing bytes of an incomplete last frame;
    `torn_header` is (offset, claimed length) when that tail starts with a whole frame
    header; `error` describes the first damaged frame (nothing after it is returned)."""

    frames: list[Frame] = field(default_factory=list)
    end: int = LOG_HEADER_BYTES
    torn: int = 0
    torn_header: tuple[int, int] | None = None
    error: str | None = None


def log_version(data: bytes) -> int | None:
    """The framing version named by a log's first bytes, or None."""
    return MAGICS.get(bytes(data[: len(LOG_MAGIC_V2)]))


class Codec:
    """Encodes and checks the frames of one log (its version, its id, its frame key)."""

    def __init__(self, version: int, log_id: bytes, key: bytes) -> None:
        if version not in HEADERS:
            raise ValueError(f"unknown log version {version}")
        self.version = version
        self.log_id = log_id
        self._key = key
        self.header = HEADERS[version]
        self.overhead = self.header.size + TRAILER.size

    def log_header(self) -> bytes:
        magic = LOG_MAGIC_V2 if self.version == 2 else LOG_MAGIC_V1
        return magic + self.log_id

    def _check(self, head: bytes) -> bytes:
        """The header check over magic, length and seq: a keyed tag (v2) or a CRC (v1)."""
        if self.version == 1:
            return struct.pack(">I", zlib.crc32(head))
        mac = hmac.new(self._key, b"frame/" + self.log_id + head, "sha256")
        return mac.digest()[:TAG_BYTES]

    def encode(self, seq: int, body: bytes) -> bytes:
        head = FRAME_MAGIC + struct.pack(">IQ", len(body), seq)
        return head + self._check(head) + body + TRAILER.pack(len(body))

    def header_at(self, data: bytes, offset: int) -> tuple[int, int] | str:
        """(length, seq) of the frame header at offset, or why it is not one."""
        size = self.header.size
        magic, length, seq, _ = self.header.unpack_from(data, offset)
        if magic != FRAME_MAGIC:
            return "no record marker"
        head = bytes(data[offset : offset + HEAD_BYTES])
        if not hmac.compare_digest(
            self._check(head), bytes(data[offset + HEAD_BYTES : offset + size])
        ):
            return (
                "damaged record header" if self.version == 1 else "forged or damaged record header"
            )
        if not MIN_BODY <= length <= MAX_BODY:
            return f"impossible record length {length}"
        return length, seq

    def scan(self, data: bytes) -> Scan:
        """Walk every frame of a log file's bytes (the log header already checked)."""
        result = Scan()
        offset = LOG_HEADER_BYTES
        while offset < len(data):
            remaining = len(data) - offset
            if remaining < self.header.size:
                if _zero_tail(data, offset) or FRAME_MAGIC.startswith(data[offset : offset + 2]):
                    result.torn = remaining
                else:
                    result.error = f"record {len(result.frames)}: no record marker"
                break
            parsed = self.header_at(data, offset)
            if isinstance(parsed, str):
                if _zero_tail(data, offset):
                    result.torn = remaining  # zero-filled tail left by a crash
                else:
                    result.error = f"record {len(result.frames)}: {parsed}"
                break
            length, seq = parsed
            end = offset + self.overhead + length
            if end > len(data):
                result.torn, result.torn_header = remaining, (offset, length)
                break
            if TRAILER.unpack_from(data, end - TRAILER.size)[0] != length:
                result.error = f"record {len(result.frames)}: damaged record trailer"
                break
            body = bytes(data[offset + self.header.size : end - TRAILER.size])
            result.frames.append(Frame(offset, seq, body, self.overhead))
            offset = end
        result.end = offset
        return result

    def read_last_frame(self, fd: int, size: int) -> Frame | None:
        """The frame ending exactly at end of file, read from the end (two small reads),
        if its header and trailer agree; None when the file does not end on a frame."""
        if size < LOG_HEADER_BYTES + self.overhead + MIN_BODY:
            return None
        length = TRAILER.unpack(os.pread(fd, TRAILER.size, size - TRAILER.size))[0]
        start = size - self.overhead - length
        if not MIN_BODY <= length <= MAX_BODY or start < LOG_HEADER_BYTES:
            return None
        data = os.pread(fd, self.overhead + length, start)
        if len(data) != self.overhead + length:
            return None
        parsed = self.header_at(data, 0)
        if isinstance(parsed, str) or parsed[0] != length:
            return None
        return Frame(start, parsed[1], data[self.header.size : -TRAILER.size], self.overhead)


def v1_hidden_lengths(data: bytes, offset: int) -> list[int]:
    """For a CRC-framed (v1) log whose frame at offset claims to run past the end of the
    file: the body lengths under which that frame would instead end on a record boundary
    (the end of the file, or the marker of a next frame) with a matching trailer.

    A frame torn by a crash has no such length (short of a 1-in-2^32 coincidence, which
    the caller's authentication rules out); a length field forged to hide the records
    after it has one, and the caller proves it by authenticating that body with the key.
    """
    overhead = HEADERS[1].size + TRAILER.size
    lengths = []
    ends = []
    find_from = offset + overhead + MIN_BODY
    while (found := data.find(FRAME_MAGIC, find_from)) != -1:
        ends.append(found)
        find_from = found + 1
    ends.append(len(data))
    for end in ends:
        length = end - offset - overhead
        if MIN_BODY <= length <= MAX_BODY and TRAILER.unpack_from(data, end - 4)[0] == length:
            lengths.append(length)
    return lengths


def _zero_tail(data: bytes, offset: int) -> bool:
    return data.count(0, offset) == len(data) - offset
