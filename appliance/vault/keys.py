"""Keys: HKDF sub-keys, AES-256-GCM sealing, and the key ring of an unlocked vault.

The random 32-byte data key never encrypts anything itself. HKDF-SHA256 derives one
sub-key per purpose from it (history records, history frame tags, names, API-key
secrets, the settings MAC), and, from the password-derived master key, the key that
wraps the data key and a separate verifier.
"""

from __future__ import annotations

import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOMAIN = b"offline-llm-switcher/vault/v1/"
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32


class AuthFailed(Exception):
    """AES-GCM authentication failed (internal; callers raise a typed error)."""


def hkdf(key: bytes | bytearray, purpose: str) -> bytes:
    """A 32-byte sub-key of key for one named purpose."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=DOMAIN + purpose.encode()).derive(bytes(key))


def new_data_key() -> bytes:
    return secrets.token_bytes(DATA_KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-256-GCM(plaintext) with the tag; aad is authenticated, not stored."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise AuthFailed("too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise AuthFailed("authentication failed") from None


def tag(key: bytes, value: str, length: int = 16) -> str:
    """A keyed, stable, opaque hex name for value (HMAC-SHA256, truncated)."""
    digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), "sha256").digest()
    return digest[:length].hex()


class KeyRing:
    """The sub-keys of one unlocked vault. `wipe()` overwrites and drops them."""

    PURPOSES = ("history", "frames", "names", "secrets", "seed-import", "settings")

    def __init__(self, data_key: bytes | bytearray) -> None:
        self._keys: dict[str, bytearray] = {
            purpose: bytearray(hkdf(data_key, purpose)) for purpose in self.PURPOSES
        }

    def __getitem__(self, purpose: str) -> bytes:
        return bytes(self._keys[purpose])

    @property
    def wiped(self) -> bool:
        return not self._keys

    def wipe(self) -> None:
        """Best effort: zero our copies. Python may still hold copies until collected."""
        for buf in self._keys.values():
            buf[:] = bytes(len(buf))
        self._keys.clear()
