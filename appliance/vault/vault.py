"""The vault: master password set-up, unlock, password change, and the unlocked session.

A random data key protects everything; the password only wraps it (vault_settings.py),
so changing the password rewrites config/settings.json alone, in one atomic replace:
whatever moment the process dies, exactly one of the old and new passwords opens the
vault, and the history files are never touched. Every derivation runs under one lock
(threads and processes), after the persisted throttle allowed it.
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from appliance.fsutil import FileLock, atomic_write_json, sweep_stale_temps
from appliance.paths import Paths, current
from appliance.vault import keys, vault_settings
from appliance.vault.errors import (
    OrphanedHistory,
    SettingsCorrupt,
    VaultAlreadyInitialized,
    VaultError,
    VaultLocked,
    VaultNotInitialized,
    WrongPassword,
    format_delay,
)
from appliance.vault.history import HistoryStore, stored_model_dirs
from appliance.vault.kdf import (
    ARGON2ID,
    DEFAULTS,
    KDF_NAMES,
    KdfParams,
    derive,
    normalize_password,
)
from appliance.vault.keys import KeyRing
from appliance.vault.secrets_store import SecretStore
from appliance.vault.seed import (
    ModelResolver,
    import_seed_history,
    seed_chat_files,
    verify_seed_password,
)
from appliance.vault.strength import check_new_password
from appliance.vault.throttle import FREE_ATTEMPTS, Throttle, ThrottleState, delay_after
from appliance.vault.vault_settings import (
    AUTO_LOCK_LIMITS,
    DEFAULT_AUTO_LOCK_S,
    EnvelopeSettings,
    SeedSettings,
    now_iso,
)

SEED_AAD = keys.DOMAIN + b"seed-import"
KDF_CHANGED = (
    "config/settings.json holds key-derivation parameters (function, cost or salt) other "
    "than those this vault was last unlocked with, and with them the password does not "
    "open it: the file was edited or replaced. This attempt was not counted as a wrong "
    "password. Restore config/settings.json from a backup; if you restored an older copy "
    "on purpose, use the password that was current when that copy was made."
)
SETTINGS_ALTERED = (
    "config/settings.json was changed outside the app: it no longer matches its "
    "authentication code. Safe values are used and saved: auto-lock after "
    f"{DEFAULT_AUTO_LOCK_S // 60} minutes, creation and password-change dates unknown. "
    "Your password, your key and your history are not affected; check the auto-lock time "
    "in Settings."
)


class Vault:
    """The master-password vault of one APPLIANCE_HOME. Holds no key itself."""

    def __init__(
        self,
        paths: Paths | None = None,
        *,
        clock: Callable[[], float] = time.time,
        kdf_params: Mapping[str, KdfParams] = DEFAULTS,
    ) -> None:
        """kdf_params: per KDF name, the parameters that set-up, password changes and
        upgrades give the key (kdf.DEFAULTS; tests pass cheaper ones)."""
        self.paths = (paths or current()).ensure()
        self.clock = clock
        self._targets = kdf_params
        self._kdf_lock = FileLock(self.paths.config / ".kdf.lock")
        self._pin_path = self.paths.config / "kdf-pin.json"
        self.throttle = Throttle(self.paths.config / "throttle.json", clock)
        self.secrets = SecretStore(self.paths.config)
        self._sessions: weakref.WeakSet[Unlocked] = weakref.WeakSet()
        sweep_stale_temps(self.paths.config)

    @property
    def settings_path(self) -> Path:
        return self.paths.config / "settings.json"

    @property
    def initialized(self) -> bool:
        return self.settings_path.exists()

    # ----------------------------------------------------------------- set-up
    def init(
        self, password: str, *, kdf: str = ARGON2ID, idle_timeout_s: float | None = None
    ) -> Unlocked:
        """Set the master password on first run and return the unlocked session."""
        check_new_password(password)
        _check_kdf_name(kdf)
        with self._kdf_lock.hold():
            if self.initialized:
                raise _already_initialized(self.settings_path)
            leftovers = stored_model_dirs(self.paths.history) + seed_chat_files(self.paths.history)
            if leftovers:
                raise OrphanedHistory(
                    f"history/ holds encrypted history ({len(leftovers)} item(s)) from an earlier "
                    "vault whose config/settings.json is missing. Restore that file from a "
                    "backup to read it, or move history/ away to start afresh."
                )
            data_key = keys.new_data_key()
            created = self._wrap(password, data_key, self._targets[kdf].with_new_salt())
            self._save(created, data_key)
        return Unlocked(self, data_key, idle_timeout_s=_idle(idle_timeout_s, created))

    # ----------------------------------------------------------------- unlock
    def unlock(
        self,
        password: str,
        *,
        idle_timeout_s: float | None = None,
        resolve_model: ModelResolver | None = None,
    ) -> Unlocked:
        """Open the vault. Raises Throttled (before any derivation), WrongPassword,
        SettingsCorrupt or VaultNotInitialized. Weak stored KDF parameters (the seed's
        PBKDF2 480k included) are upgraded on this unlock, and the original app's history
        is imported, filed under the model ids `resolve_model` finds for its file names.
        What the user should know is left in `notices` and `warnings`."""
        with self._kdf_lock.hold():
            data_key, stored, warnings = self._check_password(password)
            target = self._targets[stored.kdf.name]
            if stored.kdf.weaker_than(target):
                stored = self._wrap(password, data_key, target.with_new_salt(), base=stored)
                self._save(stored, data_key)
            unlocked = Unlocked(self, data_key, idle_timeout_s=_idle(idle_timeout_s, stored))
            unlocked.warnings += warnings
            if stored.seed_import:
                self._finish_seed_import(unlocked, stored.seed_import, resolve_model)
            unlocked.warnings += unlocked.history.unreadable_models()
        return unlocked

    def throttle_remaining(self) -> float:
        """Seconds before the next unlock attempt is allowed (0.0 when free)."""
        return self.throttle.remaining()

    # ----------------------------------------------------------------- password change
    def change_password(self, old: str, new: str, *, kdf: str | None = None) -> None:
        """Re-wrap the data key under a new password; history files stay byte-identical."""
        check_new_password(new)
        if kdf is not None:
            _check_kdf_name(kdf)
        with self._kdf_lock.hold():
            data_key, stored, _ = self._check_password(old)
            target = self._targets[kdf or stored.kdf.name]
            keep = stored.kdf.name == target.name and not stored.kdf.weaker_than(target)
            params = (stored.kdf if keep else target).with_new_salt()
            updated = self._wrap(new, data_key, params, base=stored, password_changed=True)
            self._save(updated, data_key)

    # ----------------------------------------------------------------- settings
    @property
    def auto_lock_s(self) -> int:
        loaded = vault_settings.load(self.settings_path)
        return loaded.auto_lock_s if isinstance(loaded, EnvelopeSettings) else 900

    def set_auto_lock_s(self, seconds: int, session: Unlocked | None = None) -> None:
        """Persist the idle time after which new sessions lock themselves. The settings
        MAC needs the key: `session` (or else any session this object unlocked)."""
        low, high = AUTO_LOCK_LIMITS
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
            raise VaultError(
                f"Auto-lock must be between {low // 60} minute and {high // 3600} hours."
            )
        session = session or next((s for s in list(self._sessions) if not s.locked), None)
        if session is None:
            raise VaultLocked("it must be unlocked to change its settings")
        mac_key = session._require()["settings"]
        with self._kdf_lock.hold():
            loaded = vault_settings.load(self.settings_path)
            if isinstance(loaded, SeedSettings):
                raise VaultError("Unlock the vault once (to upgrade it) before changing this.")
            if not vault_settings.mac_matches(mac_key, loaded):
                raise VaultError(
                    "config/settings.json changed since this session was unlocked; nothing "
                    "was saved. Lock and unlock again (that checks the file), then retry."
                )
            vault_settings.save(self.settings_path, replace(loaded, auto_lock_s=seconds), mac_key)

    def status(self) -> dict[str, Any]:
        """State for `appliance vault status` and the UI: no secret, no salt."""
        remaining = self.throttle.remaining()
        failures = self.throttle.state().failures
        out: dict[str, Any] = {
            "initialized": self.initialized,
            "locked": not any(not s.locked for s in list(self._sessions)),
            "throttled": remaining > 0, "throttle_remaining_s": round(remaining, 1),
            "failed_attempts": failures,
            "free_attempts_left": max(0, FREE_ATTEMPTS - failures),
            "format": None, "kdf": None, "kdf_upgrade_pending": False, "auto_lock_s": None,
            "created_at": None, "password_changed_at": None, "error": None,
        }  # fmt: skip
        try:
            loaded = vault_settings.load(self.settings_path)
        except VaultNotInitialized:
            return out
        except SettingsCorrupt as exc:
            out["error"] = str(exc)
            return out
        out["kdf"] = loaded.kdf.describe()
        if isinstance(loaded, SeedSettings):
            out.update(format="seed", kdf_upgrade_pending=True)
            return out
        out.update(
            format=f"envelope-v{loaded.version}",
            kdf_upgrade_pending=loaded.kdf.weaker_than(self._targets[loaded.kdf.name]),
            auto_lock_s=loaded.auto_lock_s, created_at=loaded.created_at,
            password_changed_at=loaded.password_changed_at,
        )  # fmt: skip
        return out

    # ----------------------------------------------------------------- internals
    def _check_password(self, password: str) -> tuple[bytes, EnvelopeSettings, list[str]]:
        """Under the KDF lock: throttle first, then derive. Returns the data key, the
        authenticated settings and warnings about them. A seed vault is converted to the
        envelope format here (its history follows on unlock)."""
        if not isinstance(password, str):
            raise TypeError("password must be a str")
        loaded = vault_settings.load(self.settings_path)
        prior = self.throttle.state()
        self.throttle.begin_attempt()
        if isinstance(loaded, SeedSettings):
            seed_key = verify_seed_password(password, loaded)
            if seed_key is None:
                self._wrong_password()
            self.throttle.succeeded()
            return *self._convert_seed(password, seed_key), []
        master = derive(normalize_password(password), loaded.kdf)
        data_key, altered = self._open_envelope(master, loaded, prior)
        settings, warnings = self._authenticate(master, data_key, loaded, altered)
        self._pin(settings.kdf)
        return data_key, settings, warnings

    def _open_envelope(
        self, master: bytes, loaded: EnvelopeSettings, prior: ThrottleState
    ) -> tuple[bytes, bool]:
        """(data key, altered); the throttle is reset once the password is proven right.
        A verifier mismatch is a wrong password, unless the key opens anyway (the
        verifier was altered) or the KDF parameters are not those of the last unlock
        (the file was altered: reported, and the attempt not counted)."""
        if vault_settings.verify(master, loaded):
            self.throttle.succeeded()
            return vault_settings.unwrap(master, loaded)
        with contextlib.suppress(SettingsCorrupt):
            data_key = vault_settings.unwrap(master, loaded)[0]
            self.throttle.succeeded()
            return data_key, True
        pinned = self._pinned()
        if pinned and vault_settings.fingerprint(loaded.kdf) not in pinned:
            self.throttle.restore(prior)
            raise SettingsCorrupt(KDF_CHANGED)
        self._wrong_password()

    def _authenticate(
        self, master: bytes, data_key: bytes, loaded: EnvelopeSettings, altered: bool
    ) -> tuple[EnvelopeSettings, list[str]]:
        """Check the settings MAC. A file from before the MAC gets one; a mismatch falls
        back to safe values, saved with a new MAC, and a warning. Never raises."""
        mac_key = keys.hkdf(data_key, "settings")
        warnings = list(loaded.problems)
        if not altered and vault_settings.mac_matches(mac_key, loaded):
            return loaded, warnings
        if altered or loaded.version == vault_settings.VERSION:
            warnings = [SETTINGS_ALTERED]
            loaded = replace(loaded, auto_lock_s=DEFAULT_AUTO_LOCK_S, created_at=None,
                             password_changed_at=None)  # fmt: skip
        verifier, wrapped = vault_settings.wrap(master, data_key, loaded.kdf)
        resealed = replace(loaded, verifier=verifier, wrapped_key=wrapped,
                           version=vault_settings.VERSION, problems=[])  # fmt: skip
        self._save(resealed, data_key)
        return resealed, warnings

    def _save(self, settings: EnvelopeSettings, data_key: bytes) -> None:
        """Write settings.json with its MAC, and pin its KDF parameters: the new ones are
        pinned beside the old ones first, so a crash at any point leaves the file's
        parameters pinned."""
        fingerprint = vault_settings.fingerprint(settings.kdf)
        self._write_pins({*(self._pinned() or ()), fingerprint})
        vault_settings.save(self.settings_path, settings, keys.hkdf(data_key, "settings"))
        self._write_pins({fingerprint})

    def _pinned(self) -> set[str] | None:
        """Fingerprints of the KDF parameters the vault was last set or unlocked with
        (config/kdf-pin.json; None when not known, as for vaults of earlier releases)."""
        try:
            values = json.loads(self._pin_path.read_text("utf-8"))["kdf"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        return set(values)

    def _pin(self, kdf: KdfParams) -> None:
        """After a successful unlock: exactly these parameters are pinned."""
        self._write_pins({vault_settings.fingerprint(kdf)})

    def _write_pins(self, fingerprints: set[str]) -> None:
        if self._pinned() != fingerprints:
            atomic_write_json(self._pin_path, {"kdf": sorted(fingerprints)})

    def _wrong_password(self) -> NoReturn:
        failures = self.throttle.state().failures
        raise WrongPassword(max(0, FREE_ATTEMPTS - failures), delay_after(failures))

    def _wrap(
        self, password: str, data_key: bytes, params: KdfParams, *,
        base: EnvelopeSettings | None = None, password_changed: bool = False,
    ) -> EnvelopeSettings:  # fmt: skip
        master = derive(normalize_password(password), params)
        verifier, wrapped = vault_settings.wrap(master, data_key, params)
        if base is None:
            return EnvelopeSettings(kdf=params, verifier=verifier, wrapped_key=wrapped)
        changed = now_iso() if password_changed else base.password_changed_at
        return replace(base, kdf=params, verifier=verifier, wrapped_key=wrapped,
                       password_changed_at=changed, version=vault_settings.VERSION,
                       problems=[])  # fmt: skip

    def _convert_seed(self, password: str, seed_key: bytes) -> tuple[bytes, EnvelopeSettings]:
        data_key = keys.new_data_key()
        ring = KeyRing(data_key)
        sealed_seed_key = keys.seal(ring["seed-import"], seed_key, SEED_AAD)
        ring.wipe()
        converted = self._wrap(password, data_key, self._targets[ARGON2ID].with_new_salt())
        converted.seed_import = sealed_seed_key
        self._save(converted, data_key)
        return data_key, converted

    def _finish_seed_import(
        self, unlocked: Unlocked, sealed_seed_key: bytes, resolve_model: ModelResolver | None
    ) -> None:
        """Under the KDF lock: bring the seed's .chat files into the vault (each is kept,
        renamed), then forget the seed key. Rerun at the next unlock if interrupted."""
        ring = unlocked._require()
        try:
            seed_key = keys.open_sealed(ring["seed-import"], sealed_seed_key, SEED_AAD)
        except keys.AuthFailed:
            unlocked.warnings.append(
                "The original app's history was not imported: config/settings.json holds a "
                "damaged seed-import key. Its .chat files in history/ are kept as they are; "
                "restore config/settings.json from a backup to import them."
            )
            return
        notices, warnings = import_seed_history(
            unlocked.history, ring, seed_key, self.paths.history, resolve_model
        )
        unlocked.notices += notices
        unlocked.warnings += warnings
        loaded = vault_settings.load(self.settings_path)
        if isinstance(loaded, EnvelopeSettings) and loaded.seed_import:
            vault_settings.save(
                self.settings_path, replace(loaded, seed_import=None), ring["settings"]
            )


class Unlocked:
    """An unlocked session: the key ring, the history, secrets and the idle lock.

    Keep it per person (Streamlit's session_state), never in a shared cache. `lock()`
    wipes the keys; any use afterwards raises VaultLocked. The session also locks itself
    once `idle_timeout_s` passed without `touch()`; `check_idle()` or any use notices.
    """

    def __init__(self, vault: Vault, data_key: bytes, *, idle_timeout_s: float = 900.0) -> None:
        self.vault = vault
        self.idle_timeout_s = float(idle_timeout_s)
        self.notices: list[str] = []  # what the unlock did (imports), for the user
        self.warnings: list[str] = []  # what the unlock found wrong, for the user
        self._clock = vault.clock
        self._ring: KeyRing | None = KeyRing(data_key)
        self._last_activity = self._clock()
        self._lock_reason = "it was locked"
        self._history = HistoryStore(vault.paths, self._require, self._clock)
        vault._sessions.add(self)

    @property
    def history(self) -> HistoryStore:
        self._require()
        return self._history

    @property
    def locked(self) -> bool:
        self.check_idle()
        return self._ring is None

    def lock(self) -> None:
        """Drop the keys now."""
        self._wipe("it was locked")

    def touch(self) -> None:
        """Record user activity (restarts the idle timer), unless already locked."""
        if not self.check_idle():
            self._last_activity = self._clock()

    def check_idle(self) -> bool:
        """Lock if idle too long. True when the session is locked after the check."""
        if self._ring is not None and self.idle_remaining_s() <= 0:
            self._wipe(f"no activity for {format_delay(self.idle_timeout_s)}")
        return self._ring is None

    def idle_remaining_s(self) -> float:
        return max(0.0, self.idle_timeout_s - (self._clock() - self._last_activity))

    def set_auto_lock_s(self, seconds: int) -> None:
        """Persist the auto-lock time for new sessions (this one keeps its own)."""
        self.vault.set_auto_lock_s(seconds, self)

    # ----------------------------------------------------------------- secrets
    def set_secret(self, name: str, value: str) -> None:
        """Store a small secret (e.g. a server's API key) encrypted in config/."""
        self.vault.secrets.set(self._require(), name, value)

    def get_secret(self, name: str) -> str | None:
        return self.vault.secrets.get(self._require(), name)

    def delete_secret(self, name: str) -> bool:
        return self.vault.secrets.delete(self._require(), name)

    def secret_names(self) -> list[str]:
        return self.vault.secrets.names(self._require())

    # ----------------------------------------------------------------- internals
    def _require(self) -> KeyRing:
        if self.check_idle() or self._ring is None:
            raise VaultLocked(self._lock_reason)
        return self._ring

    def _wipe(self, reason: str) -> None:
        if self._ring is not None:
            self._ring.wipe()
            self._ring = None
            self._lock_reason = reason


def _idle(requested: float | None, stored: EnvelopeSettings) -> float:
    return float(requested if requested is not None else stored.auto_lock_s)


def _check_kdf_name(kdf: str) -> None:
    if kdf not in KDF_NAMES:
        raise VaultError(f"Unknown key-derivation function {kdf!r}; use {' or '.join(KDF_NAMES)}.")


def _already_initialized(path: Path) -> VaultAlreadyInitialized:
    try:
        vault_settings.load(path)
    except SettingsCorrupt as exc:
        return VaultAlreadyInitialized(
            f"config/settings.json already exists but cannot be read ({exc}) It is never "
            "overwritten: restore it, or move it away together with history/ to start afresh."
        )
    return VaultAlreadyInitialized()
