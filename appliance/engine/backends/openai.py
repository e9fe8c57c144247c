"""Any OpenAI-compatible server on the LAN, through appliance.engine.remote.

The registry entry holds the base URL (its path) and the server's model name
(metadata.model_name); the API key comes from the vault with each load. Loading
checks that the server answers, accepts the key and offers the model. Token counts
are estimates (about 4 characters a token): the OpenAI API exposes no tokenizer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from appliance.engine import options as opts
from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log, Message
from appliance.engine.errors import RemoteServerError
from appliance.engine.remote import OpenAIClient

CHARS_PER_TOKEN = 4


class OpenAIBackend(Backend):
    name = "openai"
    extra = "core"

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        self.client = OpenAIClient(spec.path, spec.api_key)
        self.model = spec.entry.metadata.model_name or ""
        log(f"asking {self.client.base_url} for its models")
        offered = {m["id"]: m for m in self.client.models()}
        if self.model not in offered:
            names = ", ".join(sorted(offered)) or "none"
            raise RemoteServerError(
                f"The server at {self.client.base_url} has no model named {self.model!r}; it "
                f"offers: {names}."
            )
        meta = offered[self.model].get("meta") or {}
        served = meta.get("n_ctx") or meta.get("n_ctx_train") or offered[self.model].get(
            "max_model_len")  # fmt: skip
        n_ctx = spec.options.get("n_ctx") or min(served or opts.DEFAULT_CTX_CAP,
                                                 opts.DEFAULT_CTX_CAP)  # fmt: skip
        return Loaded(context_length=int(n_ctx), device="remote",
                      detail=f"{self.model} at {self.client.base_url}")  # fmt: skip

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages) + 2

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": settings["max_tokens"],
            "temperature": settings["temperature"],
            "top_p": settings["top_p"],
            "top_k": settings["top_k"],
            "repeat_penalty": settings["repeat_penalty"],
        }
        if settings.get("seed", -1) >= 0:
            body["seed"] = settings["seed"]
        for event in self.client.stream_chat(body):
            choices = event.get("choices") or [{}]
            delta = choices[0].get("delta") or {}
            text = delta.get("content")
            if text:
                self.usage.completion_tokens += 1
                yield text
            if choices[0].get("finish_reason"):
                self.usage.finish = choices[0]["finish_reason"]
            if cancel.is_set():
                self.usage.finish = "cancelled"
                return
