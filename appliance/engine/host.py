"""The host: the one resident model, in the style of ollama's scheduler.

- One model is resident at a time, in a worker subprocess that the host speaks to only
  through protocol.WorkerClient (load -> Loaded, chat -> events, cancel). Switching
  stops the old worker, so its memory really returns to the system, and a native crash
  takes down only the worker.
- Chat requests from every browser session go through one bounded queue served by a
  dispatcher thread: a caller can read its position, and a full queue raises
  EngineBusy at once instead of hanging.
- A keep-alive timer unloads the model after `keep_alive_s` idle (0 = never).
- A pre-started spare worker, with the backend's library already imported, takes the
  next load, so a switch costs little more than the raw load.
- The worker factory, the clock and the backend table are injected, so the host is
  tested with fake backends and a fake clock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.engine import backends as backend_table
from appliance.engine import prompt
from appliance.engine.errors import EngineBusy, EngineError, ModelLoadError, WorkerCrashed
from appliance.engine.generation import ChatRequest, Generation
from appliance.engine.options import check_options
from appliance.engine.protocol import (
    Chunk,
    Done,
    Error,
    Fitted,
    Load,
    Loaded,
    WorkerClient,
    WorkerDied,
)
from appliance.errors import ApplianceError
from appliance.library.library import Library
from appliance.model_entry import ModelEntry

PHASES = ("idle", "loading", "ready", "generating", "unloading", "error")
WorkerFactory = Callable[[str | None], WorkerClient]
Progress = Callable[[str], None]


@dataclass
class HostStatus:
    model_id: str | None = None
    name: str | None = None
    backend: str | None = None
    architecture: str | None = None
    phase: str = "idle"
    detail: str = ""
    context_length: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None


@dataclass
class _Resident:
    model_id: str
    target: str
    options: dict[str, Any]
    worker: WorkerClient


class Host:
    """Loads, switches and unloads models and serves chat requests one at a time."""

    def __init__(
        self,
        library: Library,
        *,
        keep_alive_s: float = 1800,
        queue_size: int = 4,
        clock: Callable[[], float] = time.monotonic,
        worker_factory: WorkerFactory | None = None,
        backends: Mapping[str, str] | None = None,
        spare_worker: bool = True,
        idle_poll_s: float = 5.0,
    ) -> None:
        self.library = library
        self.keep_alive_s = keep_alive_s
        self.queue_size = queue_size
        self.clock = clock
        self.worker_factory: WorkerFactory = worker_factory or WorkerClient
        self.backends = dict(backends or {})
        self.spare_worker = spare_worker
        self._status = HostStatus()
        self._resident: _Resident | None = None
        self._spare: WorkerClient | None = None
        self._last_used = clock()
        self._cond = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._running: Generation | None = None
        self._run_lock = threading.RLock()  # held while a thread drives the worker
        self._closed = False
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._dispatch, daemon=True, name="host-dispatch"),
            threading.Thread(
                target=self._janitor, args=(idle_poll_s,), daemon=True, name="host-idle"
            ),
        ]
        for thread in self._threads:
            thread.start()

    # -- public API -----------------------------------------------------------------
    def status(self) -> HostStatus:
        with self._cond:
            return replace(self._status)

    def load(
        self,
        model_id: str,
        *,
        api_key: str | None = None,
        options: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> HostStatus:
        """Make model_id the resident model (blocks); a switch frees the previous one.

        options: the load options its backend takes (appliance.capabilities), checked;
        those only other backends take are left out.
        """
        entry = self.library.get(model_id)
        options = check_options(entry.backend, options)
        with self._run_lock:
            self._ensure_loaded(entry, api_key, options, progress)
            self._last_used = self.clock()
        return self.status()

    def unload(self) -> None:
        """Stop the resident worker (and the spare): their memory returns to the system."""
        with self._run_lock:
            self._retire(None)
            self._stop_spare()
            self._set(HostStatus())

    def shutdown(self) -> None:
        """Refuse new requests, end the waiting ones, stop every worker."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            running = self._running
            self._cond.notify_all()
        self._stop.set()
        for gen in waiting:
            gen.finish(error=EngineError("The engine was shut down before this request ran."))
        if running is not None:
            running.cancel()
        self.unload()

    def chat(
        self,
        model_id: str,
        messages: list[dict[str, str]],
        *,
        system_prompt: str | None = None,
        settings: dict[str, Any] | None = None,
        api_key: str | None = None,
        raw: bool = False,
    ) -> Generation:
        """Queue a chat request and return its Generation (EngineBusy when the queue is full).

        raw: a completion. The one message's text goes to the model as it is (no chat
        template, no system prompt) and the model continues it; see supports_completion.
        """
        entry = self.library.get(model_id)
        clean = prompt.check_messages(messages)
        merged = prompt.merge_settings(dict(entry.defaults), settings)
        system = merged.pop("system_prompt")
        system = system if system_prompt is None else system_prompt
        backend = backend_table.load_target(self._target(entry.backend))
        backend.check_available()
        if raw:
            prompt.check_completion(clean, backend.completion, entry.backend)
        request = ChatRequest(model_id, None if raw else system or None, clean, merged, api_key,
                              raw)  # fmt: skip
        with self._cond:
            if self._closed:
                raise EngineError("The engine has been shut down.")
            if len(self._waiting) >= self.queue_size:
                raise EngineBusy(
                    f"The engine is busy: {len(self._waiting)} requests are already waiting "
                    "(the most it queues). Try again when a reply has finished."
                )
            gen = Generation(request, self._position, self._cancel)
            self._waiting.append(gen)
            self._cond.notify_all()
        return gen

    def supports_completion(self, model_id: str) -> bool:
        """Whether the model's backend can continue raw text (chat(..., raw=True))."""
        entry = self.library.get(model_id)
        return backend_table.load_target(self._target(entry.backend)).completion

    def check_idle(self) -> bool:
        """Unload the resident model if it has been idle for keep_alive_s; True if it did."""
        if self.keep_alive_s <= 0:
            return False
        with self._cond:
            if self._running is not None or self._waiting or self._resident is None:
                return False
        if self.clock() - self._last_used < self.keep_alive_s:
            return False
        if not self._run_lock.acquire(blocking=False):
            return False
        try:
            with self._cond:
                if self._running is not None or self._waiting or self._resident is None:
                    return False
            self.unload()
            self._set(HostStatus(detail="unloaded after the keep-alive"))
            return True
        finally:
            self._run_lock.release()

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (resident first, then the spare)."""
        workers = [self._resident.worker if self._resident else None, self._spare]
        return [w.pid for w in workers if w is not None and w.alive()]

    # -- queue ------------------------------------------------------------------------
    def _position(self, gen: Generation) -> int:
        with self._cond:
            try:
                return self._waiting.index(gen) + 1
            except ValueError:
                return 0

    def _cancel(self, gen: Generation) -> None:
        """Drop gen from the queue, or stop it in the worker if it is running.

        The dispatcher checks gen.cancelled after its chat is in flight, so a cancel
        that comes while the model is still loading is not lost either.
        """
        with self._cond:
            with contextlib.suppress(ValueError):
                self._waiting.remove(gen)
            running = self._running is gen
            self._cond.notify_all()
        resident = self._resident
        if running and resident is not None:
            resident.worker.cancel()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                gen = self._waiting.popleft()
                self._running = gen
            try:
                with self._run_lock:
                    self._serve(gen)
            except Exception as exc:
                gen.finish(error=EngineError(f"Internal error in the engine: {exc!r}"))
            finally:
                with self._cond:
                    self._running = None
                    self._last_used = self.clock()
                    self._cond.notify_all()

    def _janitor(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            with contextlib.suppress(Exception):
                self.check_idle()

    # -- serving one request ----------------------------------------------------------
    def _serve(self, gen: Generation) -> None:
        request = gen.request
        if gen.cancelled:
            return
        try:
            entry = self.library.get(request.model_id)
            self._ensure_loaded(entry, request.api_key, None, None)
        except ApplianceError as exc:
            gen.finish(error=exc if isinstance(exc, EngineError) else ModelLoadError(str(exc)))
            return
        resident = self._resident
        assert resident is not None
        self._set_phase("generating")
        try:
            events = resident.worker.chat(request.system, request.messages, request.settings,
                                          raw=request.raw)  # fmt: skip
            if gen.cancelled:
                resident.worker.cancel()
            for event in events:
                self._apply(gen, event)
        except WorkerDied as exc:
            name = self._status.name or request.model_id
            self._forget_worker(f"the worker died: {exc}")
            gen.finish(error=WorkerCrashed(
                f"The worker running {name} died ({exc}) while generating; the partial reply "
                "is kept. The next message reloads the model."
            ))  # fmt: skip
            return
        self._set_phase("ready")

    @staticmethod
    def _apply(gen: Generation, event: Chunk | Fitted | Done | Error) -> None:
        """Pass one of the worker's chat events on to the caller's Generation."""
        if isinstance(event, Chunk):
            gen.emit(event.text)
        elif isinstance(event, Fitted):
            gen.dropped_turns = event.dropped
            gen.prompt_tokens = event.prompt_tokens
            gen.context_length = event.context_length
        elif isinstance(event, Done):
            gen.finish(finish=event.finish, completion_tokens=event.completion_tokens)
            gen.add_usage(event.completion_tokens)  # when a cancel ended the stream first
        elif isinstance(event, Error):
            gen.finish(error=event.exception())

    # -- loading ----------------------------------------------------------------------
    def _target(self, backend: str) -> str:
        return self.backends.get(backend) or backend_table.backend_target(backend)

    def _ensure_loaded(
        self,
        entry: ModelEntry,
        api_key: str | None,
        options: dict[str, Any] | None,
        progress: Progress | None,
    ) -> None:
        model_id = entry.id
        resident = self._resident
        same = resident is not None and resident.model_id == model_id
        if same and resident.worker.alive() and options in (None, resident.options):
            return
        say = progress or (lambda _text: None)
        target = self._target(entry.backend)
        backend_table.load_target(target).check_available()
        path = entry.path if entry.is_remote else str(self.library.resolve(entry))
        if not entry.is_remote and not Path(path).exists():
            raise ModelLoadError(
                f"Cannot load {entry.name}: {path} is missing. Put the file back, or "
                "remove the model from the library."
            )
        if resident is not None:
            say(f"unloading {self._status.name}")
            self._retire(f"switching to {entry.name}")
        self._set(HostStatus(model_id=model_id, name=entry.name, backend=entry.backend,
                             architecture=entry.architecture, phase="loading",
                             detail="starting the worker"))  # fmt: skip
        say(f"loading {entry.name}")
        worker = self._take_worker(target)
        try:
            loaded = self._load_in(worker, Load(target, path, entry, options or {}, api_key), say)
        except BaseException:
            worker.kill()
            raise
        self._resident = _Resident(model_id, target, options or {}, worker)
        self._set(HostStatus(
            model_id=model_id, name=entry.name, backend=entry.backend,
            architecture=entry.architecture, phase="ready", detail=loaded.detail,
            context_length=loaded.context_length, n_threads=loaded.n_threads,
            n_gpu_layers=loaded.n_gpu_layers,
        ))  # fmt: skip
        say("ready")
        self._start_spare(target)

    def _load_in(self, worker: WorkerClient, request: Load, say: Progress) -> Loaded:
        def progress(text: str) -> None:
            self._set_detail(text)
            say(text)

        try:
            return worker.load(request, progress)
        except EngineError as error:  # the backend refused the model
            self._set(HostStatus(phase="error", detail=str(error)))
            raise
        except WorkerDied as exc:
            hint = backend_table.load_target(request.target).crash_hint
            error = ModelLoadError(
                f"Cannot load {request.entry.name} ({request.path}): the worker process "
                f"crashed while loading it ({exc}).{' ' + hint if hint else ''}"
            )
            self._set(HostStatus(phase="error", detail=str(error)))
            raise error from None

    def _take_worker(self, target: str) -> WorkerClient:
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive() and spare.preload == target:
            return spare
        if spare is not None:
            spare.kill()
        return self.worker_factory(target)

    def _start_spare(self, target: str) -> None:
        if self.spare_worker and self._spare is None:
            self._spare = self.worker_factory(target)

    def _stop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.stop()

    def _retire(self, why: str | None) -> None:
        """Stop the resident worker: killed at once on a switch (it holds nothing to save,
        and the kernel frees its memory immediately), asked to exit on an unload."""
        resident, self._resident = self._resident, None
        if resident is None:
            return
        self._set_phase("unloading", why or "unloading")
        if why is None:
            resident.worker.stop()
        else:
            resident.worker.kill()

    def _forget_worker(self, why: str) -> None:
        resident, self._resident = self._resident, None
        if resident is not None:
            resident.worker.kill()
        with self._cond:
            self._status = replace(self._status, phase="error", detail=why)

    # -- status -----------------------------------------------------------------------
    def _set(self, status: HostStatus) -> None:
        with self._cond:
            self._status = status

    def _set_phase(self, phase: str, detail: str | None = None) -> None:
        with self._cond:
            kept = self._status.detail if detail is None else detail
            self._status = replace(self._status, phase=phase, detail=kept)

    def _set_detail(self, detail: str) -> None:
        with self._cond:
            self._status = replace(self._status, detail=detail)
