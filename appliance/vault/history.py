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
appends a superseding record; clear switches the header to a new, empty log.
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
from appliance.paths import Paths
from appliance.vault import keys, records
from appliance.vault.errors import HistoryError, HistoryTampered, UnknownConversation
from appliance.vault.keys import AuthFailed, KeyRing

ROLES = ("system", "user", "assistant", "tool")
MAX_CONTENT_BYTES = 16 * 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_MODEL_ID_CHARS = 512
_CONV_RE = re.compile(r"^[0-9a-f]{16}$")
_TAG_RE = re.compile(r"^[0-9a-f]{32}$")
_DELETED_MARK = ".deleted-"


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
    """A conversation as listed. `problem` is set when it cannot be read."""

    id: str
    title: str
    created_at: float
    updated_at: float
    message_count: int
    problem: str | None = None


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


@dataclass
class _Tail:
    """Where the next record goes and what the log holds so far."""

    end: int
    next_seq: int
    count: int
    last: Message | None


class HistoryStore:
    """Conversations per model id. `keys` returns the unlocked key ring or raises."""

    def __init__(
        self,
        paths: Paths,
        keys_provider: Callable[[], KeyRing],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = paths.history
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys = keys_provider
        self._clock = clock
        self._lock = FileLock(self.root / ".lock")
        with self._lock.hold():
            self._sweep()

    # ----------------------------------------------------------------- listing
    def model_ids(self) -> list[str]:
        """Model ids that have at least one conversation, sorted."""
        ring = self._keys()
        found = []
        with self._lock.hold():
            for mdir in self._model_dirs():
                model_id = self._read_model_id(ring, mdir)
                if model_id is not None and any(mdir.glob("*.conv")):
                    found.append(model_id)
        return sorted(found)

    def count(self, model_id: str) -> int:
        """How many conversations a model has (no decryption needed)."""
        _, mdir = self._model(self._keys(), model_id)
        return sum(1 for p in mdir.glob("*.conv") if _CONV_RE.match(p.stem)) if mdir.is_dir() else 0

    def conversations(self, model_id: str) -> list[ConversationInfo]:
        """A model's conversations, most recently updated first.

        O(1) per conversation: the header and the last record are authenticated; damage
        further inside a log shows as HistoryTampered when the conversation is opened.
        """
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            if not mdir.is_dir():
                return []
            current: dict[str, str] = {}
            infos = [
                self._info(ring, mtag, mdir, model_id, p.stem, current)
                for p in self._conv_files(mdir)
            ]
            self._sweep_logs(mdir, current)
        return sorted(infos, key=lambda i: (i.updated_at, i.created_at, i.id), reverse=True)

    def latest(self, model_id: str) -> ConversationInfo | None:
        """The conversation to resume: the most recently updated readable one."""
        return next((c for c in self.conversations(model_id) if c.problem is None), None)

    def info(self, model_id: str, conv_id: str) -> ConversationInfo:
        """One conversation's listing entry."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            tail = self._tail_readonly(ring, mtag, mdir, model_id, conv_id, header)
            return self._make_info(conv_id, header, tail)

    # ----------------------------------------------------------------- reading
    def messages(self, model_id: str, conv_id: str) -> ConversationLog:
        """Every effective message of a conversation, in order, with any warnings."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            data = self._read_log(mdir, model_id, conv_id, header)
            msgs, tail, warnings = self._decode_log(ring, mtag, model_id, conv_id, header, data)
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
            self._write_log(mdir, conv_id, header.log_id, b"")
            self._write_header(ring, mtag, mdir, conv_id, header)
        return ConversationInfo(conv_id, title, header.created_at, header.created_at, 0)

    def append(
        self, model_id: str, conv_id: str, role: str, content: str, meta: dict | None = None
    ) -> Message:
        """Add one message: one record appended and fsynced, nothing rewritten."""
        if role not in ROLES:
            raise HistoryError(f"Unknown role {role!r}; expected one of {', '.join(ROLES)}.")
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
        """Remove every message but keep the conversation (a new, empty log)."""
        ring = self._keys()
        with self._lock.hold():
            mtag, mdir = self._model(ring, model_id)
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
            old_log = header.log_id
            header.log_id = secrets.token_bytes(records.LOG_ID_BYTES)
            self._write_log(mdir, conv_id, header.log_id, b"")
            self._write_header(ring, mtag, mdir, conv_id, header)
            with contextlib.suppress(FileNotFoundError):
                _log_path(mdir, conv_id, old_log).unlink()
        return self.info(model_id, conv_id)

    def delete(self, model_id: str, conv_id: str) -> None:
        """Delete one conversation for good."""
        ring = self._keys()
        with self._lock.hold():
            _, mdir = self._model(ring, model_id)
            header_path = mdir / f"{conv_id}.conv"
            if not _CONV_RE.match(str(conv_id)) or not header_path.is_file():
                raise UnknownConversation(f"Model {model_id!r} has no conversation {conv_id!r}.")
            header_path.unlink()
            fsync_dir(mdir)
            for log in mdir.glob(f"{conv_id}-*.log"):
                log.unlink()
            if not any(mdir.glob("*.conv")):
                self._remove_model_dir(mdir)

    def delete_model(self, model_id: str) -> int:
        """Delete all history of a model; returns how many conversations were deleted."""
        ring = self._keys()
        with self._lock.hold():
            _, mdir = self._model(ring, model_id)
            if not mdir.is_dir():
                return 0
            count = len(list(self._conv_files(mdir)))
            self._remove_model_dir(mdir)
        return count

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
        """Write a whole conversation at once; an existing `conv_id` is replaced."""
        ring = self._keys()
        title = _check_title(title)
        now = self._clock()
        header = _Header(title, now if created_at is None else created_at,
                         secrets.token_bytes(records.LOG_ID_BYTES))  # fmt: skip
        with self._lock.hold():
            mtag, mdir = self._ensure_model(ring, model_id)
            conv_id = conv_id or secrets.token_hex(8)
            body = bytearray()
            for seq, (role, content, at, meta) in enumerate(msgs):
                if role not in ROLES:
                    raise HistoryError(f"Message {seq} has unknown role {role!r}.")
                payload = _payload("m", role, content, meta, now if at is None else at, seq + 1)
                body += self._seal_record(ring, mtag, conv_id, header.log_id, seq, payload)
            old = list(mdir.glob(f"{conv_id}-*.log"))
            self._write_log(mdir, conv_id, header.log_id, bytes(body))
            self._write_header(ring, mtag, mdir, conv_id, header)
            for path in old:
                path.unlink()
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
                frame = self._seal_record(
                    ring, mtag, conv_id, header.log_id, tail.next_seq, payload
                )
                _pwrite_all(fd, frame, tail.end)
                os.fsync(fd)
            finally:
                os.close(fd)
        return Message(tail.next_seq, role, content, at, dict(meta or {}))

    def _tail(
        self, ring: KeyRing, mtag: str, model_id: str, conv_id: str, header: _Header, fd: int,
        *, repair: bool,
    ) -> _Tail:  # fmt: skip
        """The log's end state: from its last frame alone when it ends cleanly (O(1)),
        else from a full read; with repair, a torn tail is cut off."""
        size = os.fstat(fd).st_size
        if os.pread(fd, records.LOG_HEADER_BYTES, 0) == records.log_header(header.log_id):
            if size == records.LOG_HEADER_BYTES:
                return _Tail(size, 0, 0, None)
            frame = records.read_last_frame(fd, size)
            if frame is not None:
                with contextlib.suppress(AuthFailed, ValueError, KeyError, TypeError):
                    rec = self._open_record(ring, mtag, conv_id, header.log_id, frame)
                    last = Message(frame.seq, rec["role"], rec["content"], rec["at"], rec["meta"])
                    return _Tail(size, frame.seq + 1, int(rec["n"]), last)
        data = os.pread(fd, size, 0)
        _, tail, _ = self._decode_log(ring, mtag, model_id, conv_id, header, data)
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
        self, ring: KeyRing, mtag: str, model_id: str, conv_id: str, header: _Header, data: bytes
    ) -> tuple[list[Message], _Tail, list[str]]:
        if data[: records.LOG_HEADER_BYTES] != records.log_header(header.log_id):
            raise _tampered(model_id, conv_id, "its message log belongs to another conversation")
        scan = records.scan(data)
        if scan.error:
            raise _tampered(model_id, conv_id, scan.error)
        msgs: list[Message] = []
        for index, frame in enumerate(scan.frames):
            if frame.seq != index:
                why = "a record is missing" if frame.seq > index else "records are out of order"
                raise _tampered(model_id, conv_id, f"record {index}: {why}")
            try:
                rec = self._open_record(ring, mtag, conv_id, header.log_id, frame)
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
                    model_id, conv_id, f"record {index} fails authentication (it was altered, "
                    "or copied from another conversation)",
                ) from None  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                raise _tampered(model_id, conv_id, f"record {index} is malformed ({exc})") from None
        warnings = []
        if scan.torn:
            warnings.append(
                f"The last record of conversation {conv_id} was incomplete ({scan.torn} bytes, "
                "from an interrupted write) and was skipped."
            )
        tail = _Tail(scan.end, len(scan.frames), len(msgs), msgs[-1] if msgs else None)
        return msgs, tail, warnings

    def _info(
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str,
        current: dict[str, str],
    ) -> ConversationInfo:  # fmt: skip
        try:
            header = self._read_header(ring, mtag, mdir, model_id, conv_id)
        except HistoryTampered as exc:
            return ConversationInfo(conv_id, "(unreadable)", 0.0, 0.0, 0, str(exc))
        current[conv_id] = _log_path(mdir, conv_id, header.log_id).name
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

    def _seal_record(
        self, ring: KeyRing, mtag: str, conv_id: str, log_id: bytes, seq: int, payload: bytes
    ) -> bytes:
        body = keys.seal(ring["history"], payload, _record_aad(mtag, conv_id, log_id, seq))
        return records.encode(seq, body)

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
        mtag, mdir = self._model(ring, model_id)
        if not (mdir / "model.id").is_file():
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
        self, ring: KeyRing, mtag: str, mdir: Path, model_id: str, conv_id: str
    ) -> _Header:
        if not isinstance(conv_id, str) or not _CONV_RE.match(conv_id):
            raise UnknownConversation(f"{conv_id!r} is not a conversation id.")
        try:
            sealed = (mdir / f"{conv_id}.conv").read_bytes()
        except FileNotFoundError:
            raise UnknownConversation(
                f"Model {model_id!r} has no conversation {conv_id}. "
                "Run `appliance history list MODEL` to see its conversations."
            ) from None
        try:
            doc = json.loads(keys.open_sealed(ring["history"], sealed, _header_aad(mtag, conv_id)))
            return _Header(doc["title"], float(doc["created_at"]), bytes.fromhex(doc["log_id"]))
        except AuthFailed:
            raise _tampered(model_id, conv_id, "its header fails authentication") from None
        except (ValueError, KeyError, TypeError):
            raise _tampered(model_id, conv_id, "its header is malformed") from None

    def _write_header(
        self, ring: KeyRing, mtag: str, mdir: Path, conv_id: str, header: _Header
    ) -> None:
        doc = {"title": header.title, "created_at": header.created_at,
               "log_id": header.log_id.hex()}  # fmt: skip
        plain = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
        sealed = keys.seal(ring["history"], plain, _header_aad(mtag, conv_id))
        atomic_write_bytes(mdir / f"{conv_id}.conv", sealed)

    @staticmethod
    def _write_log(mdir: Path, conv_id: str, log_id: bytes, body: bytes) -> None:
        atomic_write_bytes(_log_path(mdir, conv_id, log_id), records.log_header(log_id) + body)

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
        """Finish deletions and drop temp files a crash left behind."""
        sweep_stale_temps(self.root)
        for path in self.root.iterdir():
            if path.name.startswith(_DELETED_MARK) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and _TAG_RE.match(path.name):
                sweep_stale_temps(path)

    @staticmethod
    def _sweep_logs(mdir: Path, current: dict[str, str]) -> None:
        """Remove logs left by an interrupted create, clear, import or delete: those of a
        conversation without a header, or not the one its header names."""
        for log in mdir.glob("*.log"):
            conv_id = log.name.split("-", 1)[0]
            orphan = not (mdir / f"{conv_id}.conv").exists()
            if orphan or (conv_id in current and current[conv_id] != log.name):
                log.unlink(missing_ok=True)


def stored_model_dirs(history_dir: Path) -> list[Path]:
    """The model folders under history/ (whatever key they were written with)."""
    if not history_dir.is_dir():
        return []
    return sorted(p for p in history_dir.iterdir() if p.is_dir() and _TAG_RE.match(p.name))


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
