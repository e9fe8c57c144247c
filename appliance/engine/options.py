"""Per-backend load options and their machine-dependent defaults.

(The machine facts, cores and free memory, come from appliance.hardware.)

- n_ctx: the model's own context length, capped so the KV cache fits memory
  (DEFAULT_CTX_CAP, and at most a quarter of the available memory).
- n_threads: the physical cores this process may use (appliance.hardware).
- n_gpu_layers: all layers (-1) when the backend's build can offload and a GPU is
  present, else 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
MIN_CTX = 64
MAX_CTX = 1 << 20
KV_MEMORY_SHARE = 0.25
OPTION_BOUNDS: dict[str, tuple[int, int]] = {
    "n_ctx": (MIN_CTX, MAX_CTX),
    "n_threads": (1, 1024),
    "n_gpu_layers": (-1, 100_000),
}
GPU_DEVICES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Validate the user's load options; unknown keys and bad values are refused."""
    clean: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in OPTION_BOUNDS:
            raise InvalidOptions(f"Unknown load option {key!r}; use {', '.join(OPTION_BOUNDS)}.")
        low, high = OPTION_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidOptions(
                f"The load option {key} must be a whole number from {low} to {high}."
            )
        clean[key] = value
    return clean


def gpu_present() -> bool:
    return any(Path(device).exists() for device in GPU_DEVICES)


def default_n_ctx(model_ctx: int | None, kv_bytes_per_token: int | None) -> int:
    """min(model context, DEFAULT_CTX_CAP, what a quarter of free memory holds)."""
    cap = DEFAULT_CTX_CAP
    if kv_bytes_per_token:
        fits = int(available_memory() * KV_MEMORY_SHARE) // kv_bytes_per_token
        cap = min(cap, max(MIN_CTX, fits // 256 * 256))
    return max(MIN_CTX, min(model_ctx or cap, cap))
