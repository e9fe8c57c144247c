"""ctransformers: real generation from tiny legacy GGML files, and its refusals and native
crashes as one clear error.

The GGML files are written by tests/ggml_fixtures.py in the layouts ctransformers' own
loaders read (ggml's gpt-2 example; llama.cpp's ggmf and ggjt), with a planted path that
makes greedy decoding predictable: after "Assistant:" come " alpha", " bravo", ...
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Host, ModelLoadError
from appliance.engine.backends.ctransformers import SUGGESTION, SUPPORTED
from appliance.engine.errors import ContextOverflow
from appliance.engine.prompt import render_fallback, with_system
from appliance.library.inspect import inspect_model
from appliance.library.library import Library
from appliance.library.model_info import ModelInfo
from tests.engine_models import register_demo
from tests.ggml_fixtures import (
    GPT2_VOCAB,
    LLAMA_VOCAB,
    WORDS,
    expected_text,
    gpt2_parameters,
    llama_parameters,
    write_gpt2_ggml,
    write_llama_ggjt,
)
from tests.helpers import write_ggjt

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# Non-ASCII on purpose: ctransformers' own tokenize() sizes its buffer by characters.
HELLO = [{"role": "user", "content": "What is the capital of France? \U0001f642 Ça va?"}]
SYSTEM = "Réponds brièvement."
GREEDY = {"temperature": 0, "top_k": 40, "top_p": 1.0, "repeat_penalty": 1.1, "seed": 7,
          "max_tokens": 12}  # fmt: skip
# variant -> (writer, tensor type, writer options, architecture, context length)
LEGACY = {
    "gpt2 ggml F32": (write_gpt2_ggml, "F32", {}, "gpt2", 128),
    "gpt2 ggml F16": (write_gpt2_ggml, "F16", {}, "gpt2", 128),
    "gpt2 ggml Q8_0": (write_gpt2_ggml, "Q8_0", {}, "gpt2", 128),
    "gpt2 ggml Q4_0": (write_gpt2_ggml, "Q4_0", {}, "gpt2", 128),
    # StarCoder files share the gpt-2 layout; the file name picks ctransformers' starcoder.
    "starcoder ggml Q8_0": (write_gpt2_ggml, "Q8_0", {}, "starcoder", 128),
    "llama ggmf v1 F16": (write_llama_ggjt, "F16", {"variant": ("ggmf", 1)}, "llama", 2048),
    "llama ggjt v1 F32": (write_llama_ggjt, "F32", {"variant": ("ggjt", 1)}, "llama", 2048),
    "llama ggjt v3 Q8_0": (write_llama_ggjt, "Q8_0", {}, "llama", 2048),
    "llama ggjt v3 Q4_0": (write_llama_ggjt, "Q4_0", {}, "llama", 2048),
}


@pytest.fixture
def host(library: Library) -> Iterator[Host]:
    host = Host(library, spare_worker=False)
    yield host
    host.shutdown()


def register(library: Library, path: Path, fmt: str) -> str:
    """Register as if the file had been good when added (it is damaged since)."""
    info = ModelInfo(path=str(path), format=fmt, backend="ctransformers", architecture="llama",
                     architecture_source="metadata", size_bytes=path.stat().st_size)  # fmt: skip
    return library.register(path, info=info, backend="ctransformers").entry.id


def tiny(library: Library, variant: str) -> str:
    """Write the variant's file into models/ and register it from its own header."""
    write, kind, options, _arch, _ctx = LEGACY[variant]
    name = "tiny-" + variant.replace(" ", "-").lower() + ".bin"
    return library.register(write(library.paths.models / name, kind, **options)).entry.id


@pytest.mark.parametrize("variant", LEGACY)
def test_legacy_ggml_generates_exactly_n_tokens(host: Host, library: Library, variant: str) -> None:
    arch, context = LEGACY[variant][3:]
    model = tiny(library, variant)
    assert library.get(model).architecture == arch
    status = host.load(model)
    assert (status.backend, status.phase, status.architecture, status.context_length) == (
        "ctransformers", "ready", arch, context)  # fmt: skip
    gen = host.chat(model, HELLO, system_prompt=SYSTEM, settings=GREEDY)
    chunks = list(gen)
    assert chunks == [WORDS[i % len(WORDS)] for i in range(12)]  # one chunk per token
    result = gen.result
    assert (result.text, result.completion_tokens) == (expected_text(12), 12)
    assert result.finish == "length"
    # Every byte of the prompt is one token of the fixture's vocabulary (llama adds BOS).
    prompt = render_fallback(with_system(SYSTEM, HELLO))
    assert result.prompt_tokens == len(prompt.encode()) + (arch == "llama")
    assert result.context_length == context


def test_top_k_zero_means_no_limit_not_a_crash(host: Host, library: Library) -> None:
    """ctransformers' gpt2 sampler does not clamp top_k to the vocabulary: 0 ("no limit")
    used to reach it as 1,000,000 and kill the worker."""
    model = tiny(library, "gpt2 ggml Q4_0")
    gen = host.chat(model, HELLO, settings={**GREEDY, "top_k": 0, "max_tokens": 7})
    assert "".join(gen) == expected_text(7)
    assert (gen.result.completion_tokens, gen.result.finish) == (7, "length")


def test_gpt2_context_is_the_files_own(host: Host, library: Library) -> None:
    """A gpt2-layout file keeps the n_ctx of its header whatever is asked: the host must
    fit prompts to that window, not to the requested one."""
    model = tiny(library, "gpt2 ggml F16")
    status = host.load(model, options={"n_ctx": 2048})
    assert status.context_length == 128
    long = [{"role": "user", "content": "x" * 200}]
    with pytest.raises(ContextOverflow, match=r"the context window holds 128 tokens"):
        list(host.chat(model, long, settings=GREEDY))
    assert "".join(host.chat(model, HELLO, settings=GREEDY)) == expected_text(12)


def test_inspection_reads_the_gpt2_layout(tmp_path: Path) -> None:
    info = inspect_model(write_gpt2_ggml(tmp_path / "tiny.bin", "Q4_0"))
    meta = info.metadata
    assert (info.format, meta.ggml_variant, info.backend) == ("ggml", "ggml", "ctransformers")
    assert (info.architecture, info.architecture_source) == ("gpt2", "metadata")
    assert (meta.quantization, meta.context_length) == ("Q4_0", 128)
    assert (meta.layers, meta.embedding, meta.heads, meta.tensor_count) == (2, 128, 4, 29)
    assert meta.parameters == gpt2_parameters(len(GPT2_VOCAB), 128, 128, 2) == 480_256
    assert meta.notes == (
        f"ggml gpt-2 layout: vocab {len(GPT2_VOCAB)}, context 128, embedding 128, 4 heads, "
        "2 layers. GPT-2 and StarCoder files share this layout; the file name tells them "
        "apart. Converting to GGUF is recommended.",
    )
    # Same layout, named by the file: ctransformers' starcoder loader reads it too.
    starcoder = inspect_model(write_gpt2_ggml(tmp_path / "tiny-starcoder.bin", "F16"))
    assert (starcoder.architecture, starcoder.architecture_source) == ("starcoder", "filename")
    assert starcoder.metadata.quantization == "F16"


def test_inspection_of_a_cut_gpt2_file(tmp_path: Path) -> None:
    path = write_gpt2_ggml(tmp_path / "cut.bin")
    path.write_bytes(path.read_bytes()[:100_000])
    info = inspect_model(path)
    meta = info.metadata
    assert (info.architecture, meta.context_length, meta.parameters) == ("gpt2", 128, None)
    assert meta.notes[-1].startswith("The tensor table does not end where the file does")


@pytest.mark.parametrize(("variant", "version"), [(("ggmf", 1), "ggmf v1"),
                                                  (("ggjt", 3), "ggjt v3")])  # fmt: skip
def test_inspection_reads_the_llama_layouts(
    tmp_path: Path, variant: tuple[str, int], version: str
) -> None:
    info = inspect_model(write_llama_ggjt(tmp_path / "tiny.bin", "Q8_0", variant=variant))
    meta = info.metadata
    assert (meta.ggml_variant, meta.quantization, meta.context_length) == (version, "Q8_0", None)
    assert (info.architecture, info.architecture_source) == ("llama", "filename")
    assert (meta.layers, meta.embedding, meta.heads, meta.tensor_count) == (2, 128, 4, 21)
    assert meta.parameters == llama_parameters(len(LLAMA_VOCAB), 128, 32, 2)


def test_current_gguf_is_refused_with_a_suggestion(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = library.register(demo_model, external=True, backend="ctransformers").entry.id
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
