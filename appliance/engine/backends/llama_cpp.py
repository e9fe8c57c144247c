"""llama.cpp for GGUF files, through llama.cpp's own server: the default backend.

The host runs this backend in its own process (`runs_in = "server"`): `load` starts one
`llama-server` process for the model (appliance.engine.llama_server.LlamaServer), with
`parallel` slots that decode together (continuous batching), and each request gets its
own `session()`, so several requests run at once. The server process holds the model,
so a native crash or an out-of-memory kill still takes down only that process.

- The KV cache holds `parallel` x n_ctx tokens in one pool (`--kv-unified`); every
  request is fitted to n_ctx, so each slot always has room for its own.
- The prompt is the GGUF's chat template as the server renders it (/apply-template),
  counted with the model's own tokenizer (/tokenize); those exact tokens go to
  /completion with `cache_prompt`, so the server reuses the longest prefix already in a
  slot's KV cache (or its host-memory prompt cache): turn 10 of a chat does not re-read
  turns 1-9.
- A GGUF without a chat template (read from its header) gets the plain-transcript
  fallback of appliance.engine.prompt, with its stop strings; llama-server would
  otherwise apply a generic template the model was never trained on.
- llama.cpp's reason for refusing a file comes from the server's log (LlamaServer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.engine import options as opts
from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log, Message
from appliance.engine.errors import GenerationError, InvalidChat
from appliance.engine.llama_server import (
    Abort,
    LlamaClient,
    LlamaServer,
    ServerHTTPError,
    ServerLost,
    ServerOptions,
    find_binary,
    gpu_offload_available,
)
from appliance.engine.prompt import FALLBACK_STOP, render_fallback

DEFAULT_PARALLEL = 4
MAX_BATCH = 512


def gguf_facts(path: Path) -> tuple[int | None, int | None, bool | None]:
    """(trained context length, KV-cache bytes per token at f16, chat template present)
    from the GGUF header; Nones when it cannot be read (llama.cpp then says why)."""
    from appliance.errors import ModelFileError
    from appliance.hardware import kv_cache_bytes
    from appliance.library.inspect import inspect_model

    try:
        info = inspect_model(path)
    except (ModelFileError, OSError):
        return None, None, None
    meta = info.metadata
    return meta.context_length, kv_cache_bytes(meta, 1) or None, meta.chat_template


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    extra = "llama"
    completion = True
    runs_in = "server"
    crash_hint = "llama.cpp's server crashed in native code; the rest of the appliance is unharmed."

    @classmethod
    def missing_modules(cls) -> list[str]:
        return []  # no Python library: the llama-server program

    @classmethod
    def check_available(cls) -> None:
        find_binary()  # ServerUnavailable (a BackendUnavailable) says how to build it

    @classmethod
    def preload(cls) -> None:
        """Nothing to import: a server starts from scratch for each model."""

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        path = Path(spec.path)
        model_ctx, kv_bytes, template = gguf_facts(path)
        parallel = spec.options.get("parallel") or DEFAULT_PARALLEL
        n_ctx = spec.options.get("n_ctx") or opts.default_n_ctx(model_ctx, kv_bytes, parallel)
        n_threads = spec.options.get("n_threads") or opts.physical_cores()
        binary = find_binary()
        gpu = gpu_offload_available(binary) and opts.gpu_present()
        n_gpu_layers = spec.options.get("n_gpu_layers", -1 if gpu else 0)
        log(
            f"llama-server: n_ctx {n_ctx} for each of {parallel} slots, {n_threads} threads, "
            f"{n_gpu_layers} GPU layers"
        )
        options = ServerOptions(
            n_ctx=n_ctx * parallel, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
            parallel=parallel, kv_unified=True, n_batch=min(MAX_BATCH, n_ctx),
            alias=spec.entry.id, embeddings=True,
        )  # fmt: skip
        self.server = LlamaServer(path, options, binary=binary)
        self.server.start()  # ModelLoadError with llama.cpp's reason
        self.context_length = n_ctx
        self.template = template is not False  # unknown: trust the server's template
        self.parallel = parallel
        variant = self.server.cpu_backend
        how = "chat template from the GGUF" if self.template else (
            "no chat template in the GGUF: plain-transcript fallback")  # fmt: skip
        return Loaded(
            context_length=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            device="gpu" if gpu and n_gpu_layers else "cpu",
            chat_template=self.template,
            detail=f"{how}; {parallel} parallel slots"
            + (f"; CPU kernels {variant}" if variant else ""),
            parallel=parallel,
            cpu_variant=variant,
        )

    def session(self) -> LlamaSession:
        """A handle for one request (its own usage and connection)."""
        if getattr(self, "server", None) is None:
            raise GenerationError("No model is loaded.")
        return LlamaSession(self.server.client(), self.template)

    def alive(self) -> bool:
        return self.server.alive()

    def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """(one mean-pooled vector per input, prompt tokens), computed by the server."""
        try:
            body = self.server.client().embeddings(inputs)
        except ServerHTTPError as exc:
            raise InvalidChat(f"llama.cpp could not embed the input: {exc}") from None
        vectors = [item["embedding"] for item in sorted(body["data"], key=lambda d: d["index"])]
        return vectors, int((body.get("usage") or {}).get("prompt_tokens") or 0)

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()

    def kill(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop(grace_s=0)


class LlamaSession(Backend):
    """One request on a running llama-server: the Backend interface run_chat drives.

    `abort()`, from any thread, shuts its connection: llama-server then stops that
    request's generation and frees its slot at once.
    """

    name = "llama.cpp"
    extra = "llama"
    completion = True

    def __init__(self, client: LlamaClient, template: bool) -> None:
        super().__init__()
        self.client = client
        self.template = template
        self._aborted = threading.Event()
        self._abort = Abort()  # ends the stream it is passed to, from any thread

    def abort(self) -> None:
        self._aborted.set()
        self._abort.abort()

    def _prompt(self, messages: list[Message]) -> tuple[list[int], list[str]]:
        if not self.template:
            return self.client.tokenize(render_fallback(messages), add_special=True), list(
                FALLBACK_STOP)  # fmt: skip
        try:
            text = self.client.apply_template(messages)
        except ServerHTTPError as exc:
            if messages and messages[0]["role"] == "system":
                return self._prompt(_merge_system(messages))
            raise GenerationError(f"The model's chat template failed: {exc}") from None
        return self.client.tokenize(text, add_special=True), []

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._prompt(messages)[0])

    def count_text(self, text: str) -> int:
        return len(self.client.tokenize(text, add_special=True))

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(*self._prompt(messages), settings, cancel)

    def complete(
        self, text: str, settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(self.client.tokenize(text, add_special=True), [], settings,
                                cancel)  # fmt: skip

    def _stream(
        self, tokens: list[int], stop: list[str], settings: dict[str, Any],
        cancel: threading.Event,
    ) -> Iterator[str]:  # fmt: skip
        params: dict[str, Any] = {
            "n_predict": settings["max_tokens"],
            "temperature": settings["temperature"],
            "top_p": settings["top_p"],
            "top_k": settings["top_k"],
            "repeat_penalty": settings["repeat_penalty"],
            "stop": stop,
            "cache_prompt": True,
            "return_tokens": False,
        }
        if settings.get("seed", -1) >= 0:
            params["seed"] = settings["seed"]
        pieces = 0
        try:
            for chunk in self.client.completion_stream(tokens, abort=self._abort, **params):
                text = chunk.get("content") or ""
                if text:
                    pieces += 1
                    yield text
                if chunk.get("stop"):
                    self.usage.completion_tokens = int(chunk.get("tokens_predicted") or pieces)
                    self.usage.finish = "length" if chunk.get("stop_type") == "limit" else "stop"
                    return
                if cancel.is_set():
                    break
        except ServerLost:
            if not (cancel.is_set() or self._aborted.is_set()):
                raise
        self.usage.finish = "cancelled"
        self.usage.completion_tokens = pieces


def _merge_system(messages: list[Message]) -> list[Message]:
    """For templates that refuse a system role: put it before the first user message."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest
