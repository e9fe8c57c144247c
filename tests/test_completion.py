"""Completion mode (issue 10.9): Host.chat(raw=True) sends one text as it is, no template.

With the scripted fake backend for the engine's rules, and with the real demo model for
what llama.cpp receives: the text's own tokens, not a chat template around them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Host
from appliance.engine.errors import ContextOverflow, InvalidChat
from appliance.library.library import Library
from tests.engine_fakes import FAKE, MISSING, add_fake_model


@pytest.fixture
def fake_host(library: Library) -> Iterator[Host]:
    host = Host(library, backends={"llama.cpp": FAKE, "ctransformers": MISSING},
                spare_worker=False)  # fmt: skip
    yield host
    host.shutdown()


def test_a_completion_streams_the_continuation(fake_host: Host, library: Library) -> None:
    model = add_fake_model(library, "base", reply="Paris, of course.")
    assert fake_host.supports_completion(model)
    gen = fake_host.chat(model, [{"role": "user", "content": "The capital of France is"}],
                         system_prompt="ignored in a completion", raw=True)  # fmt: skip
    assert "".join(gen) == "(continuing 5 words)Paris, of course."
    assert gen.request.system is None
    assert gen.result.prompt_tokens == 6  # the fake counts words + 1
    assert gen.result.finish == "stop"


def test_a_completion_is_one_text_for_a_backend_that_can(fake_host, library: Library) -> None:
    model = add_fake_model(library, "base")
    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
           {"role": "user", "content": "c"}]  # fmt: skip
    with pytest.raises(InvalidChat, match="^A completion takes exactly one text to continue.$"):
        fake_host.chat(model, two, raw=True)
    openai = library.add_remote("http://127.0.0.1:9/v1", "remote-model")
    assert not fake_host.supports_completion(openai.id)
    with pytest.raises(InvalidChat) as refused:
        fake_host.chat(openai.id, [{"role": "user", "content": "x"}], raw=True)
    assert str(refused.value) == (
        "The openai backend has no completion mode: it only chats. Use the chat, or load "
        "the model with llama.cpp (GGUF) or ctransformers (legacy GGML)."
    )


def test_a_completion_too_long_for_the_context_is_refused(fake_host, library: Library) -> None:
    model = add_fake_model(library, "tiny", context=50)
    gen = fake_host.chat(model, [{"role": "user", "content": "word " * 60}], raw=True,
                         settings={"max_tokens": 10})  # fmt: skip
    with pytest.raises(ContextOverflow, match="^The text is too long for this model: it takes 61"):
        "".join(gen)


def test_llama_cpp_continues_the_text_itself(library: Library, demo_model: Path) -> None:
    """The prompt is the text's own tokens (BOS + text, where the model adds a BOS), not
    the chat template's: counted by the model's tokenizer in a llama-server of its own."""
    from appliance.engine.llama_server import LlamaServer, ServerOptions

    path = library.paths.models / demo_model.name
    path.hardlink_to(demo_model)
    model = library.register(path).entry.id
    host = Host(library, spare_worker=False)
    text = "The capital of France is"
    try:
        settings = {"temperature": 0.0, "seed": 42, "max_tokens": 8}
        gen = host.chat(model, [{"role": "user", "content": text}], settings=settings, raw=True)
        continuation = "".join(gen)
        chat = host.chat(model, [{"role": "user", "content": text}], settings=settings)
        "".join(chat)
    finally:
        host.shutdown()
    with LlamaServer(path, ServerOptions(n_ctx=256, parallel=1)) as vocab:
        own = vocab.client().tokenize(text, add_special=True)
    assert gen.result.prompt_tokens == len(own)
    assert chat.result.prompt_tokens > len(own) + 5  # the template's roles and markers
    assert continuation.strip() and gen.result.completion_tokens > 0
