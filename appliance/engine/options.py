"""Load options: checked against the backend's schema, and their machine-dependent defaults.

Which options each backend takes, and their bounds, is in appliance.capabilities; the
machine facts, cores and free memory, come from appliance.hardware.

- n_ctx: the model's own context length, capped so the KV cache fits memory
  (DEFAULT_CTX_CAP, and at most a quarter of the available memory for all the parallel
  slots together).
- n_threads: the physical cores this process may use (appliance.hardware).
- n_gpu_layers: all layers (-1) when the backend's build can offload and a GPU is
  present, else 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance import capabilities
from appliance.capabilities import MIN_CTX
from appliance.engine.errors import InvalidOptions
from appliance.hardware import available_memory, physical_cores

__all__ = [
    "available_memory",
    "check_options",
    "default_n_ctx",
    "gpu_present",
    "physical_cores",
]

DEFAULT_CTX_CAP = 4096
KV_MEMORY_SHARE = 0.25
GPU_DEVICES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def check_options(backend: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The user's load options that backend takes, checked against its bounds.

    A key no backend knows is refused; one that only other backends take is left out,
    so one set of settings (the app's threads and context) serves every model.
    """
    schema = capabilities.BACKENDS[backend]
    clean: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in capabilities.OPTION_NAMES:
            raise InvalidOptions(
                f"Unknown load option {key!r}; use {', '.join(capabilities.OPTION_NAMES)}."
            )
        option = schema.option(key)
        if option is None:
            continue
        low, high = option.low, option.high
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidOptions(
                f"The load option {key} must be a whole number from {low} to {high}."
            )
        clean[key] = value
    return clean


def gpu_present() -> bool:
    return any(Path(device).exists() for device in GPU_DEVICES)


def default_n_ctx(model_ctx: int | None, kv_bytes_per_token: int | None, parallel: int = 1) -> int:
    """min(model context, DEFAULT_CTX_CAP, what a quarter of free memory holds for
    `parallel` slots of that context each)."""
    cap = DEFAULT_CTX_CAP
    if kv_bytes_per_token:
        fits = int(available_memory() * KV_MEMORY_SHARE) // (kv_bytes_per_token * parallel)
        cap = min(cap, max(MIN_CTX, fits // 256 * 256))
    return max(MIN_CTX, min(model_ctx or cap, cap))
