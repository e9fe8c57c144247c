"""A scripted backend and helpers for host tests: real worker processes, fake models.

A fake model is a JSON file named *.gguf that tells FakeBackend what to do (a completion
streams "(continuing N words)" and then the same reply):
    reply         the text to stream, one word per chunk ("{settings}" streams the
                  request's settings and system prompt as JSON)
    delay_s       pause before each chunk
    load_delay_s  pause while loading
    abort_on_load call os.abort() while loading (a native crash)
    fail_load     raise ModelLoadError with this message
    fail_chat     raise RuntimeError while generating
    context       the context length (tokens are words here)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log
from appliance.engine.errors import ModelLoadError
from appliance.library.library import Library
from appliance.library.model_info import ModelInfo
from appliance.model_entry import ModelEntry

FAKE = "tests.engine_fakes:FakeBackend"
MISSING = "tests.engine_fakes:MissingLibraryBackend"


class FakeBackend(Backend):
    name = "fake"
    extra = "fake"
    formats = ("gguf",)
    completion = True

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        self.script = json.loads(Path(spec.path).read_text())
        log("fake: reading the script")
        time.sleep(self.script.get("load_delay_s", 0))
        if self.script.get("abort_on_load"):
            os.abort()
        if "fail_load" in self.script:
            raise ModelLoadError(self.script["fail_load"])
        return Loaded(context_length=self.script.get("context", 1000), n_threads=1,
                      n_gpu_layers=0, detail=f"pid {os.getpid()}")  # fmt: skip

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 1 for m in messages) + 1

    def chat(
        self, messages: list[dict[str, str]], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        if "fail_chat" in self.script:
            raise RuntimeError(self.script["fail_chat"])
        reply = self.script.get("reply", "hello there")
        if reply == "{settings}":
            system = messages[0]["content"] if messages[0]["role"] == "system" else None
            reply = json.dumps({"system": system, "settings": settings, "n": len(messages)})
            yield reply
            return
        for i, word in enumerate(reply.split()[: settings["max_tokens"]]):
            if cancel.is_set():
                self.usage.finish = "cancelled"
                return
            time.sleep(self.script.get("delay_s", 0))
            self.usage.completion_tokens += 1
            yield word if i == 0 else " " + word

    def count_text(self, text: str) -> int:
        return len(text.split()) + 1

    def complete(
        self, text: str, settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        """The script's reply, after "(continuing N words)" for a text of N words."""
        yield f"(continuing {len(text.split())} words)"
        yield from self.chat([{"role": "user", "content": text}], settings, cancel)


class MissingLibraryBackend(FakeBackend):
    name = "missing"
    extra = "imaginary"
    modules = ("surely_not_an_installed_module",)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_entry(path: str, **fields: Any) -> ModelEntry:
    """A registry entry for a model at path, as the host sends it to a worker."""
    name = Path(path).stem
    values = dict(id=name, name=name, path=path, external=True, format="gguf",
                  backend="llama.cpp", architecture="fake", size_bytes=1,
                  added_at="2026-01-01T00:00:00+00:00", status="present")  # fmt: skip
    return ModelEntry(**values | fields)


def add_fake_model(library: Library, name: str, **script: Any) -> str:
    """Write a fake model file into models/ and register it; return its id."""
    path = library.paths.models / f"{name}.gguf"
    path.write_text(json.dumps(script))
    info = ModelInfo(path=str(path), format="gguf", backend="llama.cpp", architecture="fake",
                     architecture_source="metadata", size_bytes=path.stat().st_size)  # fmt: skip
    return library.register(path, info=info).entry.id


def pid_alive(pid: int) -> bool:
    """Whether pid is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
