"""Generation: one chat request's handle, as the caller sees it.

Iterate it for the reply's text (it blocks while the request waits in the queue);
`position()` says how many requests are ahead; `cancel()` ends the stream at once and
keeps the partial text; `result` is set when it has ended.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.engine.errors import EngineError


@dataclass
class GenerationResult:
    text: str
    stopped: bool  # cancelled by the caller
    error: str | None
    dropped_turns: int
    prompt_tokens: int
    completion_tokens: int
    context_length: int | None
    finish: str = "stop"  # stop | length | cancelled | error


@dataclass(frozen=True)
class ChatRequest:
    """A queued request, checked and merged with the model's defaults by Host.chat."""

    model_id: str
    system: str | None
    messages: list[dict[str, str]]
    settings: dict[str, Any]
    api_key: str | None = None
    raw: bool = False  # a completion of messages[0]'s text (Host.chat)
    truncate: bool = True  # drop the oldest turns to fit (the UI); False: all or an error
    source: str = "ui"  # who asked: "ui" (a browser session or the CLI) or "api" (/v1)


_END = object()


class Generation:
    """A streamed reply. Thread-safe: the host's dispatcher fills it, a caller reads it."""

    def __init__(self, request: ChatRequest, position: Callable[[Generation], int],
                 on_cancel: Callable[[Generation], None]) -> None:  # fmt: skip
        self.request = request
        self.dropped_turns = 0
        self.prompt_tokens = 0
        self.context_length: int | None = None
        self.result: GenerationResult | None = None
        self._position = position
        self._on_cancel = on_cancel
        self._events: queue.Queue[Any] = queue.Queue()
        self._parts: list[str] = []
        self._error: EngineError | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._ended = threading.Event()

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._events.get()
            if item is _END:
                self._events.put(_END)  # a second iteration ends at once too
                if self._error is not None:
                    raise self._error
                return
            yield item

    def position(self) -> int:
        """0 while running or once ended; n when n-th in the queue."""
        return self._position(self)

    def cancel(self) -> None:
        """Stop now: the stream ends at once; the text so far is kept in result."""
        self._cancelled.set()
        self.finish(finish="cancelled")
        self._on_cancel(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the caller cancels (or the host stops) this request."""
        return self._cancelled

    @property
    def done(self) -> bool:
        return self.result is not None

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """Block until the generation has ended (without consuming the stream)."""
        self._ended.wait(timeout)
        return self.result

    # -- the dispatcher's side ------------------------------------------------------
    def emit(self, text: str) -> None:
        with self._lock:
            if self.result is None:
                self._parts.append(text)
                self._events.put(text)

    def finish(
        self, *, finish: str = "stop", error: EngineError | None = None, completion_tokens: int = 0
    ) -> None:
        with self._lock:
            if self.result is not None:
                return
            self._error = error
            self.result = GenerationResult(
                text="".join(self._parts),
                stopped=finish == "cancelled",
                error=str(error) if error else None,
                dropped_turns=self.dropped_turns,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=completion_tokens,
                context_length=self.context_length,
                finish="error" if error else finish,
            )
            self._events.put(_END)
            self._ended.set()

    def add_usage(self, completion_tokens: int) -> None:
        """Record the token count that arrives after a cancel ended the stream."""
        with self._lock:
            if self.result is not None:
                self.result.completion_tokens = completion_tokens
