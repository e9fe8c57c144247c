"""config/settings.json: KDF parameters, salt, verifier, the wrapped data key, settings.

Envelope format (version 2), written atomically and never overwritten when unreadable:

    {"schema": "offline-llm-switcher/vault", "version": 2,
     "kdf": {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4,
             "salt": "<base64>"},
     "verifier": "<base64, HKDF(master, 'verifier')>",
     "wrapped_key": "<base64, nonce || AES-256-GCM(HKDF(master, 'wrap'), data key)>",
     "auto_lock_s": 900, "created_at": "...", "password_changed_at": "...",
     "seed_import": null, "mac": "<base64, HMAC-SHA256 keyed from the data key>",
     "checksum": "sha256:<hex>"}

The checksum (over every other field) tells accidental damage apart from a wrong
password before any key is derived; the verifier, a separate HKDF output of the
password-derived key, tells a wrong password apart from an altered wrapped key. The
MAC authenticates the whole document (the checksum aside) with a key only the unlocked
vault has: it is checked at unlock, and a mismatch falls back to safe values with a
warning, never refusing the history. The wrapped key of a version 2 file is bound to
that version, so stripping the MAC to pass the file off as version 1 is noticed too.

Version 1 (no MAC) is still read and upgraded at its first unlock, and so is the seed's
format ({"password_hash", "salt", "iterations"}, PBKDF2-SHA256). Every field is
range-checked on load: a bad key field is SettingsCorrupt, a bad setting or date is
replaced by a safe value and reported in `problems`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write_json
from appliance.vault import keys
from appliance.vault.errors import SettingsCorrupt, VaultNotInitialized
from appliance.vault.kdf import PBKDF2, KdfParams, check_limits, params_from_json

SCHEMA = "offline-llm-switcher/vault"
VERSION = 2
DEFAULT_AUTO_LOCK_S = 900
AUTO_LOCK_LIMITS = (60, 24 * 3600)
EARLIEST_DATE = datetime(2000, 1, 1, tzinfo=UTC)
RESTORE_HINT = (
    "It was left untouched. Restore config/settings.json from a backup; without it the "
    "history cannot be decrypted."
)
_FIELDS_V1 = {
    "schema", "version", "kdf", "verifier", "wrapped_key", "auto_lock_s", "created_at",
    "password_changed_at", "seed_import", "checksum",
}  # fmt: skip
_FIELDS = {1: _FIELDS_V1, 2: _FIELDS_V1 | {"mac"}}
_SEALED_KEY_BYTES = keys.NONCE_BYTES + keys.DATA_KEY_BYTES + keys.TAG_BYTES


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class EnvelopeSettings:
    """The envelope format. `version` 1 files have no MAC; `problems` lists the values
    that were out of range on load (replaced by safe ones); `loaded_doc` is the document
    as read, which the MAC is checked against."""

    kdf: KdfParams
    verifier: bytes
    wrapped_key: bytes
    auto_lock_s: int = DEFAULT_AUTO_LOCK_S
    created_at: str | None = field(default_factory=now_iso)
    password_changed_at: str | None = field(default_factory=now_iso)
    seed_import: bytes | None = None
    version: int = VERSION
    mac: bytes | None = None
    problems: list[str] = field(default_factory=list)
    loaded_doc: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def body(self) -> dict[str, Any]:
        """Every stored field but the MAC and the checksum."""
        return {
            "schema": SCHEMA, "version": self.version, "kdf": self.kdf.to_json(),
            "verifier": _b64(self.verifier), "wrapped_key": _b64(self.wrapped_key),
            "auto_lock_s": self.auto_lock_s, "created_at": self.created_at,
            "password_changed_at": self.password_changed_at,
            "seed_import": _b64(self.seed_import) if self.seed_import else None,
        }  # fmt: skip

    def to_json(self, mac_key: bytes) -> dict[str, Any]:
        """The version 2 document, authenticated with the settings MAC key."""
        doc = self.body()
        doc["version"] = VERSION
        doc["mac"] = _b64(mac(mac_key, doc))
        doc["checksum"] = checksum(doc)
        return doc


@dataclass
class SeedSettings:
    """The seed's format: PBKDF2-SHA256 whose output was stored as `password_hash`."""

    kdf: KdfParams
    password_hash: bytes


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def mac(mac_key: bytes, doc: dict[str, Any]) -> bytes:
    """HMAC-SHA256 over every field but the MAC and the checksum."""
    body = {k: v for k, v in doc.items() if k not in ("checksum", "mac")}
    return hmac.new(mac_key, keys.DOMAIN + b"settings/" + _canonical(body), "sha256").digest()


def mac_matches(mac_key: bytes, settings: EnvelopeSettings) -> bool:
    """Whether a version 2 file's MAC authenticates what was loaded."""
    if settings.version != VERSION or settings.mac is None or settings.loaded_doc is None:
        return False
    return hmac.compare_digest(mac(mac_key, settings.loaded_doc), settings.mac)


def fingerprint(kdf: KdfParams) -> str:
    """A digest of the KDF parameters and salt (public values), to notice edits."""
    return "sha256:" + hashlib.sha256(_canonical(kdf.to_json())).hexdigest()


def wrap_aad(kdf: KdfParams, version: int = VERSION) -> bytes:
    canonical = json.dumps(kdf.to_json(), sort_keys=True, separators=(",", ":"))
    label = b"wrapped-key/" if version == 1 else b"wrapped-key/v2/"
    return keys.DOMAIN + label + canonical.encode("ascii")


def wrap(master: bytes, data_key: bytes, kdf: KdfParams) -> tuple[bytes, bytes]:
    """(verifier, wrapped data key) for a password-derived master key (version 2)."""
    verifier = keys.hkdf(master, "verifier")
    return verifier, keys.seal(keys.hkdf(master, "wrap"), data_key, wrap_aad(kdf))


def verify(master: bytes, settings: EnvelopeSettings) -> bool:
    return hmac.compare_digest(keys.hkdf(master, "verifier"), settings.verifier)


def unwrap(master: bytes, settings: EnvelopeSettings) -> tuple[bytes, bool]:
    """(data key, relabelled): relabelled is True when a file that says version 1 holds
    a key wrapped for version 2, that is, its MAC was stripped. Raises SettingsCorrupt
    when the key does not open under this master key."""
    versions = [settings.version] + ([VERSION] if settings.version == 1 else [])
    for version in versions:
        try:
            data_key = keys.open_sealed(
                keys.hkdf(master, "wrap"), settings.wrapped_key, wrap_aad(settings.kdf, version)
            )
        except keys.AuthFailed:
            continue
        if len(data_key) != keys.DATA_KEY_BYTES:
            raise SettingsCorrupt(
                f"config/settings.json holds a malformed data key. {RESTORE_HINT}"
            )
        return data_key, version != settings.version
    raise SettingsCorrupt(
        "The password is right, but the wrapped key in config/settings.json fails "
        f"authentication: the file was altered. {RESTORE_HINT}"
    )


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
    version = doc.get("version")
    if isinstance(version, bool) or version not in _FIELDS:
        raise _corrupt(
            f"has version {version!r}; this app reads versions 1 and {VERSION}. "
            "It may come from a newer release"
        )
    if set(doc) != _FIELDS[version]:
        raise _corrupt(f"has fields {sorted(doc)}; expected {sorted(_FIELDS[version])}")
    if not hmac.compare_digest(str(doc["checksum"]), checksum(doc)):
        raise _corrupt("does not match its checksum: it was damaged or edited by hand")
    problems: list[str] = []
    seed = doc["seed_import"]
    return EnvelopeSettings(
        kdf=params_from_json(doc["kdf"]), verifier=_unb64(doc["verifier"], "verifier", 32),
        wrapped_key=_unb64(doc["wrapped_key"], "wrapped_key", _SEALED_KEY_BYTES),
        auto_lock_s=_auto_lock(doc["auto_lock_s"], problems),
        created_at=_date(doc["created_at"], "created_at", problems),
        password_changed_at=_date(doc["password_changed_at"], "password_changed_at", problems),
        seed_import=_unb64(seed, "seed_import", _SEALED_KEY_BYTES) if seed is not None else None,
        version=version, mac=_unb64(doc["mac"], "mac", 32) if version == 2 else None,
        problems=problems, loaded_doc=doc,
    )  # fmt: skip


def _auto_lock(value: Any, problems: list[str]) -> int:
    """The stored auto-lock delay when in range, else the default (reported)."""
    low, high = AUTO_LOCK_LIMITS
    if not isinstance(value, bool) and isinstance(value, int) and low <= value <= high:
        return value
    problems.append(
        f"config/settings.json holds auto_lock_s = {value!r}, outside {low:,} to {high:,} "
        f"seconds; the default ({DEFAULT_AUTO_LOCK_S // 60} minutes) is used instead."
    )
    return DEFAULT_AUTO_LOCK_S


def _date(value: Any, name: str, problems: list[str]) -> str | None:
    """A stored ISO 8601 UTC time between 2000 and tomorrow, else None (reported)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    latest = datetime.now(UTC) + timedelta(days=1)
    if when is not None and when.tzinfo is not None and EARLIEST_DATE <= when <= latest:
        return value
    problems.append(
        f"config/settings.json holds {name} = {value!r}, not a time between 2000 and "
        "today; it is shown as unknown."
    )
    return None


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


def save(path: Path, settings: EnvelopeSettings, mac_key: bytes) -> None:
    """Write the settings as version 2, authenticated with the settings MAC key."""
    atomic_write_json(path, settings.to_json(mac_key))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


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
