"""ctransformers: its refusals and its native crashes become one clear error."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Host, ModelLoadError
from appliance.engine.backends.ctransformers import SUGGESTION, SUPPORTED
from appliance.library.library import Library
from appliance.library.model_info import ModelInfo
from tests.engine_models import register_demo
from tests.helpers import write_ggjt

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def host(library: Library) -> Iterator[Host]:
    host = Host(library, spare_worker=False)
    yield host
    host.shutdown()


def register(library: Library, path: Path, fmt: str) -> str:
    """Register as if the file had been good when added (it is damaged since)."""
    info = ModelInfo(path=str(path), format=fmt, backend="ctransformers", architecture="llama",
                     architecture_source="metadata", size_bytes=path.stat().st_size)  # fmt: skip
    return library.register(path, info=info, backend="ctransformers")["id"]


def test_current_gguf_is_refused_with_a_suggestion(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = library.register(demo_model, external=True, backend="ctransformers")["id"]
    with pytest.raises(ModelLoadError) as caught:
        host.load(model)
    message = str(caught.value)
    assert message.startswith("ctransformers cannot load SmolLM2-135M-Instruct.Q4_1.gguf")
    assert message.endswith(f"{SUPPORTED}. {SUGGESTION}")
    assert host.worker_pids() == []


def test_truncated_ggml_names_the_reason(host: Host, library: Library) -> None:
    path = write_ggjt(library.paths.models / "old-llama.bin")
    with pytest.raises(ModelLoadError) as caught:
        host.load(register(library, path, "ggml"))
    assert str(caught.value) == (
        f"ctransformers cannot load old-llama.bin: unexpectedly reached end of file. "
        f"{SUPPORTED}. {SUGGESTION}"
    )


def test_native_crash_is_contained_and_explained(
    host: Host, library: Library, demo_model: Path
) -> None:
    """A GGUF whose version field says 1 makes ctransformers segfault: only the worker dies."""
    head = demo_model.open("rb").read(2_000_000)
    path = library.paths.models / "v1.gguf"
    path.write_bytes(head[:4] + struct.pack("<I", 1) + head[8:])
    model = register(library, path, "gguf")
    with pytest.raises(ModelLoadError) as caught:
        host.load(model)
    message = str(caught.value)
    assert message.startswith(
        f"Cannot load v1 ({path}): the worker process crashed while loading it "
        "(SIGSEGV: a crash in native code"
    )
    assert message.endswith(f"{SUPPORTED}. {SUGGESTION}")
    good = register_demo(library, demo_model)  # the host is still usable
    reply = host.chat(good, FRANCE, system_prompt="You are a helpful assistant.",
                      settings={"temperature": 0})  # fmt: skip
    assert "".join(reply) == "The capital of France is Paris."
