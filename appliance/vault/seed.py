"""The seed app's vault: check a password against it and bring its history over.

The seed stored PBKDF2-SHA256(password, salt, 480k) as `password_hash` in
config/settings.json and used the very same bytes as the Fernet key of
history/<model name>.chat (a JSON list of {"role", "content"}). Anyone holding that
settings file could read the history, so on the first unlock the vault moves to the
envelope format and re-encrypts each .chat file into a conversation, then deletes it.
"""

from __future__ import annotations

import base64
import hmac
import json
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from appliance.fsutil import fsync_dir
from appliance.vault import keys
from appliance.vault.history import ROLES, HistoryStore
from appliance.vault.kdf import derive, normalize_password
from appliance.vault.keys import KeyRing
from appliance.vault.settings import SeedSettings

SEED_TITLE = "Imported from the original app"


def verify_seed_password(password: str, seed: SeedSettings) -> bytes | None:
    """The seed's key when the password is right, else None.

    The seed did not normalise passwords, so the typed form is tried after NFC.
    """
    candidates = [normalize_password(password)]
    typed = password.encode("utf-8", "surrogatepass")
    if typed != candidates[0]:
        candidates.append(typed)
    for candidate in candidates:
        derived = derive(candidate, seed.kdf)
        if hmac.compare_digest(derived, seed.password_hash):
            return derived
    return None


def seed_chat_files(history_dir: Path) -> list[Path]:
    return sorted(p for p in history_dir.glob("*.chat") if p.is_file())


def import_seed_history(
    history: HistoryStore, ring: KeyRing, seed_key: bytes, history_dir: Path
) -> tuple[list[str], list[str]]:
    """Import every seed .chat file; returns (notices, warnings). Safe to rerun after a
    crash: each file maps to a fixed conversation id, replaced on rerun, and a file is
    deleted only once its conversation is written."""
    fernet = Fernet(base64.urlsafe_b64encode(seed_key))
    notices: list[str] = []
    warnings: list[str] = []
    for path in seed_chat_files(history_dir):
        try:
            data = json.loads(fernet.decrypt(path.read_bytes()))
        except (InvalidToken, ValueError, OSError):
            warnings.append(
                f"{path.name} from the original app could not be decrypted; kept as is."
            )
            continue
        if not isinstance(data, list):
            warnings.append(f"{path.name} from the original app is not a message list; kept as is.")
            continue
        at = path.stat().st_mtime
        msgs = [
            (m["role"], m["content"], at, {})
            for m in data
            if isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        ]
        conv_id = keys.tag(ring["names"], "seed/" + path.name, 8)
        history.import_messages(path.stem, msgs, title=SEED_TITLE, created_at=at, conv_id=conv_id)
        path.unlink()
        fsync_dir(history_dir)
        notices.append(
            f"Imported {len(msgs)} messages of {path.stem!r} from the original app "
            f"(model id {path.stem!r})."
        )
    return notices, warnings
