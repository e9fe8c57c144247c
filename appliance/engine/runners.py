"""Runners: the resident model as the host drives it, whatever process holds it.

- WorkerRunner: a worker process (appliance.engine.worker) running one backend
  (transformers, ctransformers, a remote server): one request at a time (`capacity` 1).
- ServerRunner: a backend that runs its own server process and serves `capacity`
  requests at once (llama.cpp's llama-server, with parallel slots). It lives in the
  host's process; the model lives in the server process, so a native crash is still
  contained there.

Both give the host the same surface: `chat(request, cancel)` yields the request's
protocol events (Fitted, Chunk..., Done or Error), `cancel(cancel)` stops that one
request from any thread, and a process that dies raises process.WorkerDied.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from appliance.engine.backends import load_target
from appliance.engine.backends.base import Backend, LoadSpec, run_chat
from appliance.engine.errors import EngineError
from appliance.engine.generation import ChatRequest
from appliance.engine.llama_server import ServerLost
from appliance.engine.protocol import Chat, ChatEvent, Error, Load, Loaded, WorkerClient, WorkerDied

__all__ = ["Runner", "ServerRunner", "WorkerDied", "WorkerRunner"]


class Runner:
    """The resident model: what was loaded, how many requests it serves at once."""

    kind = "worker"

    def __init__(self, model_id: str, target: str, options: dict[str, Any], loaded: Loaded):
        self.model_id = model_id
        self.target = target
        self.options = options
        self.loaded = loaded

    @property
    def capacity(self) -> int:
        return max(1, self.loaded.parallel)

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def chat(self, request: ChatRequest, cancel: threading.Event) -> Iterator[ChatEvent]:
        raise NotImplementedError

    def cancel(self, cancel: threading.Event) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Let it finish and exit (an unload)."""
        raise NotImplementedError

    def kill(self) -> None:
        """End it at once (a switch, or a process that misbehaves)."""
        raise NotImplementedError


class WorkerRunner(Runner):
    """A worker process: one request at a time."""

    def __init__(self, model_id: str, target: str, options: dict[str, Any], loaded: Loaded,
                 worker: WorkerClient) -> None:  # fmt: skip
        super().__init__(model_id, target, options, loaded)
        self.worker = worker

    @property
    def capacity(self) -> int:
        return 1

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def alive(self) -> bool:
        return self.worker.alive()

    def chat(self, request: ChatRequest, cancel: threading.Event) -> Iterator[ChatEvent]:
        events = self.worker.chat(request.system, request.messages, request.settings,
                                  raw=request.raw, truncate=request.truncate)  # fmt: skip
        if cancel.is_set():
            self.worker.cancel()
        return events

    def cancel(self, cancel: threading.Event) -> None:
        self.worker.cancel()

    def stop(self) -> None:
        self.worker.stop()

    def kill(self) -> None:
        self.worker.kill()


class ServerRunner(Runner):
    """A backend with `runs_in = "server"`: loaded in this process, serving many requests
    at once through per-request sessions (LlamaCppBackend.session())."""

    kind = "server"

    def __init__(self, model_id: str, target: str, options: dict[str, Any], loaded: Loaded,
                 backend: Backend) -> None:  # fmt: skip
        super().__init__(model_id, target, options, loaded)
        self.backend: Any = backend
        self._lock = threading.Lock()
        self._sessions: dict[threading.Event, Any] = {}
        self._ids = 0

    @classmethod
    def load(cls, model_id: str, request: Load, progress: Any) -> ServerRunner:
        """Start the backend's server for the model (raises its EngineError)."""
        backend = load_target(request.target)()
        spec = LoadSpec(request.path, request.entry, dict(request.options), request.api_key)
        try:
            loaded = backend.load(spec, progress)
        except BaseException:
            backend.close()
            raise
        return cls(model_id, request.target, dict(request.options), loaded, backend)

    @property
    def pid(self) -> int | None:
        return self.backend.pid

    def alive(self) -> bool:
        return self.backend.alive()

    def chat(self, request: ChatRequest, cancel: threading.Event) -> Iterator[ChatEvent]:
        with self._lock:
            self._ids += 1
            chat = Chat(self._ids, request.system, request.messages, request.settings,
                        request.raw, request.truncate)  # fmt: skip
        return self._events(chat, cancel)

    def _events(self, chat: Chat, cancel: threading.Event) -> Iterator[ChatEvent]:
        session = self.backend.session()
        with self._lock:
            self._sessions[cancel] = session
        if cancel.is_set():
            session.abort()
        try:
            yield from run_chat(session, chat, self.loaded.context_length, cancel)
        except ServerLost as exc:
            raise WorkerDied(f"llama-server: {exc.how}") from None
        except EngineError as exc:
            if not self.alive():
                raise WorkerDied(f"llama-server ended: {exc}") from None
            yield Error(chat.id, type(exc).__name__, str(exc))
        finally:
            with self._lock:
                self._sessions.pop(cancel, None)

    def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """(one vector per input, prompt tokens) from the server's /v1/embeddings."""
        try:
            return self.backend.embed(inputs)
        except ServerLost as exc:
            raise WorkerDied(f"llama-server: {exc.how}") from None

    def cancel(self, cancel: threading.Event) -> None:
        with self._lock:
            session = self._sessions.get(cancel)
        if session is not None:
            session.abort()

    def stop(self) -> None:
        self.backend.close()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.kill()
