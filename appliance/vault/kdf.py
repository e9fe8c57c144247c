"""Password-based key derivation: Argon2id by default, PBKDF2-HMAC-SHA256 supported.

The parameters and a random salt are stored in config/settings.json, so they can be
raised later. Stored parameters are checked against hard limits *before* any derivation
runs, so a doctored file cannot make the app allocate gigabytes or spin for hours.
Passwords are normalised to Unicode NFC first: the same password typed on any system
gives the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from appliance.vault.errors import KdfParamsRefused

ARGON2ID = "argon2id"
PBKDF2 = "pbkdf2-sha256"
KDF_NAMES = (ARGON2ID, PBKDF2)
KEY_BYTES = 32
SALT_BYTES = 16

# Hard limits applied to stored parameters before deriving (value: (min, max)).
LIMITS: dict[str, dict[str, tuple[int, int]]] = {
    ARGON2ID: {"memory_kib": (8, 1024 * 1024), "iterations": (1, 64), "lanes": (1, 64)},
    PBKDF2: {"iterations": (1, 20_000_000)},
}
SALT_LIMITS = (16, 64)


@dataclass(frozen=True)
class KdfParams:
    """One KDF with its cost parameters and salt. `memory_kib`/`lanes` are Argon2id only."""

    name: str
    iterations: int
    memory_kib: int = 0
    lanes: int = 0
    salt: bytes = b""

    def with_new_salt(self) -> KdfParams:
        return replace(self, salt=secrets.token_bytes(SALT_BYTES))

    def describe(self) -> dict[str, Any]:
        """The parameters without the salt, for status output."""
        if self.name == ARGON2ID:
            return {"name": self.name, "memory_kib": self.memory_kib,
                    "iterations": self.iterations, "lanes": self.lanes}  # fmt: skip
        return {"name": self.name, "iterations": self.iterations}

    def to_json(self) -> dict[str, Any]:
        return {**self.describe(), "salt": base64.b64encode(self.salt).decode("ascii")}

    def weaker_than(self, target: KdfParams) -> bool:
        """True when a vault stored with self should be re-wrapped with target."""
        if self.name != target.name:
            return False
        if self.name == PBKDF2:
            return self.iterations < target.iterations
        return self.memory_kib < target.memory_kib or self.iterations < target.iterations


# The parameters new vaults get (Argon2id 64 MiB x 3 costs about 0.16 s on 2 cores).
DEFAULTS: dict[str, KdfParams] = {
    ARGON2ID: KdfParams(ARGON2ID, iterations=3, memory_kib=64 * 1024, lanes=4),
    PBKDF2: KdfParams(PBKDF2, iterations=600_000),
}


def normalize_password(password: str) -> bytes:
    """NFC-normalise and UTF-8 encode a password."""
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def derive(password: bytes, params: KdfParams) -> bytes:
    """The 32-byte master key for a normalised password. Limits are checked first."""
    check_limits(params)
    if params.name == ARGON2ID:
        kdf = Argon2id(
            salt=params.salt, length=KEY_BYTES, iterations=params.iterations,
            lanes=params.lanes, memory_cost=params.memory_kib,
        )  # fmt: skip
        return kdf.derive(password)
    return hashlib.pbkdf2_hmac("sha256", password, params.salt, params.iterations, KEY_BYTES)


def check_limits(params: KdfParams) -> None:
    """Refuse parameters no honest settings file holds, before any work is done."""
    if params.name not in LIMITS:
        raise _refused(f"names an unknown key-derivation function {params.name!r}")
    for field, (low, high) in LIMITS[params.name].items():
        value = getattr(params, field)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            plain_int = isinstance(value, int) and not isinstance(value, bool)
            shown = f"{value:,}" if plain_int else repr(value)
            raise _refused(
                f"asks for {params.name} with {field} = {shown} (allowed: {low:,} to {high:,})"
            )
    if params.name == ARGON2ID and params.memory_kib < 8 * params.lanes:
        raise _refused("asks for less Argon2id memory than 8 KiB per lane")
    if not SALT_LIMITS[0] <= len(params.salt) <= SALT_LIMITS[1]:
        raise _refused(f"holds a {len(params.salt)}-byte salt (expected 16 to 64 bytes)")


def params_from_json(data: Any) -> KdfParams:
    """Parse and check the stored `kdf` object of settings.json."""
    if not isinstance(data, dict):
        raise _refused("has no valid `kdf` object")
    name = data.get("name")
    if name not in LIMITS:
        raise _refused(f"names an unknown key-derivation function {name!r}")
    expected = {"name", "salt", *LIMITS[name]}
    if set(data) != expected:
        raise _refused(f"has `kdf` fields {sorted(data)}; expected {sorted(expected)}")
    params = KdfParams(
        name=name, iterations=data["iterations"], memory_kib=data.get("memory_kib", 0),
        lanes=data.get("lanes", 0), salt=decode_b64(data["salt"], "kdf.salt"),
    )  # fmt: skip
    check_limits(params)
    return params


def decode_b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise _refused(f"has a non-text {field}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _refused(f"has an invalid base64 {field}") from None


def _refused(detail: str) -> KdfParamsRefused:
    return KdfParamsRefused(
        f"config/settings.json {detail}: the file is damaged or was altered, so no key "
        "derivation was run. Restore the file from a backup."
    )
