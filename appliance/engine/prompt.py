"""Prompts: checking chat messages, the plain-text fallback, fitting history into context.

The fallback is for models without a chat template (base models, legacy GGML files): a
role-prefixed transcript that ends with "Assistant:", with "\\nUser:" as a stop string.
Any causal language model continues such a transcript sensibly, and it never produces
the silent zero-token reply llama-cpp-python gives a template-less GGUF.

Fitting counts tokens with the model's own tokenizer (the backend's `count_tokens`
renders the full prompt). When the system prompt, the history and the new message do
not fit, the oldest messages are dropped, never the system prompt, and the caller is
told how many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance import sampling
from appliance.engine.errors import ContextOverflow, InvalidChat
from appliance.roles import CHAT_ROLES

Message = dict[str, str]
FALLBACK_STOP = ("\nUser:", "\nSystem:")
_FALLBACK_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def check_messages(messages: Any) -> list[Message]:
    """Validate [{"role": "user"|"assistant", "content": str}, ...] ending with a user turn."""
    if not isinstance(messages, list) or not messages:
        raise InvalidChat("A chat needs at least one message.")
    clean: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidChat(f"Message {index} is not an object with 'role' and 'content'.")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise InvalidChat(f"Message {index} has role {role!r}; use 'user' or 'assistant'.")
        if not isinstance(content, str):
            raise InvalidChat(f"Message {index} has no text content.")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise InvalidChat("The last message must be the user's.")
    return clean


def check_completion(messages: list[Message], supported: bool, backend: str) -> None:
    """A completion (Host.chat(raw=True)) is one text, for a backend that can continue it."""
    if not supported:
        raise InvalidChat(
            f"The {backend} backend has no completion mode: it only chats. Use the chat, or "
            "load the model with llama.cpp (GGUF) or ctransformers (legacy GGML)."
        )
    if len(messages) != 1:
        raise InvalidChat("A completion takes exactly one text to continue.")


def merge_settings(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The registry's defaults with per-request overrides, checked against sampling.SETTINGS."""
    try:
        return sampling.validate({**defaults, **(overrides or {})}, "settings")
    except ValueError as exc:
        raise InvalidChat(f"Invalid setting: {exc}.") from None


def with_system(system: str | None, messages: list[Message]) -> list[Message]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def render_fallback(messages: list[Message]) -> str:
    """A role-prefixed transcript for models without a chat template."""
    lines = [f"{_FALLBACK_LABELS[m['role']]}: {m['content'].strip()}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


@dataclass
class Fitted:
    messages: list[Message]  # system first (if any), then the kept history
    dropped: int  # how many of the oldest messages were left out
    prompt_tokens: int
    max_tokens: int  # the reply budget left in the context


def reply_reserve(max_tokens: int, n_ctx: int) -> int:
    """Tokens kept free for the reply: max_tokens, but never more than half the context."""
    return max(1, min(max_tokens, n_ctx // 2))


def fit(
    system: str | None,
    messages: list[Message],
    count: Callable[[list[Message]], int],
    n_ctx: int,
    max_tokens: int,
) -> Fitted:
    """Drop the oldest messages until the prompt leaves room for the reply.

    The kept history always starts with a user message. Raises ContextOverflow when the
    system prompt and the last message alone do not fit.
    """
    budget = n_ctx - reply_reserve(max_tokens, n_ctx)
    starts = [i for i, m in enumerate(messages) if m["role"] == "user" or i == 0]
    tokens: dict[int, int] = {}

    def tokens_from(start: int) -> int:
        if start not in tokens:
            tokens[start] = count(with_system(system, messages[start:]))
        return tokens[start]

    if tokens_from(starts[-1]) > budget:
        alone = tokens_from(starts[-1])
        raise ContextOverflow(
            f"The message is too long for this model: with the system prompt it takes "
            f"{alone:,} tokens, and the context window holds {n_ctx:,} tokens, "
            f"{n_ctx - budget:,} of them kept for the reply. Shorten the message or the "
            "system prompt, lower max_tokens, or load the model with a larger context (n_ctx)."
        )
    low, high = 0, len(starts) - 1  # find the first start whose prompt fits
    while low < high:
        mid = (low + high) // 2
        if tokens_from(starts[mid]) <= budget:
            high = mid
        else:
            low = mid + 1
    start = starts[low]
    prompt_tokens = tokens_from(start)
    return Fitted(
        messages=with_system(system, messages[start:]),
        dropped=start,
        prompt_tokens=prompt_tokens,
        max_tokens=max(1, min(max_tokens, n_ctx - prompt_tokens)),
    )


def fit_whole(
    system: str | None,
    messages: list[Message],
    count: Callable[[list[Message]], int],
    n_ctx: int,
    max_tokens: int,
) -> Fitted:
    """Every message or none (the API: never a silent cut). Raises ContextOverflow with
    the token counts when the whole prompt leaves no room for the reply."""
    whole = with_system(system, messages)
    tokens = count(whole)
    budget = n_ctx - reply_reserve(max_tokens, n_ctx)
    if tokens > budget:
        raise ContextOverflow(
            f"The messages take {tokens:,} tokens with the model's chat template; its "
            f"context window holds {n_ctx:,} tokens, {n_ctx - budget:,} of them kept for the "
            f"reply, so at most {budget:,} fit. Shorten the messages, lower max_tokens, or "
            "load the model with a larger context (n_ctx)."
        )
    return Fitted(whole, 0, tokens, max(1, min(max_tokens, n_ctx - tokens)))


def fit_text(text: str, count: Callable[[str], int], n_ctx: int, max_tokens: int) -> Fitted:
    """For a completion: the text must fit whole, with room kept for the continuation."""
    prompt_tokens = count(text)
    budget = n_ctx - reply_reserve(max_tokens, n_ctx)
    if prompt_tokens > budget:
        raise ContextOverflow(
            f"The text is too long for this model: it takes {prompt_tokens:,} tokens, and "
            f"the context window holds {n_ctx:,} tokens, {n_ctx - budget:,} of them kept for "
            "the continuation. Shorten it, lower max_tokens, or load the model with a "
            "larger context (n_ctx)."
        )
    return Fitted([], 0, prompt_tokens, max(1, min(max_tokens, n_ctx - prompt_tokens)))


class StopFilter:
    """Cut a text stream at the first stop string, holding back a possible partial match."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """The part of the stream that is safe to show now."""
        if self.hit:
            return ""
        self.buffer += text
        found = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buffer, self.hit = self.buffer[: min(found)], "", True
            return out
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), keep, -1):
                if self.buffer.endswith(stop[:k]):
                    keep = k
                    break
        out = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out
