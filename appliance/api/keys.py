"""API keys: created, listed and revoked by the user; checked on every API request.

A key's secret is `ols_` + 256 random bits (secrets.token_urlsafe(32)). It is shown once,
when it is created, and never stored: config/api-keys.json holds, per key, its id, name,
the first 12 characters of the secret (to recognise it in a list), the SHA-256 of the
whole secret, when it was created and when it was last used. A fast hash is right here:
a slow password hash (Argon2, PBKDF2) protects low-entropy passwords from guessing, and
a 256-bit random secret cannot be guessed, so SHA-256 of it is as safe and costs
microseconds per request. The file is written atomically, mode 0600; revoking removes
the key's line from it.

The API is off until the first key exists (`any()`). `verify()` hashes the presented
secret and looks the hash up (the lookup's timing can only tell about hashes, never about
a secret), then compares with hmac.compare_digest. The last-used time is kept in memory
at once and written to the file at most once a minute per key, so a busy client does not
rewrite the file on every request. Every call first checks the file's modification stamp
and re-reads it when it changed, so a key created or revoked by `appliance api-keys` in
another process takes effect in the running server at its next request. Writers hold a
cross-process lock (config/.api-keys.lock) and re-read the file under it, so the CLI and
the server never undo each other's changes. A damaged file raises ApiKeysFileError,
naming the file and what to do; it is never overwritten.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.fsutil import FileLock, atomic_write_json
from appliance.paths import Paths, current, private_dir

SECRET_PREFIX = "ols_"  # noqa: S105 (the marker every key starts with, not a secret)
PREFIX_CHARS = 12  # shown in lists: "ols_" and 8 random characters (48 of the 256 bits)
NAME_MAX = 64
LAST_USED_WRITE_S = 60.0  # the last-used time is written at most this often per key
FILE_NAME = "api-keys.json"
FORMAT_VERSION = 1
ID_PATTERN = re.compile(r"k_[0-9a-f]{8}")
LOG = logging.getLogger("appliance.api")


class ApiKeyError(ApplianceError):
    """A key that cannot be created, found or read."""


class BadKeyName(ApiKeyError):
    pass


class KeyNotFound(ApiKeyError):
    pass


class ApiKeysFileError(ApiKeyError):
    """config/api-keys.json cannot be read: damaged or edited by hand."""


@dataclass(frozen=True)
class ApiKey:
    """What is known of a key; never its secret."""

    id: str  # short random id, e.g. "k_3f9a2c1b"
    name: str  # the user's label, unique among live keys (ignoring case)
    prefix: str  # first 12 characters of the secret
    created: float  # unix time
    last_used: float | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    """The name without surrounding spaces, or BadKeyName saying what is wrong."""
    if not isinstance(name, str):
        raise BadKeyName("A key's name must be text.")
    name = name.strip()
    if not name:
        raise BadKeyName("Give the key a name, for example the tool or machine that uses it.")
    if len(name) > NAME_MAX:
        raise BadKeyName(f"A key's name is at most {NAME_MAX} characters; this one has "
                         f"{len(name)}.")  # fmt: skip
    if not name.isprintable():
        raise BadKeyName(
            "A key's name cannot contain control characters, tabs or line breaks; use "
            "letters, digits, spaces and punctuation."
        )
    if ID_PATTERN.fullmatch(name):
        raise BadKeyName(
            f"{name!r} looks like a key id (k_ and 8 hex digits); choose another name, so "
            "that revoking by name or id is never ambiguous."
        )
    return name


@dataclass
class _Record:
    key: ApiKey
    digest: str


class KeyStore:
    """The API keys of one appliance home. Thread-safe; one per process is enough, and
    several (in one process or many) see each other's changes."""

    def __init__(self, paths: Paths | None = None, *, clock: Callable[[], float] = time.time):
        self.paths = paths or current()
        self.file: Path = self.paths.config / FILE_NAME
        self._clock = clock
        self._lock = threading.RLock()
        self._file_lock = FileLock(self.paths.config / ".api-keys.lock")
        self._stamp: tuple[int, int, int] | None = None
        self._loaded = False
        self._records: dict[str, _Record] = {}  # by id, in file order
        self._by_digest: dict[str, str] = {}  # hash -> id
        self._used: dict[str, float] = {}  # last use seen by this process, by id
        self._written: dict[str, float] = {}  # last use in the file, by id

    # ---- public ------------------------------------------------------------------

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key named `name`: its record and its secret (shown once, never stored)."""
        name = check_name(name)
        with self._lock, self._file_lock.hold():
            self._reload(force=True)
            taken = next((r.key for r in self._records.values()
                          if r.key.name.casefold() == name.casefold()), None)  # fmt: skip
            if taken is not None:
                raise BadKeyName(f"A key named {taken.name!r} already exists ({taken.id}); "
                                 "choose another name, or revoke that key first.")  # fmt: skip
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            key_id = "k_" + secrets.token_hex(4)
            while key_id in self._records:
                key_id = "k_" + secrets.token_hex(4)
            key = ApiKey(key_id, name, secret[:PREFIX_CHARS], self._clock(), None)
            records = [*self._records.values(), _Record(key, hash_secret(secret))]
            self._save(records)
            return key, secret

    def list(self) -> list[ApiKey]:
        """Every live key, oldest first, with the latest last-used time this process knows."""
        with self._lock:
            self._reload()
            keys = [self._current(r) for r in self._records.values()]
        return sorted(keys, key=lambda k: (k.created, k.id))

    def revoke(self, key_id_or_name: str) -> ApiKey:
        """Remove a key (by id, or by name ignoring case); clients using it get 401 at
        their next request, in every process. KeyNotFound if there is none."""
        wanted = str(key_id_or_name).strip()
        with self._lock, self._file_lock.hold():
            self._reload(force=True)
            found = self._records.get(wanted) or next(
                (r for r in self._records.values()
                 if r.key.name.casefold() == wanted.casefold()), None,
            )  # fmt: skip
            if found is None:
                raise KeyNotFound(f"No API key has the id or name {wanted!r}. "
                                  "`appliance api-keys list` shows them.")  # fmt: skip
            self._save([r for r in self._records.values() if r is not found])
            return self._current(found)

    def verify(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None. Records the use (in memory at
        once, in the file at most once a minute per key)."""
        if not isinstance(secret, str) or not secret:
            return None
        digest = hash_secret(secret)
        with self._lock:
            self._reload()
            key_id = self._by_digest.get(digest)
            if key_id is None:
                return None
            record = self._records[key_id]
            if not hmac.compare_digest(record.digest, digest):
                return None
            now = self._clock()
            self._used[key_id] = max(now, self._used.get(key_id, now))
            if now - self._written.get(key_id, float("-inf")) >= LAST_USED_WRITE_S:
                try:
                    self.flush()
                except OSError as exc:  # a full or read-only disk must not refuse the key
                    LOG.warning("could not record when API key %s was used: %s", key_id, exc)
                    self._written[key_id] = now  # try again in a minute
            record = self._records.get(key_id)  # None: revoked meanwhile (flush re-read)
            return None if record is None else self._current(record)

    def any(self) -> bool:
        """Whether at least one key exists: the API is off until then."""
        with self._lock:
            self._reload()
            return bool(self._records)

    def flush(self) -> None:
        """Write the last-used times this process has seen and the file does not hold
        (for example at shutdown)."""
        with self._lock:
            pending = {k: t for k, t in self._used.items() if t > self._written.get(k, -1.0)}
            if not pending:
                return
            with self._file_lock.hold():
                self._reload(force=True)
                records = list(self._records.values())
                if not any(r.key.id in pending for r in records):
                    return
                self._save([self._merged(r) for r in records])

    # ---- file ----------------------------------------------------------------------

    def _current(self, record: _Record) -> ApiKey:
        return self._merged(record).key

    def _merged(self, record: _Record) -> _Record:
        used = self._used.get(record.key.id)
        if used is None or (record.key.last_used or 0.0) >= used:
            return record
        return _Record(replace(record.key, last_used=used), record.digest)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, force: bool = False) -> None:
        """Re-read the file when it changed since this store last read or wrote it."""
        stamp = self._file_stamp()
        if self._loaded and not force and stamp == self._stamp:
            return
        records = self._read() if stamp is not None else []
        self._set(records, stamp)

    def _set(self, records: Sequence[_Record], stamp: tuple[int, int, int] | None) -> None:
        self._records = {r.key.id: r for r in records}
        self._by_digest = {r.digest: r.key.id for r in records}
        for gone in set(self._used) - set(self._records):
            del self._used[gone]
        self._written = {r.key.id: r.key.last_used for r in records if r.key.last_used}
        self._stamp = stamp
        self._loaded = True

    def _save(self, records: Sequence[_Record]) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "note": "Hashes of the API keys, never the keys. Manage them on the Settings "
            "page or with `appliance api-keys`.",
            "keys": [
                {
                    "id": r.key.id,
                    "name": r.key.name,
                    "prefix": r.key.prefix,
                    "sha256": r.digest,
                    "created": r.key.created,
                    "last_used": r.key.last_used,
                }
                for r in records
            ],
        }
        private_dir(self.paths.config)
        atomic_write_json(self.file, doc, mode=0o600)
        self._set(records, self._file_stamp())

    def _read(self) -> builtins.list[_Record]:
        try:
            text = self.file.read_text("utf-8")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            raise self._damaged("it is not UTF-8 text") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._damaged(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise self._damaged(f"it is not a version-{FORMAT_VERSION} key list")
        items = doc.get("keys")
        if not isinstance(items, list):
            raise self._damaged('"keys" is not a list')
        records = [self._parse(item, n) for n, item in enumerate(items)]
        ids = [r.key.id for r in records]
        digests = [r.digest for r in records]
        if len(set(ids)) != len(ids) or len(set(digests)) != len(digests):
            raise self._damaged("two keys have the same id or hash")
        return records

    def _parse(self, item: Any, n: int) -> _Record:
        where = f"keys[{n}]"
        if not isinstance(item, dict):
            raise self._damaged(f"{where} is not an object")
        fields = {"id": str, "name": str, "prefix": str, "sha256": str, "created": (int, float)}
        for field, kind in fields.items():
            if not isinstance(item.get(field), kind) or isinstance(item.get(field), bool):
                raise self._damaged(f"{where}.{field} is missing or of the wrong type")
        last_used = item.get("last_used")
        if last_used is not None and (
            not isinstance(last_used, (int, float)) or isinstance(last_used, bool)
        ):
            raise self._damaged(f"{where}.last_used is not a time")
        if not re.fullmatch(r"[0-9a-f]{64}", item["sha256"]):
            raise self._damaged(f"{where}.sha256 is not a SHA-256 hex digest")
        key = ApiKey(item["id"], item["name"], item["prefix"], float(item["created"]),
                     None if last_used is None else float(last_used))  # fmt: skip
        return _Record(key, item["sha256"])

    def _damaged(self, why: str) -> ApiKeysFileError:
        return ApiKeysFileError(
            f"{self.file} cannot be read ({why}), so no API key is accepted and none can be "
            "created or revoked. It holds only hashes, never the keys: fix it, or move it "
            "aside and create new keys (the API stays off until one exists). It was not "
            "changed."
        )
