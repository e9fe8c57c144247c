"""Encrypted per-model chat history under history/, append-only and crash-safe.

Layout (every name is opaque without the key):

    history/<model tag>/model.id                 sealed model id
    history/<model tag>/<conv>.conv              sealed header: title, created_at, log id
    history/<model tag>/<conv>-<log id>.log      append-only records (see records.py)

The model tag is an HMAC of the model id, so file names do not reveal which models
were used. A message is one sealed record appended with one write and an fsync; the
header changes only on create, rename and clear, so an append is O(1). Each record's
associated data binds model, conversation, log and sequence number: reordered,
dropped, duplicated or transplanted records fail with HistoryTampered, which names the
conversation, while every other conversation stays readable. A torn last record (a
crash mid-write) is skipped with a warning and cut off by the next append. "Regenerate"
appends a superseding record; clear switches the header to a new, empty log and lists
the old one as retired before deleting it.

Reading never deletes or rewrites anything. A log that no header names (its `.conv`
is missing, unreadable, or names another log, as after restoring part of a backup) is
listed as a *recovered conversation*: its conversation and log ids are in its file
name, which is all its records need to be decrypted. It can be read and exported,
kept as a regular conversation (`adopt`), or deleted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.fsutil import FileLock, atomic_write_bytes, fsync_dir, sweep_stale_temps
from appliance.paths import Paths, private_dir
from appliance.roles import HISTORY_ROLES
from appliance.vault import keys, records
from appliance.vault.errors import HistoryError, HistoryTampered, UnknownConversation
from appliance.vault.keys import AuthFailed, KeyRing

MAX_CONTENT_BYTES = 16 * 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_MODEL_ID_CHARS = 512
RECOVERED_TITLE = "Recovered conversation"
_CONV_RE = re.compile(r"^[0-9a-f]{16}$")
_RECOVERED_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{32})$")
_LOG_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{32})\.log$")
_TAG_RE = re.compile(r"^[0-9a-f]{32}$")
_DELETED_MARK = ".deleted-"
_TOMBSTONE = ".deleting"


@dataclass(frozen=True)
class Message:
    """One effective message. `seq` is the record that holds its current content."""

    seq: int
    role: str
    content: str
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversationInfo:
    """A conversation as listed. `problem` is set when it cannot be read; `recovered`
    marks a log found without its header (its id is "<conversation>-<log>")."""

    id: str
    title: str
    created_at: float
    updated_at: float
    message_count: int
    problem: str | None = None
    recovered: bool = False


@dataclass
class ConversationLog:
    info: ConversationInfo
    messages: list[Message]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Header:
    title: str
    created_at: float
    log_id: bytes
    log_format: int = records.CURRENT_VERSION
    retired: list[bytes] = field(default_factory=list)


@dataclass
class _Tail:
    """Where the next record goes and what the log holds so far."""

    end: int
    next_seq: int
    count: int
    last: Message | None
    codec: records.Codec | None = None


class HistoryStore:
    """Conversations per model id. `keys` returns the unlocked key ring or raises."""

    def __init__(
        self,
        paths: Paths,
        keys_provider: Callable[[], KeyRing],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = private_dir(paths.history)
        self._keys = keys_provider
        self._clock = clock
        self._lock = FileLock(self.root / ".lock")
        with self._lock.hold():
            self._sweep()

    # ----------------------------------------------------------------- listing
    def model_ids(self) -> list[str]:
        """Model ids that have at least one conversation (recovered ones included)."""
        ring = self._keys()
        found = []
        with self._lock.hold():
            for mdir in self._model_dirs():
                model_id = self._read_model_id(ring, mdir)
                if model_id is not None and _has_history(mdir):
                    found.append(model_id)
        return sorted(found)

    def unreadable_models(self) -> list[str]:
        """One message per model folder whose stored model id cannot be read: its
        conversations are kept, but no model id lists them."""
        ring = self._keys()
        with self._lock.hold():
            bad = [d for d in self._model_dirs() if self._read_model_id(ring, d) is None]
            return [_unreadable_model(d) for d in bad if _has_history(d)]

    def count(self, model_id: str) -> int:
        """How many conversations a model has (no decryption needed): its headers, and
        the conversation ids whose only trace is a non-empty log."""
        _, mdir = self._model(self._keys(), model_id)
        if not mdir.is_dir():
            return 0
        convs = {p.stem for p in self._conv_files(mdir)}
        headless = {c for c, _ in _log_names(mdir) if c not in convs and _non_empty(mdir, c)}
        return len(convs) + len(headless)

    def conversations(self, model_id: str) -> list[ConversationInfo]:
        """A model's conversations, most recently updated first, then the recovered ones.

        O(1) per conversation: the header and the last record are authenticated; damage
        further inside a log shows as HistoryTampered when the conversation is opened.
        Recovered logs (rare: after a partial restore) are read in full. Nothing is
        written or deleted.
        """
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            if not mdir.is_dir():
                return []
            headers: dict[str, _Header | None] = {}
            infos = [
                self._info(ring, mtag, mdir, model_id, p.stem, headers)
                for p in self._conv_files(mdir)
            ]
            found = [
                self._recovered_info(ring, mtag, mdir, model_id, conv_id, log_id)
                for conv_id, log_id in self._orphan_logs(mdir, headers)
            ]
        order = lambda i: (i.updated_at, i.created_at, i.id)  # noqa: E731
        recovered = [i for i in found if i is not None]
        return sorted(infos, key=order, reverse=True) + sorted(recovered, key=order, reverse=True)

    def latest(self, model_id: str) -> ConversationInfo | None:
        """The conversation to resume: the most recently updated readable one."""
        return next(
            (c for c in self.conversations(model_id) if c.problem is None and not c.recovered),
            None,
        )

    def info(self, model_id: str, conv_id: str) -> ConversationInfo:
        """One conversation's listing entry."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            if _RECOVERED_RE.match(str(conv_id)):
                return self._read_recovered(ring, mtag, mdir, model_id, conv_id).info
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            tail = self._tail_readonly(ring, mtag, mdir, model_id, conv_id, header)
            return self._make_info(conv_id, header, tail)

    # ----------------------------------------------------------------- reading
    def messages(self, model_id: str, conv_id: str) -> ConversationLog:
        """Every effective message of a conversation, in order, with any warnings."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            if _RECOVERED_RE.match(str(conv_id)):
                return self._read_recovered(ring, mtag, mdir, model_id, conv_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            data = self._read_log(mdir, model_id, conv_id, header)
            msgs, tail, warnings = self._decode_log(
                ring, mtag, model_id, conv_id, header.log_id, data, header.log_format
            )
        return ConversationLog(self._make_info(conv_id, header, tail), msgs, warnings)

    # ----------------------------------------------------------------- writing
    def create(self, model_id: str, title: str | None = None) -> ConversationInfo:
        """A new, empty conversation (the title is encrypted like the messages)."""
        ring = self._keys()
        title = _check_title(title)
        with self._lock.hold():
            mtag, mdir = self._ensure_model(ring, model_id)
            conv_id = secrets.token_hex(8)
            header = _Header(title, self._clock(), secrets.token_bytes(records.LOG_ID_BYTES))
            self._write_log(ring, mdir, conv_id, header, b"")
            self._write_header(ring, mtag, mdir, conv_id, header)
        return ConversationInfo(conv_id, title, header.created_at, header.created_at, 0)

    def append(
        self, model_id: str, conv_id: str, role: str, content: str, meta: dict | None = None
    ) -> Message:
        """Add one message: one record appended and fsynced, nothing rewritten."""
        if role not in HISTORY_ROLES:
            raise HistoryError(
                f"Unknown role {role!r}; expected one of {', '.join(HISTORY_ROLES)}."
            )
        return self._append(model_id, conv_id, "m", role, content, meta)

    def replace_last(
        self, model_id: str, conv_id: str, content: str, meta: dict | None = None
    ) -> Message:
        """Supersede the last message (regenerate), by appending a record."""
        return self._append(model_id, conv_id, "r", None, content, meta)

    def rename(self, model_id: str, conv_id: str, title: str) -> ConversationInfo:
        """Change the title (rewrites the small header atomically, not the log)."""
        ring = self._keys()
        title = _check_title(title)
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            header.title = title
            self._write_header(ring, mtag, mdir, conv_id, header)
        return self.info(model_id, conv_id)

    def clear(self, model_id: str, conv_id: str) -> ConversationInfo:
        """Remove every message but keep the conversation (a new, empty log). The old
        log is listed as retired in the header before it is deleted, so a crash in
        between never brings the cleared messages back as a recovered conversation."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            header.retired.append(header.log_id)
            header.log_id = secrets.token_bytes(records.LOG_ID_BYTES)
            header.log_format = records.CURRENT_VERSION
            self._write_log(ring, mdir, conv_id, header, b"")
            self._write_header(ring, mtag, mdir, conv_id, header)
            _unlink_logs(mdir, conv_id, header.retired)
        return self.info(model_id, conv_id)

    def delete(self, model_id: str, conv_id: str) -> None:
        """Delete one conversation for good (or one recovered log)."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            if _RECOVERED_RE.match(str(conv_id)):
                self._recovered_path(mdir, model_id, conv_id).unlink()
                fsync_dir(mdir)
            else:
                self._delete_conversation(ring, mtag, mdir, model_id, conv_id)
            if not _has_history(mdir):
                self._remove_model_dir(mdir)

    def delete_model(self, model_id: str) -> int:
        """Delete all history of a model, recovered logs included; returns how many
        conversations were deleted."""
        ring = self._keys()
        with self._lock.hold():
            _, mdir = self._model(ring, model_id)
            if not mdir.is_dir():
                return 0
            count = self.count(model_id)
            self._remove_model_dir(mdir)
        return count

    def adopt(self, model_id: str, conv_id: str) -> ConversationInfo:
        """Keep a recovered conversation as a regular one, on the user's request; a
        regular id is returned as it is. A log without any header gets a new header
        (title "Recovered conversation"), nothing copied. A log beside another header
        (or a damaged one) is copied into a new conversation, then its file is removed:
        its messages now live in the copy."""
        if not _RECOVERED_RE.match(str(conv_id)):
            return self.info(model_id, conv_id)
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            log = self._read_recovered(ring, mtag, mdir, model_id, conv_id)
            base, log_hex = _RECOVERED_RE.match(conv_id).groups()
            if not (mdir / f"{base}.conv").exists() and not (mdir / f"{base}{_TOMBSTONE}").exists():
                path = self._recovered_path(mdir, model_id, conv_id)
                version = records.log_version(path.read_bytes()[: records.LOG_HEADER_BYTES])
                created = log.messages[0].created_at if log.messages else self._clock()
                header = _Header(RECOVERED_TITLE, created, bytes.fromhex(log_hex), version or 1)
                self._write_header(ring, mtag, mdir, base, header)
                return self.info(model_id, base)
            copied = self.import_messages(
                model_id, [(m.role, m.content, m.created_at, m.meta) for m in log.messages],
                title=RECOVERED_TITLE, created_at=log.info.created_at,
            )  # fmt: skip
            self._recovered_path(mdir, model_id, conv_id).unlink()
            fsync_dir(mdir)
        return copied

    # ----------------------------------------------------------------- transfer
    def export(self, model_id: str, conv_id: str, fmt: str = "md") -> str:
        """The decrypted conversation as Markdown or JSON (only on the user's request)."""
        from appliance.vault import transfer

        log = self.messages(model_id, conv_id)
        if fmt == "json":
            return transfer.to_json(model_id, log)
        if fmt == "md":
            return transfer.to_markdown(model_id, log)
        raise HistoryError(f"Unknown export format {fmt!r}; use 'md' or 'json'.")

    def import_json(self, model_id: str, text: str) -> ConversationInfo:
        """A new conversation from an export made by `export(..., 'json')`."""
        from appliance.vault import transfer

        title, created_at, msgs = transfer.parse_json(text)
        return self.import_messages(model_id, msgs, title=title, created_at=created_at)

    def import_messages(
        self,
        model_id: str,
        msgs: Iterable[tuple[str, str, float | None, dict | None]],
        *,
        title: str | None = None,
        created_at: float | None = None,
        conv_id: str | None = None,
    ) -> ConversationInfo:
        """Write a whole conversation at once; an existing `conv_id` is replaced (its
        previous log is retired, then deleted)."""
        ring = self._keys()
        title = _check_title(title)
        now = self._clock()
        header = _Header(title, now if created_at is None else created_at,
                         secrets.token_bytes(records.LOG_ID_BYTES))  # fmt: skip
        with self._lock.hold():
            mtag, mdir = self._ensure_model(ring, model_id)
            conv_id = conv_id or secrets.token_hex(8)
            codec = self._codec(ring, records.CURRENT_VERSION, header.log_id)
            body = bytearray()
            for seq, (role, content, at, meta) in enumerate(msgs):
                if role not in HISTORY_ROLES:
                    raise HistoryError(f"Message {seq} has unknown role {role!r}.")
                payload = _payload("m", role, content, meta, now if at is None else at, seq + 1)
                body += self._seal_record(ring, mtag, conv_id, codec, seq, payload)
            header.retired = self._replaced_logs(ring, mtag, mdir, model_id, conv_id)
            self._write_log(ring, mdir, conv_id, header, bytes(body))
            self._write_header(ring, mtag, mdir, conv_id, header)
            _unlink_logs(mdir, conv_id, header.retired)
        return self.info(model_id, conv_id)

    # ----------------------------------------------------------------- internals
    def _append(
        self, model_id: str, conv_id: str, kind: str, role: str | None, content: str,
        meta: dict | None,
    ) -> Message:  # fmt: skip
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            path = _log_path(mdir, conv_id, header.log_id)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                raise _tampered(model_id, conv_id, "its message log is missing") from None
            try:
                tail = self._tail(ring, mtag, model_id, conv_id, header, fd, repair=True)
                if kind == "r":
                    if tail.last is None:
                        raise HistoryError("This conversation has no message to replace.")
                    role = tail.last.role
                count = tail.count + (kind == "m")
                at = self._clock()
                payload = _payload(kind, role, content, meta, at, count)
                frame = self._seal_record(ring, mtag, conv_id, tail.codec, tail.next_seq, payload)
                _pwrite_all(fd, frame, tail.end)
                os.fsync(fd)
            finally:
                os.close(fd)
        return Message(tail.next_seq, role, content, at, dict(meta or {}))

    def _codec(self, ring: KeyRing, version: int, log_id: bytes) -> records.Codec:
        return records.Codec(version, log_id, ring["frames"])

    def _log_codec(
        self, ring: KeyRing, model_id: str, conv_id: str, log_id: bytes, prefix: bytes,
        min_version: int,
    ) -> records.Codec:  # fmt: skip
        """The codec a log's first bytes call for, after checking they belong to it."""
        version = records.log_version(prefix)
        if version is None:
            raise _tampered(model_id, conv_id, "its message log has no valid file header")
        if prefix[-records.LOG_ID_BYTES :] != log_id:
            raise _tampered(model_id, conv_id, "its message log belongs to another conversation")
        if version < min_version:
            raise _tampered(
                model_id, conv_id, "its message log was rewritten in an older, weaker format"
            )
        return self._codec(ring, version, log_id)

    def _tail(
        self, ring: KeyRing, mtag: str, model_id: str, conv_id: str, header: _Header, fd: int,
        *, repair: bool,
    ) -> _Tail:  # fmt: skip
        """The log's end state: from its last frame alone when it ends cleanly (O(1)),
        else from a full read; with repair, a torn tail is cut off."""
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, records.LOG_HEADER_BYTES, 0)
        codec = self._log_codec(ring, model_id, conv_id, header.log_id, prefix, header.log_format)
        if size == records.LOG_HEADER_BYTES:
            return _Tail(size, 0, 0, None, codec)
        frame = codec.read_last_frame(fd, size)
        if frame is not None:
            with contextlib.suppress(AuthFailed, ValueError, KeyError, TypeError):
                rec = self._open_record(ring, mtag, conv_id, header.log_id, frame)
                last = Message(frame.seq, rec["role"], rec["content"], rec["at"], rec["meta"])
                return _Tail(size, frame.seq + 1, int(rec["n"]), last, codec)
        data = os.pread(fd, size, 0)
        _, tail, _ = self._decode_log(
            ring, mtag, model_id, conv_id, header.log_id, data, header.log_format
        )
        if repair and tail.end < size:
            os.ftruncate(fd, tail.end)
            os.fsync(fd)
        return tail

    def _tail_readonly(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str, header: _Header
    ) -> _Tail:
        try:
            fd = os.open(_log_path(mdir, conv_id, header.log_id), os.O_RDONLY)
        except FileNotFoundError:
            raise _tampered(model_id, conv_id, "its message log is missing") from None
        try:
            return self._tail(ring, mtag, model_id, conv_id, header, fd, repair=False)
        finally:
            os.close(fd)

    def _decode_log(
        self, ring: KeyRing, mtag: str, model_id: str, conv_id: str, log_id: bytes,
        data: bytes, min_version: int = 1, label: str | None = None,
    ) -> tuple[list[Message], _Tail, list[str]]:  # fmt: skip
        """Every record of a log, authenticated in order. `label` names the conversation
        in messages (a recovered log's id), `conv_id` is what its records are bound to."""
        label = label or conv_id
        prefix = data[: records.LOG_HEADER_BYTES]
        codec = self._log_codec(ring, model_id, label, log_id, prefix, min_version)
        scan = codec.scan(data)
        if scan.error:
            raise _tampered(model_id, label, scan.error)
        msgs: list[Message] = []
        for index, frame in enumerate(scan.frames):
            if frame.seq != index:
                why = "a record is missing" if frame.seq > index else "records are out of order"
                raise _tampered(model_id, label, f"record {index}: {why}")
            try:
                rec = self._open_record(ring, mtag, conv_id, log_id, frame)
                msg = Message(frame.seq, rec["role"], rec["content"], rec["at"], rec["meta"])
                if rec["k"] == "m":
                    msgs.append(msg)
                elif rec["k"] == "r" and msgs:
                    msgs[-1] = msg
                else:
                    raise ValueError("replacement without a message")
                if rec["n"] != len(msgs):
                    raise ValueError("message count mismatch")
            except AuthFailed:
                raise _tampered(
                    model_id, label, f"record {index} fails authentication (it was altered, "
                    "or copied from another conversation)",
                ) from None  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise _tampered(model_id, label, f"record {index} is malformed ({exc})") from None
        warnings = []
        if scan.torn:
            self._check_v1_torn_tail(ring, mtag, model_id, conv_id, label, codec, scan, data)
            warnings.append(
                f"The last record of conversation {label} was incomplete ({scan.torn} bytes, "
                "from an interrupted write) and was skipped."
            )
        last = msgs[-1] if msgs else None
        return msgs, _Tail(scan.end, len(scan.frames), len(msgs), last, codec), warnings

    def _check_v1_torn_tail(
        self, ring: KeyRing, mtag: str, model_id: str, conv_id: str, label: str,
        codec: records.Codec, scan: records.Scan, data: bytes,
    ) -> None:  # fmt: skip
        """A CRC-framed log's "torn" tail must not hide whole records behind a forged
        length field: any complete record found there is authenticated with the key."""
        if codec.version != 1 or scan.torn_header is None:
            return
        offset, _ = scan.torn_header
        index = len(scan.frames)
        start = offset + codec.header.size
        aad = _record_aad(mtag, conv_id, codec.log_id, index)
        for length in records.v1_hidden_lengths(data, offset):
            with contextlib.suppress(AuthFailed):
                keys.open_sealed(ring["history"], bytes(data[start : start + length]), aad)
                raise _tampered(
                    model_id, label, f"record {index}: its length field was altered, "
                    "hiding the records after it",
                )  # fmt: skip

    def _info(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str,
        headers: dict[str, _Header | None],
    ) -> ConversationInfo:  # fmt: skip
        headers[conv_id] = None
        try:
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
        except HistoryTampered as exc:
            return ConversationInfo(conv_id, "(unreadable)", 0.0, 0.0, 0, str(exc))
        headers[conv_id] = header
        try:
            tail = self._tail_readonly(ring, mtag, mdir, model_id, conv_id, header)
        except HistoryTampered as exc:
            return ConversationInfo(
                conv_id, header.title, header.created_at, header.created_at, 0, str(exc)
            )
        return self._make_info(conv_id, header, tail)

    @staticmethod
    def _make_info(conv_id: str, header: _Header, tail: _Tail) -> ConversationInfo:
        updated = tail.last.created_at if tail.last else header.created_at
        return ConversationInfo(conv_id, header.title, header.created_at, updated, tail.count)

    # ----------------------------------------------------------------- recovered logs
    def _orphan_logs(
        self, mdir: Path, headers: dict[str, _Header | None]
    ) -> list[tuple[str, bytes]]:
        """(conversation id, log id) of every non-empty log that no readable header
        names as current or retired, and whose conversation is not being deleted."""
        found = []
        for conv_id, log_id in _log_names(mdir):
            if (mdir / f"{conv_id}{_TOMBSTONE}").exists():
                continue
            header = headers.get(conv_id)
            if header is not None and (log_id == header.log_id or log_id in header.retired):
                continue
            if _log_path(mdir, conv_id, log_id).stat().st_size > records.LOG_HEADER_BYTES:
                found.append((conv_id, log_id))
        return found

    def _recovered_info(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str, log_id: bytes
    ) -> ConversationInfo | None:
        """The listing entry of a recovered log; None when it holds no message."""
        rid = f"{conv_id}-{log_id.hex()}"
        try:
            log = self._read_recovered(ring, mtag, mdir, model_id, rid)
        except HistoryTampered as exc:
            return ConversationInfo(rid, RECOVERED_TITLE, 0.0, 0.0, 0, str(exc), recovered=True)
        return log.info if log.messages else None

    def _read_recovered(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, rid: str
    ) -> ConversationLog:
        """Decrypt a recovered log with the ids in its file name (read-only)."""
        conv_id, log_hex = _RECOVERED_RE.match(rid).groups()
        data = self._recovered_path(mdir, model_id, rid).read_bytes()
        msgs, _, warnings = self._decode_log(
            ring, mtag, model_id, conv_id, bytes.fromhex(log_hex), data, label=rid
        )
        created = msgs[0].created_at if msgs else 0.0
        updated = msgs[-1].created_at if msgs else 0.0
        info = ConversationInfo(rid, RECOVERED_TITLE, created, updated, len(msgs), recovered=True)
        note = (
            f"Conversation {rid} was recovered: its messages were found in history/ without "
            "the header that names them (for example after restoring part of a backup), so "
            "its title and date are lost. Send a message to keep it as a regular "
            "conversation, or delete it."
        )
        return ConversationLog(info, msgs, [note, *warnings])

    @staticmethod
    def _recovered_path(mdir: Path, model_id: str, rid: str) -> Path:
        path = mdir / f"{rid}.log"
        if not path.is_file():
            raise UnknownConversation(
                f"Model {model_id!r} has no conversation {rid}. "
                "Run `appliance history list MODEL` to see its conversations."
            )
        return path

    def _replaced_logs(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str
    ) -> list[bytes]:
        """The logs a conversation's current header names (current and retired), which
        an import into that id replaces; [] for a new or unreadable header."""
        if not (mdir / f"{conv_id}.conv").exists():
            return []
        try:
            old = self._read_header(ring, mtag, mdir, model_id, conv_id)
        except HistoryTampered:
            return []
        return [*old.retired, old.log_id]

    def _delete_conversation(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str
    ) -> None:
        """Rename the header to a tombstone (atomic), then delete the logs it names. A
        damaged header names nothing: its logs stay, listed as recovered."""
        header_path = mdir / f"{conv_id}.conv"
        if not _CONV_RE.match(str(conv_id)) or not header_path.is_file():
            raise UnknownConversation(f"Model {model_id!r} has no conversation {conv_id!r}.")
        os.replace(header_path, mdir / f"{conv_id}{_TOMBSTONE}")
        fsync_dir(mdir)
        self._finish_delete(ring, mtag, mdir, conv_id)

    def _finish_delete(self, ring: KeyRing, mtag: str, mdir: Path, conv_id: str) -> None:
        tomb = mdir / f"{conv_id}{_TOMBSTONE}"
        with contextlib.suppress(HistoryTampered):
            header = self._read_header(ring, mtag, mdir, "", conv_id, tomb)
            _unlink_logs(mdir, conv_id, [*header.retired, header.log_id])
        tomb.unlink(missing_ok=True)
        fsync_dir(mdir)

    def _seal_record(
        self, ring: KeyRing, mtag: str, conv_id: str, codec: records.Codec, seq: int,
        payload: bytes,
    ) -> bytes:  # fmt: skip
        aad = _record_aad(mtag, conv_id, codec.log_id, seq)
        return codec.encode(seq, keys.seal(ring["history"], payload, aad))

    @staticmethod
    def _open_record(
        ring: KeyRing, mtag: str, conv_id: str, log_id: bytes, frame: records.Frame
    ) -> dict[str, Any]:
        aad = _record_aad(mtag, conv_id, log_id, frame.seq)
        rec = json.loads(keys.open_sealed(ring["history"], frame.body, aad).decode(
            "utf-8", "surrogatepass"))  # fmt: skip
        if not (isinstance(rec["content"], str) and isinstance(rec["meta"], dict)
                and isinstance(rec["at"], int | float) and isinstance(rec["n"], int)):  # fmt: skip
            raise ValueError("unexpected field types")
        return rec

    # ----------------------------------------------------------------- files
    def _model(self, ring: KeyRing, model_id: str) -> tuple[str, Path]:
        if not isinstance(model_id, str) or not model_id or len(model_id) > MAX_MODEL_ID_CHARS:
            raise HistoryError(f"Invalid model id {model_id!r}.")
        mtag = keys.tag(ring["names"], "model/" + model_id)
        return mtag, self.root / mtag

    def _ensure_model(self, ring: KeyRing, model_id: str) -> tuple[str, Path]:
        """The model's folder, with its sealed id; a missing or damaged model.id is
        rewritten (the folder name, a keyed hash of the id, proves which id it is)."""
        mtag, mdir = self._model(ring, model_id)
        if self._read_model_id(ring, mdir) != model_id:
            mdir.mkdir(mode=0o700, exist_ok=True)
            sealed = keys.seal(ring["names"], model_id.encode("utf-8", "surrogatepass"),
                               keys.DOMAIN + b"model-id/" + mtag.encode())  # fmt: skip
            atomic_write_bytes(mdir / "model.id", sealed)
        return mtag, mdir

    def _read_model_id(self, ring: KeyRing, mdir: Path) -> str | None:
        try:
            sealed = (mdir / "model.id").read_bytes()
            aad = keys.DOMAIN + b"model-id/" + mdir.name.encode()
            return keys.open_sealed(ring["names"], sealed, aad).decode("utf-8", "surrogatepass")
        except (OSError, AuthFailed, UnicodeDecodeError):
            return None

    def _read_header(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str,
        path: Path | None = None,
    ) -> _Header:  # fmt: skip
        if isinstance(conv_id, str) and _RECOVERED_RE.match(conv_id):
            raise HistoryError(
                f"Conversation {conv_id} is a recovered conversation: keep it as a regular "
                "one first (send a message to it in the app, or run `appliance history "
                f"recover {model_id} --conversation {conv_id}`)."
            )
        if not isinstance(conv_id, str) or not _CONV_RE.match(conv_id):
            raise UnknownConversation(f"{conv_id!r} is not a conversation id.")
        try:
            sealed = (path or mdir / f"{conv_id}.conv").read_bytes()
        except FileNotFoundError:
            raise UnknownConversation(
                f"Model {model_id!r} has no conversation {conv_id}. "
                "Run `appliance history list MODEL` to see its conversations."
            ) from None
        try:
            doc = json.loads(keys.open_sealed(ring["history"], sealed, _header_aad(mtag, conv_id)))
            return _parse_header(doc)
        except AuthFailed:
            raise _tampered(model_id, conv_id, "its header fails authentication") from None
        except (ValueError, KeyError, TypeError):
            raise _tampered(model_id, conv_id, "its header is malformed") from None

    def _write_header(
        self, ring: KeyRing, mtag: str, mdir: Path, conv_id: str, header: _Header
    ) -> None:
        """Seal and atomically replace the header; retired logs already gone are
        dropped from it."""
        header.retired = [r for r in header.retired if _log_path(mdir, conv_id, r).exists()]
        doc = {"title": header.title, "created_at": header.created_at,
               "log_id": header.log_id.hex(), "log_format": header.log_format,
               "retired": [r.hex() for r in header.retired]}  # fmt: skip
        plain = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
        sealed = keys.seal(ring["history"], plain, _header_aad(mtag, conv_id))
        atomic_write_bytes(mdir / f"{conv_id}.conv", sealed)

    def _write_log(
        self, ring: KeyRing, mdir: Path, conv_id: str, header: _Header, body: bytes
    ) -> None:
        codec = self._codec(ring, header.log_format, header.log_id)
        atomic_write_bytes(_log_path(mdir, conv_id, header.log_id), codec.log_header() + body)

    @staticmethod
    def _read_log(mdir: Path, model_id: str, conv_id: str, header: _Header) -> bytes:
        try:
            return _log_path(mdir, conv_id, header.log_id).read_bytes()
        except FileNotFoundError:
            raise _tampered(model_id, conv_id, "its message log is missing") from None

    def _model_dirs(self) -> list[Path]:
        return stored_model_dirs(self.root)

    @staticmethod
    def _conv_files(mdir: Path) -> list[Path]:
        return sorted(p for p in mdir.glob("*.conv") if _CONV_RE.match(p.stem))

    def _remove_model_dir(self, mdir: Path) -> None:
        """Rename first (atomic), then delete: a crash never leaves half a model dir."""
        doomed = self.root / f"{_DELETED_MARK}{mdir.name}-{secrets.token_hex(4)}"
        os.rename(mdir, doomed)
        fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)

    def _sweep(self) -> None:
        """Finish deletions the user asked for that a crash interrupted (model folders
        renamed away, conversation tombstones), and drop temp files a crash left."""
        sweep_stale_temps(self.root)
        for path in self.root.iterdir():
            if path.name.startswith(_DELETED_MARK) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and _TAG_RE.match(path.name):
                sweep_stale_temps(path)
                self._sweep_tombstones(path)

    def _sweep_tombstones(self, mdir: Path) -> None:
        tombs = [p for p in mdir.glob(f"*{_TOMBSTONE}") if _CONV_RE.match(p.stem)]
        if not tombs:
            return
        ring = self._keys()
        mtag = mdir.name
        for tomb in tombs:
            self._finish_delete(ring, mtag, mdir, tomb.stem)


def is_recovered_id(conv_id: str) -> bool:
    """Whether conv_id names a recovered conversation (a log found without its header)."""
    return isinstance(conv_id, str) and bool(_RECOVERED_RE.match(conv_id))


def stored_model_dirs(history_dir: Path) -> list[Path]:
    """The model folders under history/ (whatever key they were written with)."""
    if not history_dir.is_dir():
        return []
    return sorted(p for p in history_dir.iterdir() if p.is_dir() and _TAG_RE.match(p.name))


def _log_names(mdir: Path) -> list[tuple[str, bytes]]:
    """(conversation id, log id) of every log file in a model folder, from its name."""
    found = []
    for path in sorted(mdir.glob("*.log")):
        match = _LOG_RE.match(path.name)
        if match:
            found.append((match.group(1), bytes.fromhex(match.group(2))))
    return found


def _non_empty(mdir: Path, conv_id: str) -> bool:
    return any(
        p.stat().st_size > records.LOG_HEADER_BYTES
        for p in mdir.glob(f"{conv_id}-*.log")
        if _LOG_RE.match(p.name)
    )


def _has_history(mdir: Path) -> bool:
    """Whether a model folder holds a conversation header or a log with records."""
    if any(p for p in mdir.glob("*.conv") if _CONV_RE.match(p.stem)):
        return True
    return any(_non_empty(mdir, conv_id) for conv_id, _ in _log_names(mdir))


def _unlink_logs(mdir: Path, conv_id: str, log_ids: Iterable[bytes]) -> None:
    for log_id in log_ids:
        _log_path(mdir, conv_id, log_id).unlink(missing_ok=True)
    fsync_dir(mdir)


def _unreadable_model(mdir: Path) -> str:
    return (
        f"history/{mdir.name}: the model id stored in its model.id cannot be read (the file "
        "was altered, damaged or is missing), so this model's conversations are listed under "
        "no model. They are kept: open them by model id (`appliance history list MODEL`), "
        f"or restore history/{mdir.name}/model.id from a backup. The file is rewritten the "
        "next time a conversation of that model is started."
    )


def _parse_header(doc: dict[str, Any]) -> _Header:
    """A decrypted header document (earlier releases wrote no log_format or retired)."""
    log_format = doc.get("log_format", 1)
    if log_format not in records.HEADERS:
        raise ValueError(f"unknown log format {log_format!r}")
    retired = [bytes.fromhex(r) for r in doc.get("retired", [])]
    log_id = bytes.fromhex(doc["log_id"])
    if any(len(r) != records.LOG_ID_BYTES for r in [*retired, log_id]):
        raise ValueError("bad log id")
    return _Header(str(doc["title"]), float(doc["created_at"]), log_id, log_format, retired)


def _payload(
    kind: str, role: str | None, content: str, meta: dict | None, at: float, count: int
) -> bytes:
    if not isinstance(content, str):
        raise HistoryError("Message content must be text.")
    if meta is not None and not isinstance(meta, dict):
        raise HistoryError("Message meta must be a JSON object (a dict) or None.")
    if not math.isfinite(at):
        raise HistoryError("Message time must be a finite number.")
    doc = {"k": kind, "role": role, "content": content, "meta": meta or {}, "at": at, "n": count}
    try:
        plain = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode(
            "utf-8", "surrogatepass")  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise HistoryError(f"Message meta cannot be stored as JSON ({exc}).") from None
    if len(plain) > MAX_CONTENT_BYTES:
        raise HistoryError(
            f"The message is too large ({len(plain):,} bytes; the limit is "
            f"{MAX_CONTENT_BYTES:,}). Split it or shorten it."
        )
    return plain


def _check_title(title: str | None) -> str:
    if title is None:
        return ""
    if not isinstance(title, str):
        raise HistoryError("A conversation title must be text.")
    if len(title) > MAX_TITLE_CHARS:
        raise HistoryError(f"The title is too long (the limit is {MAX_TITLE_CHARS} characters).")
    return title


def _log_path(mdir: Path, conv_id: str, log_id: bytes) -> Path:
    return mdir / f"{conv_id}-{log_id.hex()}.log"


def _header_aad(mtag: str, conv_id: str) -> bytes:
    return keys.DOMAIN + f"conversation/{mtag}/{conv_id}".encode()


def _record_aad(mtag: str, conv_id: str, log_id: bytes, seq: int) -> bytes:
    return (keys.DOMAIN + f"record/{mtag}/{conv_id}/".encode() + log_id
            + struct.pack(">Q", seq))  # fmt: skip


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _tampered(model_id: str, conv_id: str, why: str) -> HistoryTampered:
    return HistoryTampered(
        f"Conversation {conv_id} of model {model_id!r} is damaged: {why}. Its files were "
        "altered or corrupted, so it is not shown; other conversations are not affected. "
        "Restore history/ from a backup, or delete this conversation."
    )
