"""What this machine has (RAM, cores, GPUs) and whether a model will fit in it.

psutil for memory and cores; NVIDIA GPUs through nvidia-ml-py when it and a driver are
present. The estimate is the weights' size plus the KV cache for the chosen context,
computed from the layer and head counts read from the model's header, once per slot: a
llama-server model with N parallel slots reserves N x n_ctx tokens of KV cache.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import psutil

from appliance.model_entry import ModelEntry, ModelMetadata

COMPUTE_OVERHEAD = 256 << 20  # scratch buffers, runtime, tokenizer
TIGHT_FRACTION = 0.8


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    total_ram: int
    available_ram: int
    physical_cores: int
    logical_cores: int
    gpus: list[Gpu] = field(default_factory=list)


def snapshot() -> Hardware:
    memory = psutil.virtual_memory()
    return Hardware(
        total_ram=memory.total,
        available_ram=memory.available,
        physical_cores=physical_cores(),
        logical_cores=psutil.cpu_count(logical=True) or 1,
        gpus=_nvidia_gpus(),
    )


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads do not speed up decoding)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    physical = psutil.cpu_count(logical=False) or usable or 1
    logical = psutil.cpu_count(logical=True) or physical
    # With an affinity mask, keep the same share of physical cores.
    return max(1, min(physical, round((usable or logical) * physical / logical)))


def available_memory() -> int:
    return psutil.virtual_memory().available


def _nvidia_gpus() -> list[Gpu]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver or no GPU: the library raises its own error types
        return []
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(name if isinstance(name, str) else name.decode(), info.total, info.free)
            )
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return gpus


def kv_cache_bytes(metadata: ModelMetadata, n_ctx: int) -> int:
    """f16 K and V for every layer: 2 * layers * n_ctx * head_dim * kv_heads * 2 bytes."""
    layers, embedding, heads = metadata.layers, metadata.embedding, metadata.heads
    if not layers or not embedding or not heads:
        return 0
    kv_heads = metadata.kv_heads or heads
    return 2 * layers * n_ctx * (embedding // heads) * kv_heads * 2


def memory_needed(entry: ModelEntry, n_ctx: int | None = None, slots: int = 1) -> int:
    """Bytes a model needs resident: weights, KV cache for `slots` x n_ctx tokens (n_ctx
    per slot; None: the model's own context), and overhead."""
    ctx = n_ctx or entry.metadata.context_length or 2048
    kv = kv_cache_bytes(entry.metadata, ctx * max(1, slots))
    return entry.size_bytes + kv + COMPUTE_OVERHEAD


def fit(entry: ModelEntry, hardware: Hardware, n_ctx: int | None = None, slots: int = 1) -> str:
    """'fits', 'tight' or "won't fit" for the model in the free RAM (or free VRAM)."""
    if entry.is_remote:
        return "remote"
    needed = memory_needed(entry, n_ctx, slots)
    free = max([hardware.available_ram, *(g.free_bytes for g in hardware.gpus)])
    if needed <= free * TIGHT_FRACTION:
        return "fits"
    if needed <= free:
        return "tight"
    return "won't fit"
