"""config/settings.json: KDF parameters, salt, verifier and the wrapped data key.

Envelope format (version 1), written atomically and never overwritten when unreadable:

    {"schema": "offline-llm-switcher/vault", "version": 1,
     "kdf": {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4,
             "salt": "<base64>"},
     "verifier": "<base64, HKDF(master, 'verifier')>",
     "wrapped_key": "<base64, nonce || AES-256-GCM(HKDF(master, 'wrap'), data key)>",
     "auto_lock_s": 900, "created_at": "...", "password_changed_at": "...",
     "seed_import": null, "checksum": "sha256:<hex>"}

The checksum (over every other field) tells accidental damage apart from a wrong
password; the verifier, a separate HKDF output of the password-derived key, tells a
wrong password apart from an altered wrapped key. Neither helps an attacker: both need
the full KDF per guess. The seed's format ({"password_hash", "salt", "iterations"},
PBKDF2-SHA256) is still read, so it can be unlocked and upgraded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write_json
from appliance.vault import keys
from appliance.vault.errors import SettingsCorrupt, VaultNotInitialized
from appliance.vault.kdf import PBKDF2, KdfParams, check_limits, params_from_json

SCHEMA = "offline-llm-switcher/vault"
VERSION = 1
DEFAULT_AUTO_LOCK_S = 900
AUTO_LOCK_LIMITS = (60, 24 * 3600)
RESTORE_HINT = (
    "It was left untouched. Restore config/settings.json from a backup; without it the "
    "history cannot be decrypted."
)
_FIELDS = {
    "schema", "version", "kdf", "verifier", "wrapped_key", "auto_lock_s", "created_at",
    "password_changed_at", "seed_import", "checksum",
}  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class EnvelopeSettings:
    """The current settings format."""

    kdf: KdfParams
    verifier: bytes
    wrapped_key: bytes
    auto_lock_s: int = DEFAULT_AUTO_LOCK_S
    created_at: str = field(default_factory=now_iso)
    password_changed_at: str = field(default_factory=now_iso)
    seed_import: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA, "version": VERSION, "kdf": self.kdf.to_json(),
            "verifier": _b64(self.verifier), "wrapped_key": _b64(self.wrapped_key),
            "auto_lock_s": self.auto_lock_s, "created_at": self.created_at,
            "password_changed_at": self.password_changed_at,
            "seed_import": _b64(self.seed_import) if self.seed_import else None,
        }  # fmt: skip
        doc["checksum"] = checksum(doc)
        return doc


@dataclass
class SeedSettings:
    """The seed's format: PBKDF2-SHA256 whose output was stored as `password_hash`."""

    kdf: KdfParams
    password_hash: bytes


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def wrap_aad(kdf: KdfParams) -> bytes:
    canonical = json.dumps(kdf.to_json(), sort_keys=True, separators=(",", ":"))
    return keys.DOMAIN + b"wrapped-key/" + canonical.encode("ascii")


def wrap(master: bytes, data_key: bytes, kdf: KdfParams) -> tuple[bytes, bytes]:
    """(verifier, wrapped data key) for a password-derived master key."""
    verifier = keys.hkdf(master, "verifier")
    return verifier, keys.seal(keys.hkdf(master, "wrap"), data_key, wrap_aad(kdf))


def verify(master: bytes, settings: EnvelopeSettings) -> bool:
    return hmac.compare_digest(keys.hkdf(master, "verifier"), settings.verifier)


def unwrap(master: bytes, settings: EnvelopeSettings) -> bytes:
    """The data key, once `verify` has accepted the password."""
    try:
        data_key = keys.open_sealed(
            keys.hkdf(master, "wrap"), settings.wrapped_key, wrap_aad(settings.kdf)
        )
    except keys.AuthFailed:
        raise SettingsCorrupt(
            "The password is right, but the wrapped key in config/settings.json fails "
            f"authentication: the file was altered. {RESTORE_HINT}"
        ) from None
    if len(data_key) != keys.DATA_KEY_BYTES:
        raise SettingsCorrupt(f"config/settings.json holds a malformed data key. {RESTORE_HINT}")
    return data_key


def load(path: Path) -> EnvelopeSettings | SeedSettings:
    """Read and check settings.json. Missing: VaultNotInitialized; bad: SettingsCorrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VaultNotInitialized() from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" ({exc.msg}, line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise _corrupt(f"is not valid JSON{where}") from None
    if not isinstance(doc, dict):
        raise _corrupt("is not a JSON object")
    if "schema" not in doc and {"password_hash", "salt", "iterations"} <= set(doc):
        return _load_seed(doc)
    return _load_envelope(doc)


def _load_envelope(doc: dict[str, Any]) -> EnvelopeSettings:
    if doc.get("schema") != SCHEMA:
        raise _corrupt(f"is not a vault settings file (schema {doc.get('schema')!r})")
    if doc.get("version") != VERSION:
        raise _corrupt(
            f"has version {doc.get('version')!r}; this app reads version {VERSION}. "
            "It may come from a newer release"
        )
    if set(doc) != _FIELDS:
        raise _corrupt(f"has fields {sorted(doc)}; expected {sorted(_FIELDS)}")
    if not hmac.compare_digest(str(doc["checksum"]), checksum(doc)):
        raise _corrupt("does not match its checksum: it was damaged or edited by hand")
    kdf = params_from_json(doc["kdf"])
    auto_lock = doc["auto_lock_s"]
    if isinstance(auto_lock, bool) or not isinstance(auto_lock, int):
        raise _corrupt("has a non-integer auto_lock_s")
    return EnvelopeSettings(
        kdf=kdf, verifier=_unb64(doc["verifier"], "verifier", 32),
        wrapped_key=_unb64(doc["wrapped_key"], "wrapped_key", keys.NONCE_BYTES + 48),
        auto_lock_s=auto_lock, created_at=str(doc["created_at"]),
        password_changed_at=str(doc["password_changed_at"]),
        seed_import=_unb64(doc["seed_import"], "seed_import") if doc["seed_import"] else None,
    )  # fmt: skip


def _load_seed(doc: dict[str, Any]) -> SeedSettings:
    try:
        salt = base64.urlsafe_b64decode(str(doc["salt"]).encode("ascii"))
        password_hash = base64.urlsafe_b64decode(str(doc["password_hash"]).encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _corrupt("(in the original app's format) has invalid base64 fields") from None
    if len(password_hash) != 32:
        raise _corrupt("(in the original app's format) has no valid password hash")
    kdf = KdfParams(PBKDF2, iterations=doc["iterations"], salt=salt)
    check_limits(kdf)
    return SeedSettings(kdf=kdf, password_hash=password_hash)


def save(path: Path, settings: EnvelopeSettings) -> None:
    atomic_write_json(path, settings.to_json())


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: Any, name: str, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(str(value).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _corrupt(f"has an invalid base64 {name}") from None
    if size is not None and len(data) != size:
        raise _corrupt(f"has a {len(data)}-byte {name} (expected {size})")
    return data


def _corrupt(detail: str) -> SettingsCorrupt:
    return SettingsCorrupt(f"config/settings.json {detail}. {RESTORE_HINT}")
