"""ctransformers, for legacy GGML .bin files (and GGUF v1/v2 llama-family files).

ctransformers 0.2.27 (its last release, 2023) bundles an old llama.cpp: it fails on
every current GGUF file, hides the reason ("Failed to create LLM"), and crashes the
interpreter on some damaged files. So it runs only inside the worker process, and any
failure, raised or a crash, becomes an error naming what it can load and suggesting the
llama.cpp backend. Prompts use the plain-transcript fallback: GGML files carry no
chat template.

Three faults of ctransformers' Python layer are worked around here:
- gpt2-layout files (gpt2, starcoder) keep the context length written in their header
  whatever `context_length` asks for, so the backend reports the model's real window
  (`llm.context_length`), never the requested one.
- `LLM.tokenize` sizes its output buffer by characters, not bytes: non-ASCII text
  overflows it (heap corruption) and comes back truncated. The backend calls the native
  tokenizer with a buffer of one token per byte, plus BOS.
- The gpt2-family sampler sorts `top_k` entries without clamping to the vocabulary, so a
  top_k above it (0 = "no limit" here) crashes the process. top_k is clamped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.engine import options as opts
from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log, Message
from appliance.engine.errors import ModelLoadError
from appliance.engine.prompt import FALLBACK_STOP, StopFilter, render_fallback

SUPPORTED = (
    "ctransformers loads only legacy GGML .bin files (ggml, ggmf, ggjt) and GGUF v1/v2 "
    "files, of the model types llama, gpt2, gptj, gpt_neox, falcon, mpt, starcoder, "
    "dolly-v2 and replit"
)
SUGGESTION = (
    "For a GGUF file, use the llama.cpp backend instead "
    "(`appliance models add PATH --backend llama.cpp`, or pick it in the library)."
)
# The registry's architecture -> ctransformers' model_type.
MODEL_TYPES = {
    "llama": "llama", "mistral": "llama", "gpt2": "gpt2", "gptj": "gptj",
    "gpt_neox": "gpt_neox", "gptneox": "gpt_neox", "falcon": "falcon", "mpt": "mpt",
    "starcoder": "starcoder", "dolly-v2": "dolly-v2", "replit": "replit",
}  # fmt: skip
LEGACY_CTX = 2048


@contextlib.contextmanager
def native_stderr(lines: list[str]) -> Iterator[None]:
    """Collect what native code writes to file descriptor 2 (ctransformers' only log)."""
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 4096), b""))
    )
    reader.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        reader.join()
        os.close(read_fd)
        lines.extend(b"".join(chunks).decode("utf-8", "replace").splitlines())


class CTransformersBackend(Backend):
    name = "ctransformers"
    extra = "legacy"
    modules = ("ctransformers",)
    crash_hint = f"{SUPPORTED}. {SUGGESTION}"
    completion = True

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        from ctransformers import AutoModelForCausalLM

        path = Path(spec.path)
        arch = spec.entry.architecture
        model_type = MODEL_TYPES.get(arch)
        if model_type is None:
            raise ModelLoadError(
                f"ctransformers cannot load {path.name}: its architecture {arch!r} is not one "
                f"it knows. {SUPPORTED}. {SUGGESTION}"
            )
        n_ctx = spec.options.get("n_ctx") or spec.entry.metadata.context_length or LEGACY_CTX
        self.threads = spec.options.get("n_threads") or opts.physical_cores()
        log(f"ctransformers: model type {model_type}, n_ctx {n_ctx}, {self.threads} threads")
        native: list[str] = []
        try:
            with native_stderr(native):
                self.llm = AutoModelForCausalLM.from_pretrained(
                    str(path), model_type=model_type, local_files_only=True,
                    context_length=n_ctx, threads=self.threads, gpu_layers=0,
                )  # fmt: skip
        except Exception:
            reason = next((line for line in native if "error" in line.lower()), None)
            why = f": {reason.split(': ', 1)[-1]}" if reason else ""
            raise ModelLoadError(
                f"ctransformers cannot load {path.name}{why}. {SUPPORTED}. {SUGGESTION}"
            ) from None
        self.add_bos = model_type == "llama"  # as ctransformers' own tokenize decides
        context = self.llm.context_length
        if context != n_ctx:
            log(f"ctransformers: {path.name} fixes its context at {context} tokens")
        detail = "legacy GGML: plain-transcript prompt"
        return Loaded(context, self.threads, 0, chat_template=False, detail=detail)

    def tokenize(self, text: str) -> list[int]:
        """The native tokenizer with an output buffer that fits (see the module docstring):
        every token covers at least one byte of the text."""
        raw = text.encode()
        buffer = (ctypes.c_int * (len(raw) + 1))()
        count = self.llm.ctransformers_llm_tokenize(raw, self.add_bos, buffer)
        return buffer[:count]

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(render_fallback(messages)))

    def count_text(self, text: str) -> int:
        return len(self.tokenize(text))

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(render_fallback(messages), FALLBACK_STOP, settings, cancel)

    def complete(
        self, text: str, settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        yield from self._stream(text, (), settings, cancel)

    def _stream(
        self, source: str, stop: tuple[str, ...], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        tokens = self.tokenize(source)
        vocab = self.llm.vocab_size
        top_k = min(settings["top_k"] or vocab, vocab)
        seed = settings.get("seed", -1)
        stops = StopFilter(stop)
        generated: list[int] = []
        shown = ""
        for token in self.llm.generate(
            tokens, top_k=top_k, top_p=settings["top_p"],
            temperature=settings["temperature"] or 1e-6,
            repetition_penalty=settings["repeat_penalty"], seed=seed,
            threads=self.threads, reset=True,
        ):  # fmt: skip
            if cancel.is_set():
                self.usage.finish = "cancelled"
                break
            if self.llm.is_eos_token(token):
                break
            generated.append(token)
            text = self.llm.detokenize(generated)
            out = stops.feed(text[len(shown) :])
            shown = text
            if out:
                yield out
            if stops.hit:
                break
            if len(generated) >= settings["max_tokens"]:
                self.usage.finish = "length"
                break
        tail = stops.flush()
        if tail:
            yield tail
        self.usage.completion_tokens = len(generated)
