"""App-wide settings in config/app.json: keep-alive, threads, context size, parallel
slots and the switch rule.

(The auto-lock delay belongs to the vault: appliance.vault.Vault.auto_lock_s.)

Declared once with descriptions and bounds (the same `Setting` table as sampling; a
`Choice` is a text setting with a fixed set of values), validated on load, written
atomically. No secrets live here. A corrupted file is reported with its problem and
never overwritten silently. `load_options()` turns them into the engine's load options
(what a Load click or a reload after the keep-alive uses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_json
from appliance.paths import Paths, current
from appliance.sampling import Setting, validate

# The host's rules (appliance.engine.host.SWITCH_RULES; this floor imports no engine).
SWITCH_RULES = ("wait", "cancel")


@dataclass(frozen=True)
class Choice(Setting):
    """A text setting whose value must be one of `choices`."""

    choices: tuple[str, ...] = ()


APP_SETTINGS: tuple[Setting, ...] = (
    Setting("keep_alive_minutes", 30, "Unload an idle model after this many minutes "
            "(0 = keep it loaded).", int, 0, 10_080),
    Setting("n_threads", 0, "CPU threads for inference (0 = the physical cores).", int, 0, 256),
    Setting("n_ctx", 0, "Context size in tokens (0 = the model's own, capped to fit "
            "memory).", int, 0, 1_048_576),
    Setting("parallel_slots", 4, "Replies generated at once for a GGUF model (llama-server "
            "slots); each slot reserves its own context memory.", int, 1, 16),
    Choice("switch_rule", "wait", "When a model is switched while replies are being "
           "generated: wait for them to finish, or cancel them at once (their partial "
           "text is kept).", str, 0, 16, choices=SWITCH_RULES),
)  # fmt: skip


class SettingsFileError(ApplianceError):
    pass


def _file(paths: Paths) -> Any:
    return paths.config / "app.json"


def check(values: Any, where: str) -> dict[str, Any]:
    """A complete, checked settings dict (bounds, and the allowed values of each Choice);
    ValueError naming the bad field."""
    result = validate(values, where, APP_SETTINGS)
    for setting in APP_SETTINGS:
        if isinstance(setting, Choice) and result[setting.name] not in setting.choices:
            raise ValueError(
                f"{where}.{setting.name} must be one of {', '.join(setting.choices)}, "
                f"not {result[setting.name]!r}"
            )
    return result


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
        return check(raw, "app.json")
    except ValueError as exc:
        raise SettingsFileError(f"{path}: {exc}. Fix it by hand or delete it.") from None


def save(values: dict[str, Any], paths: Paths | None = None) -> dict[str, Any]:
    """Validate and store settings (merged over the current ones); return the result."""
    paths = (paths or current()).ensure()
    try:
        merged = check({**load(paths), **values}, "settings")
    except ValueError as exc:
        raise SettingsFileError(f"Invalid setting: {exc}.") from None
    atomic_write_json(_file(paths), merged, mode=0o600)
    return merged


def load_options(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's load options from the settings (read now unless `values` is given):
    threads and context when set (0 = the engine decides) and the parallel slots. The
    engine leaves out what a model's backend does not take (`parallel`, but llama.cpp)."""
    values = load() if values is None else values
    options = {k: values[k] for k in ("n_threads", "n_ctx") if values[k]}
    options["parallel"] = values["parallel_slots"]
    return options
