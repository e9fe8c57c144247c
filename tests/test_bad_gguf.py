"""Eleven kinds of damaged GGUF file through the host: each gives llama.cpp's own reason
in a ModelLoadError, never a crash, and the host loads a good model right after."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.engine import Host, ModelLoadError
from appliance.library.library import Library
from tests.engine_models import register_demo

# GGUF: magic (4) | version u32 | tensor count u64 | metadata count u64 | metadata...
# each metadata entry: key (u64 length + bytes) | value type u32 | value
KEY = 24  # where the first metadata key's length is


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def _first_type_offset(data: bytes) -> int:
    (length,) = struct.unpack_from("<Q", data, KEY)
    return KEY + 8 + length


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "random": lambda d: random.Random(4).randbytes(1 << 20),
    "truncated": lambda d: d[:-432],
    "half": lambda d: d[: len(d) // 2],
    "header-only": lambda d: d[:4096],
    "bad-magic": lambda d: b"GGUX" + d[4:],
    "bad-version": lambda d: _set(d, 4, "<I", 99),
    "huge-tensor-count": lambda d: _set(d, 8, "<Q", 1 << 62),
    "huge-metadata-count": lambda d: _set(d, 16, "<Q", 1 << 62),
    "huge-key-length": lambda d: _set(d, KEY, "<Q", 1 << 62),
    "bad-value-type": lambda d: _set(d, _first_type_offset(d), "<I", 99),
}

# llama.cpp's own reason for each, as the error shows it.
REASONS = {
    "empty": "failed to read magic",
    "random": "invalid magic characters",
    "truncated": "data is not within the file bounds",
    "half": "data is not within the file bounds",
    "header-only": "failed to read key-value pairs",
    "bad-magic": "invalid magic characters: 'GGUX', expected 'GGUF'",
    "bad-version": "version 99 but this software only supports up to version 3",
    "huge-tensor-count": "number of tensors is 4611686018427387904 but must be in",
    "huge-metadata-count": "number of key value pairs is 4611686018427387904 but must be in",
    "huge-key-length": "string length 4611686018427387904 exceeds maximum",
    "bad-value-type": "key 'general.architecture' has invalid GGUF type 99",
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_gguf_gives_a_clean_error(library: Library, demo_model: Path, kind: str) -> None:
    assert len(DAMAGE) == 11
    host = Host(library, spare_worker=False)
    try:
        target = library.paths.models / f"{kind}.gguf"
        original = demo_model.read_bytes()
        target.write_bytes(original)
        model = library.register(target).entry.id  # registered while good, damaged later
        target.write_bytes(DAMAGE[kind](original))
        with pytest.raises(ModelLoadError) as caught:
            host.load(model)
        message = str(caught.value)
        assert message.startswith(f"llama.cpp cannot load {kind}.gguf: "), message
        assert REASONS[kind] in message
        assert "SIG" not in message and "crash" not in message, message  # not a crash
        assert message.endswith("not a model this llama.cpp supports."), message
        assert host.status().phase == "error" and host.worker_pids() == []
        good = register_demo(library, demo_model)
        reply = "".join(host.chat(good, [{"role": "user", "content": "Hi"}],
                                  settings={"max_tokens": 4}))  # fmt: skip
        assert reply
    finally:
        host.shutdown()
