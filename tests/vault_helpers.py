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


def fast_vault(paths: Paths | None = None, clock=None) -> Vault:
    """A vault with the test-only cheap KDF parameters."""
    kwargs = {"clock": clock} if clock else {}
    return Vault(paths or current(), insecure_fast_kdf_for_tests=True, **kwargs)


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
