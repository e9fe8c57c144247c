"""The backend interface: load, one streaming chat method, close.

What a backend can load and which load options it takes are in the capability table
(appliance.capabilities); the class says what it needs installed (`extra`, `modules`)
and whether it can continue raw text (`completion`). A backend module stays light to
import: it imports its heavy library (llama_cpp, torch, ctransformers...) inside its
methods, so the host can check that its extra is installed without paying for the
import. Backends run only
inside the worker process (appliance.engine.worker). What `load` returns, Loaded, is
the worker protocol's event of that name (appliance.engine.protocol): the worker sends it
to the host as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.engine import prompt
from appliance.engine.errors import BackendUnavailable
from appliance.engine.protocol import Chat, Chunk, Done, Fitted, Loaded
from appliance.model_entry import ModelEntry

Log = Callable[[str], None]
Message = dict[str, str]


@dataclass
class LoadSpec:
    """What the worker needs to load one model."""

    path: str  # file or folder; for remote backends the server's base URL
    entry: ModelEntry
    options: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None


@dataclass
class Usage:
    """Filled in by `chat` as it streams."""

    completion_tokens: int = 0
    finish: str = "stop"  # stop | length | cancelled


class Backend:
    """One resident model inside the worker."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs `modules`
    modules: ClassVar[tuple[str, ...]] = ()  # heavy import names
    crash_hint: ClassVar[str] = ""  # added to the message when the worker dies loading
    completion: ClassVar[bool] = False  # complete(): continue raw text (base models)
    # Where the host runs it: "worker" (a worker process, one request at a time) or
    # "server" (in the host process, driving its own server process; see
    # appliance.engine.runners.ServerRunner).
    runs_in: ClassVar[str] = "worker"

    def __init__(self) -> None:
        self.usage = Usage()

    @classmethod
    def missing_modules(cls) -> list[str]:
        return [m for m in cls.modules if importlib.util.find_spec(m) is None]

    @classmethod
    def check_available(cls) -> None:
        """Raise BackendUnavailable naming the extra when a heavy module is missing."""
        missing = cls.missing_modules()
        if missing:
            raise BackendUnavailable(
                f"The {cls.name} backend needs the Python package(s) {', '.join(missing)}, "
                f"which are not installed. Install the '{cls.extra}' extra: "
                f"pip install 'offline-llm-switcher[{cls.extra}]'."
            )

    @classmethod
    def preload(cls) -> None:
        """Import the heavy modules now (a spare worker does this ahead of a switch)."""
        for module in cls.modules:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        """Load the model, reporting each step through log."""
        raise NotImplementedError

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of the full prompt these messages render to, generation prompt included."""
        raise NotImplementedError

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        """Stream the reply's text; stop soon after `cancel` is set; fill self.usage."""
        raise NotImplementedError

    def count_text(self, text: str) -> int:
        """Tokens of raw text, as complete() sends it (backends with `completion`)."""
        raise NotImplementedError

    def complete(
        self, text: str, settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        """Stream the model's continuation of text as it is: no template, no stop strings."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (the worker exits right after, which frees everything)."""


def run_chat(
    backend: Backend, request: Chat, context_length: int, cancel: threading.Event
) -> Iterator[Fitted | Chunk | Done]:
    """How one Chat request runs on a loaded backend: fit the prompt to the context
    (Fitted), stream the reply (Chunk...), and end with Done. The backend's usage is
    reset first; typed EngineErrors (ContextOverflow...) propagate to the caller."""
    settings = dict(request.settings)
    if request.raw:  # a completion: the text as it is
        source = request.messages[-1]["content"]
        fitted = prompt.fit_text(source, backend.count_text, context_length,
                                 settings["max_tokens"])  # fmt: skip
        stream = lambda: backend.complete(source, settings, cancel)  # noqa: E731
    else:
        fit = prompt.fit if request.truncate else prompt.fit_whole
        fitted = fit(request.system, request.messages, backend.count_tokens, context_length,
                     settings["max_tokens"])  # fmt: skip
        stream = lambda: backend.chat(fitted.messages, settings, cancel)  # noqa: E731
    yield Fitted(request.id, fitted.dropped, fitted.prompt_tokens, context_length)
    settings["max_tokens"] = fitted.max_tokens
    backend.usage = Usage()
    if not cancel.is_set():
        for text in stream():
            yield Chunk(request.id, text)
            if cancel.is_set():
                break
    finish = "cancelled" if cancel.is_set() else backend.usage.finish
    yield Done(request.id, finish, backend.usage.completion_tokens)
