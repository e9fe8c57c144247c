"""Per-backend load options and their machine-dependent defaults.

- n_ctx: the model's own context length, capped so the KV cache fits memory
  (DEFAULT_CTX_CAP, and at most a quarter of the available memory).
- n_threads: the number of physical cores this process may use.
- n_gpu_layers: all layers (-1) when the backend's build can offload and a GPU is
  present, else 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.engine.errors import InvalidOptions

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


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads do not speed up decoding)."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    physical = psutil.cpu_count(logical=False) or usable or 1
    logical = psutil.cpu_count(logical=True) or physical
    # With an affinity mask, keep the same share of physical cores.
    return max(1, min(physical, round((usable or logical) * physical / logical)))


def gpu_present() -> bool:
    return any(Path(device).exists() for device in GPU_DEVICES)


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def default_n_ctx(model_ctx: int | None, kv_bytes_per_token: int | None) -> int:
    """min(model context, DEFAULT_CTX_CAP, what a quarter of free memory holds)."""
    cap = DEFAULT_CTX_CAP
    if kv_bytes_per_token:
        fits = int(available_memory() * KV_MEMORY_SHARE) // kv_bytes_per_token
        cap = min(cap, max(MIN_CTX, fits // 256 * 256))
    return max(MIN_CTX, min(model_ctx or cap, cap))
