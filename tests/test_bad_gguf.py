"""Eleven kinds of damaged GGUF file through the host: each gives llama.cpp's own reason
in a ModelLoadError, never a crash, and the host loads a good model right after."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engine import Host, ModelLoadError
from appliance.library.library import Library
from tests.engine_models import DAMAGE, register_demo

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
