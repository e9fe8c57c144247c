"""The on-disk framing of a conversation log: an append-only file of sealed records.

    log    = "OLSWLOG1" || log_id (16 bytes) || frame*
    frame  = magic "\\xa5R" || length u32 || seq u64 || crc32(magic..seq) u32
             || body (nonce || AES-256-GCM ciphertext, `length` bytes) || length u32

The ciphertext's associated data binds the model, the conversation, the log and the
sequence number, so a record cannot be moved, reordered or replayed unnoticed. The
header CRC and the trailing length tell a torn last frame (the file simply ends early,
as after a crash mid-write) from a damaged one, and let the last frame be found from
the end of the file without reading the rest: appends stay O(1).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

LOG_MAGIC = b"OLSWLOG1"
LOG_ID_BYTES = 16
LOG_HEADER_BYTES = len(LOG_MAGIC) + LOG_ID_BYTES
FRAME_MAGIC = b"\xa5R"
HEADER = struct.Struct(">2sIQI")
TRAILER = struct.Struct(">I")
OVERHEAD = HEADER.size + TRAILER.size
MIN_BODY = 12 + 16
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    offset: int
    seq: int
    body: bytes

    @property
    def end(self) -> int:
        return self.offset + OVERHEAD + len(self.body)


@dataclass
class Scan:
    """The frames of a log. `torn` counts trailing bytes of an incomplete last frame;
    `error` describes the first damaged frame (nothing after it is returned)."""

    frames: list[Frame] = field(default_factory=list)
    end: int = LOG_HEADER_BYTES
    torn: int = 0
    error: str | None = None


def log_header(log_id: bytes) -> bytes:
    return LOG_MAGIC + log_id


def encode(seq: int, body: bytes) -> bytes:
    head = FRAME_MAGIC + struct.pack(">IQ", len(body), seq)
    return head + struct.pack(">I", zlib.crc32(head)) + body + TRAILER.pack(len(body))


def _header_at(data: bytes, offset: int) -> tuple[int, int] | str:
    """(length, seq) of the frame header at offset, or why it is not one."""
    magic, length, seq, crc = HEADER.unpack_from(data, offset)
    if magic != FRAME_MAGIC:
        return "no record marker"
    if zlib.crc32(data[offset : offset + HEADER.size - 4]) != crc:
        return "damaged record header"
    if not MIN_BODY <= length <= MAX_BODY:
        return f"impossible record length {length}"
    return length, seq


def scan(data: bytes) -> Scan:
    """Walk every frame of a log file's bytes (the log header already checked)."""
    result = Scan()
    offset = LOG_HEADER_BYTES
    while offset < len(data):
        remaining = len(data) - offset
        if remaining < HEADER.size:
            if _zero_tail(data, offset) or FRAME_MAGIC.startswith(data[offset : offset + 2]):
                result.torn = remaining
            else:
                result.error = f"record {len(result.frames)}: no record marker"
            break
        parsed = _header_at(data, offset)
        if isinstance(parsed, str):
            if _zero_tail(data, offset):
                result.torn = remaining  # zero-filled tail left by a crash
            else:
                result.error = f"record {len(result.frames)}: {parsed}"
            break
        length, seq = parsed
        end = offset + OVERHEAD + length
        if end > len(data):
            result.torn = remaining
            break
        if TRAILER.unpack_from(data, end - TRAILER.size)[0] != length:
            result.error = f"record {len(result.frames)}: damaged record trailer"
            break
        result.frames.append(Frame(offset, seq, data[offset + HEADER.size : end - TRAILER.size]))
        offset = end
    result.end = offset
    return result


def _zero_tail(data: bytes, offset: int) -> bool:
    return data.count(0, offset) == len(data) - offset


def read_last_frame(fd: int, size: int) -> Frame | None:
    """The frame ending exactly at end of file, read from the end (two small reads), if
    its header and trailer agree; None when the file does not end on a frame boundary."""
    if size < LOG_HEADER_BYTES + OVERHEAD + MIN_BODY:
        return None
    length = TRAILER.unpack(os.pread(fd, TRAILER.size, size - TRAILER.size))[0]
    start = size - OVERHEAD - length
    if not MIN_BODY <= length <= MAX_BODY or start < LOG_HEADER_BYTES:
        return None
    data = os.pread(fd, OVERHEAD + length, start)
    if len(data) != OVERHEAD + length:
        return None
    parsed = _header_at(data, 0)
    if isinstance(parsed, str) or parsed[0] != length:
        return None
    return Frame(start, parsed[1], data[HEADER.size : -TRAILER.size])
