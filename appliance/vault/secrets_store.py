"""Small encrypted secrets (API keys of OpenAI-compatible servers) in config/secrets.bin.

The whole name -> value map is one AES-256-GCM blob under a sub-key of the data key,
rewritten atomically under a lock on each change, so names are hidden too.
"""

from __future__ import annotations

import json
from pathlib import Path

from appliance.fsutil import FileLock, atomic_write_bytes
from appliance.vault import keys
from appliance.vault.errors import SettingsCorrupt, VaultError
from appliance.vault.keys import AuthFailed, KeyRing

AAD = keys.DOMAIN + b"secrets"
MAX_NAME_CHARS = 200
MAX_VALUE_CHARS = 64 * 1024


class SecretStore:
    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / "secrets.bin"
        self._lock = FileLock(config_dir / ".secrets.lock")

    def get(self, ring: KeyRing, name: str) -> str | None:
        _check_name(name)
        with self._lock.hold():
            return self._load(ring).get(name)

    def names(self, ring: KeyRing) -> list[str]:
        with self._lock.hold():
            return sorted(self._load(ring))

    def set(self, ring: KeyRing, name: str, value: str) -> None:
        _check_name(name)
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise VaultError(f"A secret must be text of at most {MAX_VALUE_CHARS:,} characters.")
        with self._lock.hold():
            data = self._load(ring)
            data[name] = value
            self._save(ring, data)

    def delete(self, ring: KeyRing, name: str) -> bool:
        _check_name(name)
        with self._lock.hold():
            data = self._load(ring)
            if name not in data:
                return False
            del data[name]
            self._save(ring, data)
            return True

    def _load(self, ring: KeyRing) -> dict[str, str]:
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(keys.open_sealed(ring["secrets"], sealed, AAD))
        except (AuthFailed, ValueError):
            raise SettingsCorrupt(
                "config/secrets.bin (saved server API keys) fails authentication: it was "
                "altered or damaged. Delete it and enter the API keys again."
            ) from None
        if not isinstance(data, dict):
            raise SettingsCorrupt("config/secrets.bin is malformed. Delete it and re-enter keys.")
        return data

    def _save(self, ring: KeyRing, data: dict[str, str]) -> None:
        plain = json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")
        atomic_write_bytes(self.path, keys.seal(ring["secrets"], plain, AAD))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise VaultError(f"A secret name must be 1 to {MAX_NAME_CHARS} characters of text.")
