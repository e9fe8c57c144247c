"""Per-model chat defaults: the system prompt and sampling settings.

Declared once, each with a description and bounds, in the style of llama-cpp-python's
server settings. The registry validates stored defaults against these; the engine and
the UI read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    description: str
    kind: type
    low: float | None = None
    high: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("system_prompt", "", "Instructions given to the model first.", str, 0, 32_000),
    Setting("temperature", 0.7, "Randomness: 0 always picks the likeliest token.", float, 0.0, 2.0),
    Setting("top_p", 0.95, "Nucleus sampling: keep the smallest set of tokens whose "
            "probabilities add up to this.", float, 0.0, 1.0),
    Setting("top_k", 40, "Keep only the k likeliest tokens (0 = no limit).", int, 0, 1000),
    Setting("repeat_penalty", 1.0, "Penalty for tokens already in the prompt or reply (1 = "
            "none, as llama.cpp's own default).", float, 0.5, 2.0),
    Setting("max_tokens", 512, "The most tokens one reply may have.", int, 1, 32_768),
    Setting("seed", -1, "Random seed (-1 = a new one each time).", int, -1, 2**31 - 1),
)  # fmt: skip
BY_NAME = {s.name: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in SETTINGS}


def validate(
    values: Any, where: str = "defaults", table: tuple[Setting, ...] = SETTINGS
) -> dict[str, Any]:
    """Return a complete, checked settings dict; raise ValueError naming the bad field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object")
    by_name = {s.name: s for s in table}
    result = {s.name: s.default for s in table}
    for key, value in values.items():
        setting = by_name.get(key)
        if setting is None:
            raise ValueError(f"{where}.{key} is not a known setting")
        result[key] = _check(setting, value, where)
    return result


def _check(setting: Setting, value: Any, where: str) -> Any:
    label = f"{where}.{setting.name}"
    if setting.kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{label} must be text")
        if setting.high is not None and len(value) > setting.high:
            raise ValueError(f"{label} is longer than {int(setting.high)} characters")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{label} must be a number")
    if setting.kind is int and not float(value).is_integer():
        raise ValueError(f"{label} must be a whole number")
    if (setting.low is not None and value < setting.low) or (
        setting.high is not None and value > setting.high
    ):
        raise ValueError(f"{label} must be between {setting.low} and {setting.high}")
    return setting.kind(value)
