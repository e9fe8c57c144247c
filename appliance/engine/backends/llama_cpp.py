"""llama.cpp through llama-cpp-python: the default backend for GGUF files.

- The prompt comes from the GGUF's embedded chat template (Jinja, as llama-cpp-python's
  own chat handler renders it). A GGUF without a template would make
  `create_chat_completion` fall back to the llama-2 format and stream zero tokens, so
  such models get the plain-transcript fallback of appliance.engine.prompt instead.
- llama.cpp explains why it refuses a file only in its log; the log is captured with
  `llama_cpp.llama_log_set` and its reason is put in the ModelLoadError.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.engine import options as opts
from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log, Message
from appliance.engine.errors import GenerationError, ModelLoadError
from appliance.engine.prompt import FALLBACK_STOP, render_fallback

# ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
_WARN, _CONT = 3, 5
_GENERIC = re.compile(r"failed to load model|error loading model$|^\s*$")
_PREFIX = re.compile(r"^[a-z_0-9]+: (error loading model: )?")
_CALLBACKS: list[Any] = []


class LlamaLog:
    """Keeps llama.cpp's recent warnings and errors (its log is otherwise invisible)."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=50)
        self._keep = False

    def install(self, llama_cpp: Any) -> None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            self._keep = level >= _WARN if level != _CONT else self._keep
            if self._keep:
                self.lines.append(text.decode("utf-8", "replace").strip())

        _CALLBACKS.append(callback)  # ctypes must never free it: llama.cpp keeps the pointer
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def reason(self) -> str | None:
        """llama.cpp's own explanation of the last failure, without function prefixes."""
        for line in self.lines:
            text = _PREFIX.sub("", line)
            if text and not _GENERIC.search(text):
                return text.rstrip(".")
        return None


def gguf_geometry(path: Path) -> tuple[int | None, int | None]:
    """(trained context length, KV-cache bytes per token at f16) from the GGUF header."""
    from appliance.errors import ModelFileError
    from appliance.hardware import kv_cache_bytes
    from appliance.library.inspect import inspect_model

    try:
        info = inspect_model(path)
    except (ModelFileError, OSError):
        return None, None  # llama.cpp itself then says what is wrong with the file
    return info.metadata.context_length, kv_cache_bytes(info.metadata, 1) or None


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    extra = "llama"
    modules = ("llama_cpp",)
    completion = True

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = Path(spec.path)
        llama_log = LlamaLog()
        llama_log.install(llama_cpp)
        model_ctx, kv_bytes = gguf_geometry(path)
        n_ctx = spec.options.get("n_ctx") or opts.default_n_ctx(model_ctx, kv_bytes)
        n_threads = spec.options.get("n_threads") or opts.physical_cores()
        gpu = bool(llama_cpp.llama_supports_gpu_offload()) and opts.gpu_present()
        n_gpu_layers = spec.options.get("n_gpu_layers", -1 if gpu else 0)
        log(f"llama.cpp: n_ctx {n_ctx}, {n_threads} threads, {n_gpu_layers} GPU layers")
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(512, n_ctx),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            reason = llama_log.reason() or str(exc)
            raise ModelLoadError(
                f"llama.cpp cannot load {path.name}: {reason}. If the file was copied, "
                "copy it again from the original; otherwise the file is damaged or not a "
                "model this llama.cpp supports."
            ) from None
        llm = self.llm
        template = llm.metadata.get("tokenizer.chat_template")
        eos = llm.token_eos()
        self.formatter = None
        if template:
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(llm.token_bos())
                if llm.token_bos() != -1
                else "",
                stop_token_ids=[eos],
            )
        return Loaded(
            context_length=llm.n_ctx(),
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            device="gpu" if gpu and n_gpu_layers else "cpu",
            chat_template=bool(template),
            detail="chat template from the GGUF"
            if template
            else "no chat template in the GGUF: plain-transcript fallback",
        )

    def _prompt(self, messages: list[Message]) -> tuple[list[int], list[str], Any]:
        """(prompt tokens, stop strings, stopping criteria) for these messages."""
        if self.formatter is None:
            text = render_fallback(messages)
            tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            return tokens, list(FALLBACK_STOP), None
        try:
            result = self.formatter(messages=messages)
        except Exception as exc:
            if messages and messages[0]["role"] == "system":
                return self._prompt(_merge_system(messages))
            raise GenerationError(f"The model's chat template failed: {exc}") from None
        tokens = self.llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return tokens, [s for s in stop if s], result.stopping_criteria

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._prompt(messages)[0])

    def _text_tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def count_text(self, text: str) -> int:
        return len(self._text_tokens(text))

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(*self._prompt(messages), settings, cancel)

    def complete(
        self, text: str, settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(self._text_tokens(text), [], None, settings, cancel)

    def _stream(
        self, tokens: list[int], stop: list[str], criteria: Any, settings: dict[str, Any],
        cancel: threading.Event,
    ) -> Iterator[str]:  # fmt: skip
        seed = settings.get("seed", -1)
        stream = self.llm.create_completion(
            tokens,
            max_tokens=settings["max_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            top_k=settings["top_k"],
            repeat_penalty=settings["repeat_penalty"],
            seed=seed if seed >= 0 else None,
            stop=stop,
            stopping_criteria=criteria,
            stream=True,
        )
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                if choice["text"]:
                    yield choice["text"]
                if choice.get("finish_reason"):
                    self.usage.finish = choice["finish_reason"]
                if cancel.is_set():
                    self.usage.finish = "cancelled"
                    break
        finally:
            stream.close()
            # The last token sampled is evaluated only if generation goes on.
            pending = 1 if self.usage.finish in ("length", "cancelled") else 0
            self.usage.completion_tokens = max(0, self.llm.n_tokens - len(tokens)) + pending

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def _merge_system(messages: list[Message]) -> list[Message]:
    """For templates that refuse a system role: put it before the first user message."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest
