"""The llama.cpp backend (llama-server) through the host, on the real demo model at
temperature 0."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.engine import ContextOverflow, Host, ModelLoadError
from appliance.engine.backends.llama_cpp import gguf_facts
from appliance.library.library import Library
from tests.engine_fakes import pid_alive
from tests.engine_models import DAMAGE, gguf_without_template, register_demo

GREEDY = {"temperature": 0, "seed": 42}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model without its chat template, like a base model."""
    from tests.conftest import DEMO_MODEL

    return gguf_without_template(DEMO_MODEL, tmp_path_factory.mktemp("base") / "base.gguf")


@pytest.fixture
def host(library: Library) -> Host:
    host = Host(library, spare_worker=False)
    yield host
    host.shutdown()


def test_exact_reply(host: Host, library: Library, demo_model: Path) -> None:
    model = register_demo(library, demo_model)
    gen = host.chat(model, FRANCE, system_prompt=SYSTEM, settings=GREEDY)
    chunks = list(gen)
    assert chunks == ["The", " capital", " of", " France", " is", " Paris", "."]
    result = gen.result
    # llama.cpp counts the end-of-sequence token among the 8 completion tokens.
    assert (result.text, result.prompt_tokens, result.completion_tokens) == (
        "The capital of France is Paris.", 27, 8)  # fmt: skip
    assert (result.dropped_turns, result.finish, result.context_length) == (0, "stop", 4096)
    status = host.status()
    assert (status.phase, status.architecture, status.n_gpu_layers) == ("ready", "llama", 0)
    assert (status.runs_in, status.capacity) == ("server", 4)
    assert status.detail.startswith("chat template from the GGUF; 4 parallel slots")


def test_default_context_is_capped(demo_model: Path) -> None:
    assert gguf_facts(demo_model) == (8192, 2 * 30 * 64 * 3 * 2, True)


def test_switch_between_two_models_and_template_less_fallback(
    library: Library, demo_model: Path, base_gguf: Path
) -> None:
    host = Host(library)  # with the spare worker, as the app runs
    try:
        chat_model = register_demo(library, demo_model, "chat")
        base_model = library.register(base_gguf, external=True, name="base").entry.id
        first = host.chat(chat_model, FRANCE, system_prompt=SYSTEM, settings=GREEDY)
        assert "".join(first) == "The capital of France is Paris."
        first_pid = host.worker_pids()[0]
        gen = host.chat(base_model, FRANCE, settings={**GREEDY, "max_tokens": 24})
        text = "".join(gen)
        assert text.strip(), "a template-less GGUF must still answer"
        assert "User:" not in text
        assert gen.result.completion_tokens > 0
        status = host.status()
        assert status.model_id == base_model
        assert status.detail.startswith("no chat template in the GGUF: plain-transcript fallback")
        assert not pid_alive(first_pid)
        again = host.chat(chat_model, FRANCE, system_prompt=SYSTEM, settings=GREEDY)
        assert "".join(again) == "The capital of France is Paris."
    finally:
        host.shutdown()


def test_cancel_during_a_long_reply(host: Host, library: Library, demo_model: Path) -> None:
    model = register_demo(library, demo_model)
    story = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]
    gen = host.chat(model, story, settings={**GREEDY, "max_tokens": 2000})
    received = []
    for text in gen:
        received.append(text)
        if len(received) == 20:
            started = time.monotonic()
            gen.cancel()
    assert time.monotonic() - started < 0.5
    assert gen.result.stopped and gen.result.text == "".join(received)
    assert 20 <= len(received) < 40
    follow = host.chat(model, FRANCE, system_prompt=SYSTEM, settings=GREEDY)
    assert "".join(follow) == "The capital of France is Paris."


def test_context_overflow_drops_oldest_turns(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"n_ctx": 256})
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Tell me fact number {i} about the sea."},
                    {"role": "assistant", "content": "The sea is large and deep. " * 3}]  # fmt: skip
    gen = host.chat(model, [*history, *FRANCE], system_prompt=SYSTEM,
                    settings={**GREEDY, "max_tokens": 64})  # fmt: skip
    text = "".join(gen)
    result = gen.result
    assert result.context_length == 256 and result.error is None and text
    assert result.dropped_turns > 0 and result.dropped_turns % 2 == 0
    assert result.prompt_tokens <= 256 - 64
    assert result.prompt_tokens + result.completion_tokens <= 256
    huge = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(ContextOverflow, match=r"context window holds 256 tokens, 128 of them"):
        list(host.chat(model, huge, settings={**GREEDY, "max_tokens": 512}))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "failed to read magic"),
        ("random", "invalid magic characters: '??m<', expected 'GGUF'"),
        ("truncated", "tensor 'output_norm.weight' data is not within the file bounds, "
                      "model is corrupted or incomplete"),
        ("half", "tensor 'blk.15.attn_output.weight' data is not within the file bounds, "
                 "model is corrupted or incomplete"),
    ],
)  # fmt: skip
def test_corrupted_files_through_the_host(
    host: Host, library: Library, demo_model: Path, kind: str, reason: str
) -> None:
    """A file registered while good and damaged later: llama.cpp's own reason is shown."""
    target = library.paths.models / f"{kind}.gguf"
    target.write_bytes(demo_model.read_bytes())
    model = library.register(target).entry.id
    target.write_bytes(DAMAGE[kind](demo_model.read_bytes()))
    with pytest.raises(ModelLoadError) as caught:
        host.load(model)
    assert str(caught.value) == (
        f"llama.cpp cannot load {kind}.gguf: {reason}. If the file was copied, copy it again "
        "from the original; otherwise the file is damaged or not a model this llama.cpp "
        "supports."
    )
    assert host.status().phase == "error" and host.worker_pids() == []
    good = register_demo(library, demo_model)
    assert "".join(host.chat(good, FRANCE, system_prompt=SYSTEM, settings=GREEDY)) == (
        "The capital of France is Paris.")  # fmt: skip


def test_forced_baseline_cpu_variant_through_the_host(
    library: Library, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable build runs on any x86-64 CPU: the SSE2-only kernels answer too, and
    the status (the Library's hardware panel, `appliance bench`) names them."""
    monkeypatch.setenv("APPLIANCE_LLAMA_CPU_VARIANT", "x64")
    host = Host(library, spare_worker=False)
    try:
        model = register_demo(library, demo_model)
        host.load(model)
        assert host.status().cpu_variant == "x64"
        assert "CPU kernels x64" in host.status().detail
        reply = "".join(host.chat(model, FRANCE, system_prompt=SYSTEM, settings=GREEDY))
        assert reply == "The capital of France is Paris."
    finally:
        host.shutdown()
