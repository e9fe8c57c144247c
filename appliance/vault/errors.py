"""Typed vault errors: each message tells the user what happened and what to do next."""

from __future__ import annotations

import math

from appliance.errors import ApplianceError


class VaultError(ApplianceError):
    """Base class of every vault and history error."""


class WrongPassword(VaultError):
    """The password did not unlock the vault. `attempts_left` free tries remain."""

    def __init__(self, attempts_left: int, next_delay_s: float) -> None:
        self.attempts_left = attempts_left
        self.next_delay_s = next_delay_s
        if attempts_left > 0:
            tail = (
                f"{attempts_left} more attempt{'s' if attempts_left != 1 else ''} before a delay."
            )
        else:
            tail = f"Wait {format_delay(next_delay_s)} before the next attempt."
        super().__init__(f"Wrong password. {tail}")


class Throttled(VaultError):
    """Too many wrong passwords: no attempt is allowed for `remaining_s` seconds."""

    def __init__(self, remaining_s: float) -> None:
        self.remaining_s = remaining_s
        super().__init__(
            f"Too many wrong passwords: wait {format_delay(remaining_s)} before the next "
            "attempt. The delay doubles with each further failure, up to 15 minutes, and "
            "resets after a successful unlock."
        )


class SettingsCorrupt(VaultError):
    """config/settings.json cannot be read or was altered; it is never overwritten."""


class KdfParamsRefused(SettingsCorrupt):
    """The stored key-derivation parameters are out of range; nothing was derived."""


class VaultNotInitialized(VaultError):
    def __init__(self) -> None:
        super().__init__(
            "No master password is set yet. Open the app to set one, or run `appliance vault init`."
        )


class VaultAlreadyInitialized(VaultError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            detail
            or "A master password is already set. To change it, run "
            "`appliance vault change-password` or use the settings page."
        )


class OrphanedHistory(VaultError):
    """history/ holds encrypted data but config/settings.json (its key) is missing."""


class WeakPassword(VaultError):
    """The new password is refused (empty, too short or too easy to guess)."""


class VaultLocked(VaultError):
    def __init__(self, reason: str = "it was locked") -> None:
        super().__init__(
            f"The vault is locked ({reason}). Unlock it again with the master password."
        )


class HistoryError(VaultError):
    """Bad input to the history store (unknown conversation, bad role, bad import file)."""


class UnknownConversation(HistoryError):
    pass


class HistoryTampered(VaultError):
    """A history file failed authentication: it was altered, reordered or damaged."""


def format_delay(seconds: float) -> str:
    """A delay for people: '1 s', '32 s', '4 min 16 s', '15 min'."""
    total = max(1, math.ceil(seconds))
    minutes, secs = divmod(total, 60)
    if not minutes:
        return f"{secs} s"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"
