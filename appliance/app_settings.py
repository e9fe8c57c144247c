"""App-wide settings in config/app.json: keep-alive, threads and context size.

(The auto-lock delay belongs to the vault: appliance.vault.Vault.auto_lock_s.)

Declared once with descriptions and bounds (the same `Setting` table as sampling),
validated on load, written atomically. No secrets live here. A corrupted file is
reported with its problem and never overwritten silently.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_json
from appliance.paths import Paths, current
from appliance.sampling import Setting, validate

APP_SETTINGS: tuple[Setting, ...] = (
    Setting("keep_alive_minutes", 30, "Unload an idle model after this many minutes "
            "(0 = keep it loaded).", int, 0, 10_080),
    Setting("n_threads", 0, "CPU threads for inference (0 = the physical cores).", int, 0, 256),
    Setting("n_ctx", 0, "Context size in tokens (0 = the model's own, capped to fit "
            "memory).", int, 0, 1_048_576),
)  # fmt: skip


class SettingsFileError(ApplianceError):
    pass


def _file(paths: Paths) -> Any:
    return paths.config / "app.json"


def load(paths: Paths | None = None) -> dict[str, Any]:
    """The current settings: the defaults overlaid with config/app.json."""
    path = _file(paths or current())
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raw = {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingsFileError(
            f"{path} is not valid JSON ({exc}). Fix it by hand or delete it to return to "
            "the defaults."
        ) from None
    try:
        return validate(raw, "app.json", APP_SETTINGS)
    except ValueError as exc:
        raise SettingsFileError(f"{path}: {exc}. Fix it by hand or delete it.") from None


def save(values: dict[str, Any], paths: Paths | None = None) -> dict[str, Any]:
    """Validate and store settings (merged over the current ones); return the result."""
    paths = (paths or current()).ensure()
    try:
        merged = validate({**load(paths), **values}, "settings", APP_SETTINGS)
    except ValueError as exc:
        raise SettingsFileError(f"Invalid setting: {exc}.") from None
    atomic_write_json(_file(paths), merged, mode=0o600)
    return merged
