"""OpenAI's wire format: reading request bodies and writing answers, errors and chunks.

Pure functions, no I/O: routes.py reads a body with `chat_request`, `completion_request`
or `embedding_request` (each raises ApiError 400 for a bad parameter, naming it) and
writes answers with the builders below. Errors always have OpenAI's shape,
`{"error": {"message", "type", "code", "param"}}`.

What is not supported is refused with a 400 that says so and why, never ignored
silently: tools and function calling (the library's models have no tool-call format the
appliance could parse reliably), images and audio (the engines here are text-only),
`n` > 1, logprobs, and `echo`/`suffix` on completions.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4
UNSUPPORTED = {
    "tools": "tools and function calling are not supported: the appliance's models have "
    "no tool-call format it can parse reliably",
    "functions": "function calling is not supported",
    "tool_choice": "tools and function calling are not supported",
    "logprobs": "logprobs are not supported",
    "top_logprobs": "logprobs are not supported",
    "audio": "audio is not supported: the engines here are text-only",
    "echo": "echo is not supported",
    "suffix": "suffix (fill-in-the-middle) is not supported",
    "best_of": "best_of is not supported",
}


class ApiError(Exception):
    """An answer with OpenAI's error shape; `headers` (Retry-After) go with it."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code,
                          "param": self.param}}  # fmt: skip


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


@dataclass
class Sampling:
    """The request's sampling parameters, as the host's chat settings."""

    settings: dict[str, Any] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatCall:
    model: str
    system: str | None
    messages: list[dict[str, str]]
    sampling: Sampling


@dataclass
class CompletionCall:
    model: str
    prompt: str
    sampling: Sampling


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    for name, why in UNSUPPORTED.items():
        harmless = (None, False, [], 0, "none", "auto") if name == "tool_choice" else (
            None, False, [], 0)  # fmt: skip
        if body.get(name) not in harmless:
            raise bad(f"{why}.", name, "unsupported_parameter")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required: the id of a model in the library (GET /v1/models).",
                  "model")  # fmt: skip
    return model


def _number(body: dict[str, Any], name: str, low: float, high: float, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"'{name}' must be a number.", name)
    if kind is int and not float(value).is_integer():
        raise bad(f"'{name}' must be a whole number.", name)
    if not low <= value <= high:
        raise bad(f"'{name}' must be between {low:g} and {high:g}, not {value}.", name)
    return kind(value)


def sampling(body: dict[str, Any]) -> Sampling:
    """temperature, top_p, max_tokens (or max_completion_tokens), seed, stop, n, stream."""
    out = Sampling()
    for name, low, high, kind in (("temperature", 0, 2, float), ("top_p", 0, 1, float),
                                  ("seed", -(2**63), 2**63 - 1, int)):  # fmt: skip
        value = _number(body, name, low, high, kind)
        if value is not None:
            out.settings[name] = value % 2**31 if name == "seed" else value
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else (
        "max_tokens")  # fmt: skip
    max_tokens = _number(body, limit, 1, 32_768, int)
    if max_tokens is not None:
        out.settings["max_tokens"] = max_tokens
    n = _number(body, "n", 1, 128, int)
    if n not in (None, 1):
        raise bad("Only n=1 is supported: send one request per reply.", "n",
                  "unsupported_parameter")  # fmt: skip
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
        or len(stop) > MAX_STOP
    ):  # fmt: skip
        raise bad(f"'stop' must be a string or a list of up to {MAX_STOP} non-empty strings.",
                  "stop")  # fmt: skip
    out.stop = list(stop or [])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false.", "stream")
    out.stream = stream
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object.", "stream_options")
    out.include_usage = bool(options.get("include_usage"))
    return out


def _text(content: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image_url", "input_image", "image"):
                raise bad("Images are not supported: the engines here are text-only.",
                          f"messages[{index}].content", "unsupported_content")  # fmt: skip
            else:
                raise bad(f"messages[{index}].content has a part of type {kind!r}; only "
                          "'text' parts are supported.", f"messages[{index}].content")  # fmt: skip
        return "".join(parts)
    raise bad(f"messages[{index}].content must be a string or a list of text parts.",
              f"messages[{index}].content")  # fmt: skip


def chat_request(body: Any) -> ChatCall:
    """A /v1/chat/completions body: system (and developer) messages become the system
    prompt; the rest must be user and assistant turns ending with the user's."""
    body = _object(body)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list.", "messages")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"messages[{index}] must be an object.", f"messages[{index}]")
        role = message.get("role")
        text = _text(message.get("content"), index)
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": text})
        elif role in ("tool", "function"):
            raise bad("Tool and function messages are not supported: " + UNSUPPORTED["tools"]
                      + ".", f"messages[{index}].role", "unsupported_parameter")  # fmt: skip
        else:
            raise bad(f"messages[{index}].role is {role!r}; use system, user or assistant.",
                      f"messages[{index}].role")  # fmt: skip
    if not turns or turns[-1]["role"] != "user":
        raise bad("The last message must be the user's.", "messages")
    return ChatCall(model, "\n\n".join(system) if system else None, turns, sampling(body))


def completion_request(body: Any) -> CompletionCall:
    body = _object(body)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' must be one non-empty string (token arrays and batches are not "
                  "supported).", "prompt")  # fmt: skip
    return CompletionCall(model, prompt, sampling(body))


def embedding_request(body: Any) -> tuple[str, list[str], str]:
    """(model, inputs, encoding_format): "float", or "base64", which the official openai
    client asks for unless told otherwise (little-endian float32, as OpenAI sends)."""
    body = _object(body)
    model = _model(body)
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(i, str) and i for i in inputs)
    ):
        raise bad("'input' must be a non-empty string or a list of non-empty strings (token "
                  "arrays are not supported).", "input")  # fmt: skip
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad("encoding_format must be 'float' or 'base64'.", "encoding_format")
    return model, inputs, encoding


def embedding_vector(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as the answer carries it: a list of floats, or base64 of float32s."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# -- answers ---------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def chat_answer(ident: str, model: str, text: str, finish: str, use: dict) -> dict[str, Any]:
    return {
        "id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish, "logprobs": None}],
        "usage": use,
    }  # fmt: skip


def chat_chunk(ident: str, model: str, delta: dict[str, Any], finish: str | None = None,
               use: dict | None = None, choices: bool = True) -> dict[str, Any]:  # fmt: skip
    chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk",
                             "created": int(time.time()), "model": model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                          "logprobs": None}] if choices else []}  # fmt: skip
    if use is not None:
        chunk["usage"] = use
    return chunk


def completion_answer(
    ident: str, model: str, text: str, finish: str | None, use: dict | None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }  # fmt: skip
    if use is not None:
        answer["usage"] = use
    return answer
