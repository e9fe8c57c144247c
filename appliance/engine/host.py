"""The host: the one resident model, in the style of ollama's scheduler.

- One model is resident at a time, as a Runner (appliance.engine.runners) that owns its
  process: GGUF models run in llama.cpp's own server (ServerRunner, `capacity` requests
  at once over parallel slots); the other backends run in a worker subprocess spoken to
  through protocol.WorkerClient (WorkerRunner, one request at a time). Switching stops
  the old process, so its memory really returns to the system, and a native crash takes
  down only that process.
- Chat requests from every browser session go through one bounded queue. A dispatcher
  thread admits the head of the queue as soon as the resident model has a free slot
  (each admitted request streams in its own thread); a caller can read its position,
  and a full queue raises EngineBusy at once instead of hanging.
- A request for another model switches models once the old model's running requests
  are done (`switch_rule` "wait"), or stops them at once with a clear message
  ("cancel"); the same rule applies to Host.load. Stop cancels only its own request.
- A keep-alive timer unloads the model after `keep_alive_s` idle (0 = never).
- A pre-started spare worker, with the backend's library already imported, takes the
  next worker load, so a switch costs little more than the raw load.
- Load options not given (a chat that reloads after the keep-alive) come from
  `default_options()`, the app's settings.
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
from appliance.engine.errors import (
    EngineBusy,
    EngineError,
    InvalidChat,
    ModelLoadError,
    WorkerCrashed,
)
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
from appliance.engine.runners import Runner, ServerRunner, WorkerRunner
from appliance.errors import ApplianceError
from appliance.library.library import Library
from appliance.model_entry import ModelEntry

PHASES = ("idle", "loading", "ready", "generating", "unloading", "error")
SWITCH_RULES = ("wait", "cancel")
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
    capacity: int = 1  # requests the resident model generates at once
    running: int = 0  # requests generating now
    waiting: int = 0  # requests in the queue
    api_running: int = 0  # of the running requests, those from the /v1 API
    runs_in: str | None = None  # "server" (llama-server) or "worker"
    cpu_variant: str | None = None  # llama.cpp's CPU kernels, when it reports them


class Host:
    """Loads, switches and unloads models and serves chat requests, several at once
    when the resident model's runner can."""

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
        switch_rule: str = "wait",
        default_options: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.library = library
        self.keep_alive_s = keep_alive_s
        self.queue_size = queue_size
        self.clock = clock
        self.worker_factory: WorkerFactory = worker_factory or WorkerClient
        self.backends = dict(backends or {})
        self.spare_worker = spare_worker
        self.switch_rule = switch_rule
        self.default_options = default_options or dict
        self._status = HostStatus()
        self._resident: Runner | None = None
        self._spare: WorkerClient | None = None
        self._last_used = clock()
        self._cond = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._running: dict[Generation, Runner] = {}
        self._loading = False  # a load or switch is under way: admit nothing
        self._run_lock = threading.RLock()  # held while loading, switching or unloading
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

    @property
    def switch_rule(self) -> str:
        return self._switch_rule

    @switch_rule.setter
    def switch_rule(self, rule: str) -> None:
        if rule not in SWITCH_RULES:
            raise ValueError(f"switch_rule must be one of {', '.join(SWITCH_RULES)}, not {rule!r}")
        self._switch_rule = rule

    # -- public API -----------------------------------------------------------------
    def status(self) -> HostStatus:
        with self._cond:
            api = sum(1 for gen in self._running if gen.request.source == "api")
            return replace(self._status, running=len(self._running), waiting=len(self._waiting),
                           api_running=api)  # fmt: skip

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
        those only other backends take are left out. Requests still running on another
        model are waited for or stopped, as switch_rule says.
        """
        entry = self.library.get(model_id)
        options = check_options(entry.backend, options)
        with self._run_lock:
            self._ensure_loaded(entry, api_key, options, progress)
            self._last_used = self.clock()
        return self.status()

    def unload(self) -> None:
        """Stop the resident model's process (and the spare worker): their memory returns
        to the system. Requests still running are stopped with a message."""
        with self._run_lock:
            self._make_room("the model was unloaded", "cancel", None)
            self._retire(None)
            self._stop_spare()
            self._set(HostStatus())

    def shutdown(self) -> None:
        """Refuse new requests, end the waiting ones, stop every process."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            running = list(self._running)
            self._cond.notify_all()
        self._stop.set()
        for gen in waiting:
            gen.finish(error=EngineError("The engine was shut down before this request ran."))
        for gen in running:
            gen.cancel()
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
        truncate: bool = True,
        source: str = "ui",
    ) -> Generation:
        """Queue a chat request and return its Generation (EngineBusy when the queue is full).

        raw: a completion. The one message's text goes to the model as it is (no chat
        template, no system prompt) and the model continues it; see supports_completion.
        truncate: drop the oldest turns when the history does not fit (the UI); False
        raises ContextOverflow with the token counts instead (the API: never a silent cut).
        source: "ui" or "api", for the status.
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
                              raw, truncate, source)  # fmt: skip
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

    def embed(
        self, model_id: str, inputs: list[str], *, api_key: str | None = None
    ) -> tuple[list[list[float]], int]:
        """(one vector per input, prompt tokens) from a GGUF model, loading it (or
        switching to it, as a chat would) first."""
        entry = self.library.get(model_id)
        if backend_table.load_target(self._target(entry.backend)).runs_in != "server":
            raise InvalidChat(
                f"Embeddings need a GGUF model run by llama.cpp; {entry.name} uses the "
                f"{entry.backend} backend."
            )
        with self._run_lock:
            self._ensure_loaded(entry, api_key, None, None)
            runner = self._resident
            self._last_used = self.clock()
        assert isinstance(runner, ServerRunner)
        try:
            return runner.embed(inputs)
        except WorkerDied as exc:
            self._forget(runner, f"the model's process died: {exc}")
            raise WorkerCrashed(
                f"The process running {entry.name} died ({exc}) while computing embeddings. "
                "The next request reloads the model."
            ) from None

    def supports_completion(self, model_id: str) -> bool:
        """Whether the model's backend can continue raw text (chat(..., raw=True))."""
        entry = self.library.get(model_id)
        return backend_table.load_target(self._target(entry.backend)).completion

    def serves_in_parallel(self, model_id: str) -> bool:
        """Whether the model's backend serves several requests at once (llama-server)."""
        entry = self.library.get(model_id)
        return backend_table.load_target(self._target(entry.backend)).runs_in == "server"

    def check_idle(self) -> bool:
        """Unload the resident model if it has been idle for keep_alive_s; True if it did."""
        if self.keep_alive_s <= 0:
            return False
        if not self._idle():
            return False
        if self.clock() - self._last_used < self.keep_alive_s:
            return False
        if not self._run_lock.acquire(blocking=False):
            return False
        try:
            if not self._idle():
                return False
            self.unload()
            self._set(HostStatus(detail="unloaded after the keep-alive"))
            return True
        finally:
            self._run_lock.release()

    def worker_pids(self) -> list[int]:
        """Process ids of the live model processes (resident first, then the spare)."""
        resident, spare = self._resident, self._spare
        pids = [resident.pid] if resident is not None and resident.alive() else []
        if spare is not None and spare.alive():
            pids.append(spare.pid)
        return [pid for pid in pids if pid is not None]

    # -- queue ------------------------------------------------------------------------
    def _idle(self) -> bool:
        with self._cond:
            return not self._running and not self._waiting and self._resident is not None

    def _position(self, gen: Generation) -> int:
        with self._cond:
            try:
                return self._waiting.index(gen) + 1
            except ValueError:
                return 0

    def _cancel(self, gen: Generation) -> None:
        """Drop gen from the queue, or stop it in its runner if it is running.

        A runner checks the cancel event as soon as its chat is in flight, so a cancel
        that comes while the model is still loading is not lost either.
        """
        with self._cond:
            with contextlib.suppress(ValueError):
                self._waiting.remove(gen)
            runner = self._running.get(gen)
            self._cond.notify_all()
        if runner is not None:
            runner.cancel(gen.cancel_event)

    def _dispatch(self) -> None:
        while True:
            admitted: tuple[Generation, Runner] | None = None
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._waiting and not self._loading:
                        head = self._waiting[0]
                        resident = self._resident
                        if not self._serves(resident, head):
                            break  # the head needs a load or a switch
                        assert resident is not None
                        if len(self._running) < resident.capacity:
                            self._waiting.popleft()
                            self._running[head] = resident
                            self._refresh_phase()
                            admitted = (head, resident)
                            break
                    self._cond.wait()
            if admitted is not None:
                threading.Thread(target=self._run, args=admitted, daemon=True,
                                 name="host-request").start()  # fmt: skip
            else:
                self._load_for(head)

    @staticmethod
    def _serves(resident: Runner | None, gen: Generation) -> bool:
        return (
            resident is not None and resident.model_id == gen.request.model_id and resident.alive()
        )

    def _load_for(self, gen: Generation) -> None:
        """Load (or switch to) the model the head of the queue asks for."""
        try:
            with self._run_lock:
                if gen.cancelled:
                    return
                entry = self.library.get(gen.request.model_id)
                self._ensure_loaded(entry, gen.request.api_key, None, None)
                if not self._serves(self._resident, gen):  # it died as soon as it loaded
                    self._drop(gen, WorkerCrashed(
                        f"The process running {entry.name} ended right after loading "
                        f"({self._status.detail or 'no reason given'}). Load it again from "
                        "the Library to see why."
                    ))  # fmt: skip
        except ApplianceError as exc:
            self._drop(gen, exc if isinstance(exc, EngineError) else ModelLoadError(str(exc)))
        except Exception as exc:
            self._drop(gen, EngineError(f"Internal error in the engine: {exc!r}"))

    def _drop(self, gen: Generation, error: EngineError) -> None:
        with self._cond:
            with contextlib.suppress(ValueError):
                self._waiting.remove(gen)
            self._cond.notify_all()
        gen.finish(error=error)

    def _janitor(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            with contextlib.suppress(Exception):
                self.check_idle()

    # -- serving one request ----------------------------------------------------------
    def _run(self, gen: Generation, runner: Runner) -> None:
        """Stream one admitted request (in its own thread)."""
        try:
            if not gen.cancelled:
                for event in runner.chat(gen.request, gen.cancel_event):
                    if isinstance(event, Done | Error):
                        self._release(gen)  # the status is current when the caller sees it
                    self._apply(gen, event)
        except WorkerDied as exc:
            with self._cond:
                same = self._status.model_id == runner.model_id
                name = self._status.name if same and self._status.name else runner.model_id
            self._forget(runner, f"the model's process died: {exc}")
            gen.finish(error=WorkerCrashed(
                f"The process running {name} died ({exc}) while generating; the partial "
                "reply is kept. The next message reloads the model."
            ))  # fmt: skip
        except Exception as exc:
            gen.finish(error=EngineError(f"Internal error in the engine: {exc!r}"))
        finally:
            self._release(gen)
            gen.finish(finish="cancelled" if gen.cancelled else "stop")  # no-op if ended

    def _release(self, gen: Generation) -> None:
        with self._cond:
            if self._running.pop(gen, None) is not None:
                self._last_used = self.clock()
                self._refresh_phase()
                self._cond.notify_all()

    @staticmethod
    def _apply(gen: Generation, event: Chunk | Fitted | Done | Error) -> None:
        """Pass one of the runner's chat events on to the caller's Generation."""
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
        if same and resident.alive() and options in (None, resident.options):
            return
        say = progress or (lambda _text: None)
        target = self._target(entry.backend)
        backend = backend_table.load_target(target)
        backend.check_available()
        if options is None:
            options = check_options(entry.backend, self.default_options())
        path = entry.path if entry.is_remote else str(self.library.resolve(entry))
        if not entry.is_remote and not Path(path).exists():
            raise ModelLoadError(
                f"Cannot load {entry.name}: {path} is missing. Put the file back, or "
                "remove the model from the library."
            )
        with self._cond:
            self._loading = True
        try:
            if resident is not None:
                why = f"{entry.name} was loaded in place of {self._status.name}"
                self._make_room(why, self.switch_rule, say)
                say(f"unloading {self._status.name}")
                self._retire(f"switching to {entry.name}")
            self._set(HostStatus(model_id=model_id, name=entry.name, backend=entry.backend,
                                 architecture=entry.architecture, phase="loading",
                                 detail="starting"))  # fmt: skip
            say(f"loading {entry.name}")
            request = Load(target, path, entry, options, api_key)
            runner = self._start_runner(backend.runs_in, request, say)
            with self._cond:
                self._resident = runner
            loaded = runner.loaded
            self._set(HostStatus(
                model_id=model_id, name=entry.name, backend=entry.backend,
                architecture=entry.architecture, phase="ready", detail=loaded.detail,
                context_length=loaded.context_length, n_threads=loaded.n_threads,
                n_gpu_layers=loaded.n_gpu_layers, capacity=runner.capacity,
                runs_in=runner.kind, cpu_variant=loaded.cpu_variant,
            ))  # fmt: skip
            say("ready")
            if runner.kind == "worker":
                self._start_spare(target)
            else:
                self._stop_spare()
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    def _start_runner(self, runs_in: str, request: Load, say: Progress) -> Runner:
        model_id = request.entry.id

        def progress(text: str) -> None:
            self._set_detail(text)
            say(text)

        if runs_in == "server":
            self._stop_spare()  # its memory is better spent on the server's slots
            try:
                return ServerRunner.load(model_id, request, progress)
            except EngineError as error:
                self._set(HostStatus(phase="error", detail=str(error)))
                raise
        worker = self._take_worker(request.target)
        try:
            loaded = self._load_in(worker, request, progress)
        except BaseException:
            worker.kill()
            raise
        return WorkerRunner(model_id, request.target, dict(request.options), loaded, worker)

    def _load_in(self, worker: WorkerClient, request: Load, progress: Progress) -> Loaded:
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

    def _make_room(self, why: str, rule: str, say: Progress | None) -> None:
        """Before a switch or an unload: wait for the running requests to end ("wait"),
        or stop them now with a message that says why ("cancel")."""
        with self._cond:
            running = list(self._running.items())
        if not running:
            return
        if rule == "cancel":
            for gen, runner in running:
                gen.finish(error=EngineError(
                    f"This reply was stopped because {why}; the text so far is kept. "
                    "Send the message again to continue with the model now loaded."
                ))  # fmt: skip
                gen.cancel_event.set()
                runner.cancel(gen.cancel_event)
        elif say is not None:
            say(f"waiting for {len(running)} running repl{'y' if len(running) == 1 else 'ies'} "
                f"on {self._status.name} to finish")  # fmt: skip
        with self._cond:
            while self._running:
                self._cond.wait()

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
        """Stop the resident process: killed at once on a switch (it holds nothing to
        save, and the kernel frees its memory immediately), asked to exit on an unload."""
        with self._cond:
            resident, self._resident = self._resident, None
        if resident is None:
            return
        self._set_phase("unloading", why or "unloading")
        if why is None:
            resident.stop()
        else:
            resident.kill()

    def _forget(self, runner: Runner, why: str) -> None:
        """A runner's process died: drop it (once) so the next request reloads."""
        with self._cond:
            if self._resident is not runner:
                return
            self._resident = None
            self._status = replace(self._status, phase="error", detail=why)
            self._cond.notify_all()
        runner.kill()

    # -- status -----------------------------------------------------------------------
    def _refresh_phase(self) -> None:
        """ready <-> generating as requests start and end (call with _cond held)."""
        if self._status.phase in ("ready", "generating"):
            phase = "generating" if self._running else "ready"
            self._status = replace(self._status, phase=phase)

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
