"""The API's request parsing, answer shapes and failure limiter (issue 13), without a server.

openai_format reads request bodies (each bad or unsupported parameter is a 400 naming
it) and writes OpenAI's shapes; ratelimit.FailureLimiter counts failed authentications
per client address, with a fake clock here.
"""

from __future__ import annotations

import array
import base64
import copy
from typing import Any

import pytest

from appliance.api import openai_format as fmt
from appliance.api.openai_format import ApiError
from appliance.api.ratelimit import FailureLimiter
from tests.vault_helpers import FakeClock

MODEL = "smollm2-135m-instruct.q4_1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def refused(parse: Any, body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(body)
    error = caught.value
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.body() == {"error": {"message": error.message, "type": error.type,
                                      "code": error.code, "param": error.param}}  # fmt: skip
    return error


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body.update(changes)
    return body


# ---- chat completions ----------------------------------------------------------------------


def test_chat_request_reads_every_supported_field() -> None:
    call = fmt.chat_request({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Capital "},
                                         {"type": "text", "text": "of France?"}]},
        ],
        "temperature": 0, "top_p": 0.5, "seed": -1, "max_tokens": 64, "stop": "Paris",
        "stream": True, "stream_options": {"include_usage": True}, "n": 1,
        "tools": [], "tool_choice": "none", "logprobs": False,
    })  # fmt: skip
    assert call.model == MODEL
    assert call.system == "Be brief.\n\nAnswer in English."
    assert call.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert call.sampling == fmt.Sampling(
        settings={"temperature": 0.0, "top_p": 0.5, "seed": 2**31 - 1, "max_tokens": 64},
        stop=["Paris"], stream=True, include_usage=True,
    )  # fmt: skip
    assert isinstance(call.sampling.settings["temperature"], float)


def test_chat_request_defaults() -> None:
    call = fmt.chat_request(CHAT)
    assert call.system is None
    assert call.sampling == fmt.Sampling(settings={}, stop=[], stream=False, include_usage=False)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    body = with_(CHAT, max_tokens=10, max_completion_tokens=20)
    assert fmt.chat_request(body).sampling.settings["max_tokens"] == 20
    body = with_(CHAT, max_tokens=10, max_completion_tokens=None)
    assert fmt.chat_request(body).sampling.settings["max_tokens"] == 10
    assert fmt.chat_request(with_(CHAT, max_tokens=5.0)).sampling.settings["max_tokens"] == 5
    error = refused(fmt.chat_request, with_(CHAT, max_completion_tokens=0))
    assert error.param == "max_completion_tokens"


def test_seed_maps_into_31_bits() -> None:
    assert fmt.chat_request(with_(CHAT, seed=42)).sampling.settings["seed"] == 42
    assert fmt.chat_request(with_(CHAT, seed=2**40 + 7)).sampling.settings["seed"] == 7


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"model": None}, "model", None),
        ({"model": ""}, "model", None),
        ({"messages": []}, "messages", None),
        ({"messages": "Hi"}, "messages", None),
        ({"messages": ["Hi"]}, "messages[0]", None),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role", None),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"}]},
         "messages[1].role", "unsupported_parameter"),
        ({"messages": [{"role": "function", "content": "{}"}]}, "messages[0].role",
         "unsupported_parameter"),
        ({"messages": [{"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello"}]}, "messages", None),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages", None),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content", None),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", None),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         "messages[0].content", "unsupported_content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content", None),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"audio": {"voice": "alloy"}}, "audio", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"n": 0}, "n", None),
        ({"temperature": 2.5}, "temperature", None),
        ({"temperature": -0.1}, "temperature", None),
        ({"temperature": "hot"}, "temperature", None),
        ({"temperature": True}, "temperature", None),
        ({"top_p": 1.5}, "top_p", None),
        ({"seed": 1.5}, "seed", None),
        ({"max_tokens": 0}, "max_tokens", None),
        ({"max_tokens": 2.5}, "max_tokens", None),
        ({"max_tokens": 40_000}, "max_tokens", None),
        ({"stop": 3}, "stop", None),
        ({"stop": [""]}, "stop", None),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({"stream": "yes"}, "stream", None),
        ({"stream_options": "usage"}, "stream_options", None),
    ],
)  # fmt: skip
def test_chat_request_refuses(changes: dict[str, Any], param: str, code: str | None) -> None:
    error = refused(fmt.chat_request, with_(CHAT, **changes))
    assert (error.param, error.code) == (param, code), error.message


def test_unsupported_says_why() -> None:
    error = refused(fmt.chat_request, with_(CHAT, tools=[{"type": "function"}]))
    assert "tool-call format" in error.message
    error = refused(fmt.chat_request, with_(CHAT, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]))  # fmt: skip
    assert error.message == "Images are not supported: the engines here are text-only."


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_body_must_be_an_object(body: Any) -> None:
    for parse in (fmt.chat_request, fmt.completion_request, fmt.embedding_request):
        error = refused(parse, body)
        assert error.message == "The request body must be a JSON object." and error.param is None


# ---- completions ---------------------------------------------------------------------------


def test_completion_request() -> None:
    call = fmt.completion_request({"model": MODEL, "prompt": "Once upon", "max_tokens": 8,
                                   "stop": ["\n"], "temperature": 0})  # fmt: skip
    assert (call.model, call.prompt) == (MODEL, "Once upon")
    assert call.sampling.settings == {"temperature": 0.0, "max_tokens": 8}
    assert call.sampling.stop == ["\n"]
    assert fmt.completion_request({"model": MODEL, "prompt": ["Once"]}).prompt == "Once"


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"prompt": ""}, "prompt", None),
        ({"prompt": None}, "prompt", None),
        ({"prompt": ["a", "b"]}, "prompt", None),
        ({"prompt": [1, 2, 3]}, "prompt", None),
        ({"prompt": [[1, 2]]}, "prompt", None),
        ({"model": 5}, "model", None),
        ({"echo": True}, "echo", "unsupported_parameter"),
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"best_of": 2}, "best_of", "unsupported_parameter"),
        ({"n": 3}, "n", "unsupported_parameter"),
        ({"top_p": -1}, "top_p", None),
    ],
)  # fmt: skip
def test_completion_request_refuses(changes: dict[str, Any], param: str, code: str | None) -> None:
    body = with_({"model": MODEL, "prompt": "Once upon"}, **changes)
    error = refused(fmt.completion_request, body)
    assert (error.param, error.code) == (param, code), error.message


# ---- embeddings ----------------------------------------------------------------------------


def test_embedding_request() -> None:
    assert fmt.embedding_request({"model": MODEL, "input": "a cat"}) == (MODEL, ["a cat"], "float")
    assert fmt.embedding_request({"model": MODEL, "input": ["a", "b"], "encoding_format": "float"}
                                 ) == (MODEL, ["a", "b"], "float")  # fmt: skip
    # what the official client sends when the caller does not choose
    assert fmt.embedding_request({"model": MODEL, "input": "x", "encoding_format": "base64"})[
        2] == "base64"  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "param"),
    [({"input": ""}, "input"), ({"input": []}, "input"), ({"input": ["a", ""]}, "input"),
     ({"input": [[1, 2, 3]]}, "input"), ({"input": None}, "input"), ({"model": None}, "model"),
     ({"encoding_format": "int8"}, "encoding_format")],
)  # fmt: skip
def test_embedding_request_refuses(changes: dict[str, Any], param: str) -> None:
    error = refused(fmt.embedding_request, with_({"model": MODEL, "input": "a cat"}, **changes))
    assert error.param == param, error.message


def test_embedding_vector_encodings() -> None:
    vector = [0.5, -1.25, 3.0]
    assert fmt.embedding_vector(vector, "float") is vector
    encoded = fmt.embedding_vector(vector, "base64")
    assert isinstance(encoded, str)
    assert array.array("f", base64.b64decode(encoded)).tolist() == vector  # as the client reads


# ---- answers -------------------------------------------------------------------------------


def test_answer_shapes() -> None:
    use = fmt.usage(27, 8)
    assert use == {"prompt_tokens": 27, "completion_tokens": 8, "total_tokens": 35}
    answer = fmt.chat_answer("chatcmpl-1", MODEL, "Paris.", "stop", use)
    assert answer["object"] == "chat.completion" and answer["usage"] == use
    assert answer["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": "Paris."}}]  # fmt: skip
    chunk = fmt.chat_chunk("chatcmpl-1", MODEL, {"content": "Pa"})
    assert chunk["object"] == "chat.completion.chunk" and "usage" not in chunk
    assert chunk["choices"][0]["delta"] == {"content": "Pa"}
    last = fmt.chat_chunk("chatcmpl-1", MODEL, {}, use=use, choices=False)
    assert last["choices"] == [] and last["usage"] == use
    done = fmt.completion_answer("cmpl-1", MODEL, " Paris", "length", None)
    assert done["object"] == "text_completion" and "usage" not in done
    assert (done["choices"][0]["text"], done["choices"][0]["finish_reason"]) == (" Paris", "length")
    assert fmt.new_id("chatcmpl") != fmt.new_id("chatcmpl")
    assert fmt.new_id("cmpl").startswith("cmpl-")


# ---- the failure limiter -------------------------------------------------------------------


def limiter(clock: FakeClock, **kwargs: Any) -> FailureLimiter:
    settings = {"allowed": 3, "window_s": 60.0, "block_s": 30.0, "max_block_s": 100.0}
    return FailureLimiter(clock=clock, **{**settings, **kwargs})


def test_blocks_after_allowed_failures_and_expires() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    assert lim.retry_after("10.0.0.1") == 0
    assert [lim.failed("10.0.0.1") for _ in range(2)] == [0, 0]
    assert lim.retry_after("10.0.0.1") == 0
    assert lim.failed("10.0.0.1") == 30  # the third failure blocks
    assert lim.retry_after("10.0.0.1") == 30
    clock.advance(10.5)
    assert lim.retry_after("10.0.0.1") == 20  # rounded up
    clock.advance(19.5)
    assert lim.retry_after("10.0.0.1") == 0


def test_addresses_are_counted_apart() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(3):
        lim.failed("10.0.0.66")  # a flood from one address
    assert lim.retry_after("10.0.0.66") == 30
    assert lim.retry_after("10.0.0.7") == 0  # another address is not slowed down
    assert [lim.failed("10.0.0.7") for _ in range(2)] == [0, 0]
    assert lim.retry_after("10.0.0.7") == 0 and lim.retry_after("10.0.0.66") == 30


def test_blocks_double_up_to_the_cap() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    blocks = []
    for _ in range(4):
        for _ in range(2):
            assert lim.failed("a") == 0
        blocks.append(lim.failed("a"))
        clock.advance(blocks[-1])
        assert lim.retry_after("a") == 0
    assert blocks == [30, 60, 100, 100]


def test_failures_outside_the_window_do_not_count() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(5):
        assert lim.failed("a") == 0
        clock.advance(30.1)  # at most two failures within any 60 s
    assert lim.retry_after("a") == 0


def test_success_resets_the_count_and_the_doubling() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(3):
        lim.failed("a")
    clock.advance(30)
    lim.failed("a")
    lim.failed("a")
    lim.succeeded("a")
    assert lim.failed("a") == 0 and lim.failed("a") == 0  # the two before were forgotten
    assert lim.failed("a") == 30  # not 60: the doubling started over


def test_a_full_table_forgets_idle_addresses_not_blocked_ones() -> None:
    clock = FakeClock()
    lim = limiter(clock, allowed=2, block_s=300.0, max_block_s=300.0, max_clients=2)
    lim.failed("blocked")
    assert lim.failed("blocked") == 300
    lim.failed("idle")
    clock.advance(61)  # idle's one failure leaves the window
    lim.failed("new")
    assert lim.retry_after("blocked") == 239  # kept, still blocked
    assert lim.failed("new") == 300  # counted from its first failure
