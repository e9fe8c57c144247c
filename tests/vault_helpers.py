"""Helpers for the vault tests: cheap vaults, a fake clock, the seed's on-disk format."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from appliance.paths import Paths, current
from appliance.vault import Unlocked, Vault
from appliance.vault.kdf import ARGON2ID, PBKDF2, KdfParams

PASSWORD = "correct horse battery staple"
OTHER = "another long passphrase"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Cheap key-derivation parameters, so that a test's set-ups and unlocks take no time; the
# product's own are kdf.DEFAULTS. Injected into the Vault: nothing in it knows of tests.
FAST_KDF = {
    ARGON2ID: KdfParams(ARGON2ID, iterations=1, memory_kib=64, lanes=1),
    PBKDF2: KdfParams(PBKDF2, iterations=1_000),
}


def fast_vault(paths: Paths | None = None, clock=None) -> Vault:
    """A vault whose new keys use the cheap FAST_KDF parameters."""
    kwargs = {"clock": clock} if clock else {}
    return Vault(paths or current(), kdf_params=FAST_KDF, **kwargs)


def fast_unlocked(password: str = PASSWORD, clock=None) -> Unlocked:
    vault = fast_vault(clock=clock)
    return vault.init(password) if not vault.initialized else vault.unlock(password)


def write_seed_vault(home: Path, password: str, chats: dict[str, list[dict]]) -> bytes:
    """Write config/settings.json and history/*.chat exactly as the seed app did
    (PBKDF2-SHA256, 480k iterations, urlsafe base64; the derived key is both the stored
    hash and the Fernet key). Returns that key."""
    salt = secrets.token_bytes(16)
    derived = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, 480_000)
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "history").mkdir(parents=True, exist_ok=True)
    settings = {
        "password_hash": base64.urlsafe_b64encode(derived).decode(),
        "salt": base64.urlsafe_b64encode(salt).decode(),
        "iterations": 480_000,
    }
    (home / "config" / "settings.json").write_text(json.dumps(settings, indent=2))
    fernet = Fernet(base64.urlsafe_b64encode(derived))
    for name, messages in chats.items():
        token = fernet.encrypt(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
        (home / "history" / f"{name}.chat").write_bytes(token)
    return derived


def all_files(home: Path) -> list[Path]:
    return sorted(p for p in home.rglob("*") if p.is_file())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (lock files aside) by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in all_files(folder)
        if not p.name.endswith(".lock")
    }


def log_files(home: Path) -> list[Path]:
    return sorted((home / "history").glob("*/*.log"))


def env_with_home(home: Path) -> dict[str, str]:
    env = os.environ.copy()
    env["APPLIANCE_HOME"] = str(home)
    return env


def downgrade_to_v1(history, model_id: str, conv_id: str, *, header: bool = True) -> Path:
    """Rewrite one conversation exactly as earlier releases stored it: a CRC-framed log
    ("OLSWLOG1") and (unless `header` is False) a header without `log_format` or
    `retired`. Returns the log path."""
    from appliance.vault import history as history_mod
    from appliance.vault import keys, records

    ring = history._keys()
    mtag, mdir = history._model(ring, model_id)
    current = history._read_header(ring, mtag, mdir, model_id, conv_id)
    path = history_mod._log_path(mdir, conv_id, current.log_id)
    scan = records.Codec(2, current.log_id, ring["frames"]).scan(path.read_bytes())
    assert scan.error is None and scan.torn == 0
    old = records.Codec(1, current.log_id, b"")
    path.write_bytes(old.log_header() + b"".join(old.encode(f.seq, f.body) for f in scan.frames))
    if header:
        doc = {"title": current.title, "created_at": current.created_at,
               "log_id": current.log_id.hex()}  # fmt: skip
        aad = history_mod._header_aad(mtag, conv_id)
        (mdir / f"{conv_id}.conv").write_bytes(
            keys.seal(ring["history"], json.dumps(doc).encode(), aad)
        )
    return path
