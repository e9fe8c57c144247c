"""The worker protocol: every message between the host and a worker, and the host's client.

Requests (host -> worker) and events (worker -> host) are frozen dataclasses:

    requests  Load(target, path, entry, options, api_key)    Chat(id, system, messages,
              settings, raw, truncate)    Cancel(id)    Exit()
    events    Progress(text)    Loaded(context_length, ...)    Fitted(id, dropped,
              prompt_tokens, context_length)    Chunk(id, text)    Done(id, finish,
              completion_tokens)    Error(id, kind, message)

`encode` and `decode_request` / `decode_event` are the only code that knows the wire
format: one JSON object per multiprocessing frame, `{"type": "chunk", "id": 3, "text":
"Hi"}`. Decoding checks the type tag, the field names and the field types (the rules of
appliance.jsontypes), and raises ProtocolError saying what is wrong. Load's entry travels
as the registry stores it (ModelEntry.to_json) and is validated the same way on arrival.

`WorkerClient` is the host's handle on one worker process: `load()` returns Loaded (or
raises the backend's error), `chat()` yields the request's events up to Done or Error,
and `cancel()`, from any thread, stops the chat in flight at its next token. A worker
that dies raises process.WorkerDied from any of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from appliance.engine.errors import EngineError, from_kind
from appliance.engine.process import WorkerDied, WorkerProcess
from appliance.jsontypes import checker, describe
from appliance.model_entry import ModelEntry

__all__ = [
    "Cancel",
    "Chat",
    "ChatEvent",
    "Chunk",
    "Done",
    "Error",
    "Event",
    "Exit",
    "Fitted",
    "Load",
    "Loaded",
    "Message",
    "Progress",
    "ProtocolError",
    "Request",
    "WorkerClient",
    "WorkerDied",
    "decode_event",
    "decode_request",
    "encode",
]


class ProtocolError(ValueError):
    """A frame that is not a well-formed message of the expected direction."""


# -- requests: host -> worker -------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """Load the model at path with the backend class at target ("module:Class")."""

    tag: ClassVar[str] = "load"
    target: str
    path: str  # file or folder; for remote backends the server's base URL
    entry: ModelEntry
    options: dict[str, Any]
    api_key: str | None = None


@dataclass(frozen=True)
class Chat:
    """Fit the messages to the context and stream a reply; `id` tags its events."""

    tag: ClassVar[str] = "chat"
    id: int
    system: str | None
    messages: list[dict[str, str]]
    settings: dict[str, Any]  # merged and checked; max_tokens is always present
    raw: bool = False  # complete messages[0]'s text as it is (Backend.complete)
    truncate: bool = True  # drop the oldest turns to fit; False: ContextOverflow instead


@dataclass(frozen=True)
class Cancel:
    """Stop chat `id` at its next token (applied at once by the worker's reader thread)."""

    tag: ClassVar[str] = "cancel"
    id: int


@dataclass(frozen=True)
class Exit:
    """Close the backend and end the process."""

    tag: ClassVar[str] = "exit"


# -- events: worker -> host -----------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """A loading step, for the user ("llama.cpp: n_ctx 4096, 2 threads, 0 GPU layers")."""

    tag: ClassVar[str] = "progress"
    text: str


@dataclass(frozen=True)
class Loaded:
    """The model is ready: what the backend reports about it (its `load` returns this)."""

    tag: ClassVar[str] = "loaded"
    context_length: int
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    device: str = "cpu"
    chat_template: bool = True
    detail: str = ""
    parallel: int = 1  # requests it serves at once
    cpu_variant: str | None = None  # the llama.cpp CPU kernels loaded (llama-server)


@dataclass(frozen=True)
class Fitted:
    """How the prompt of chat `id` was fitted to the context window."""

    tag: ClassVar[str] = "fitted"
    id: int
    dropped: int
    prompt_tokens: int
    context_length: int


@dataclass(frozen=True)
class Chunk:
    """The next piece of chat `id`'s reply."""

    tag: ClassVar[str] = "chunk"
    id: int
    text: str


@dataclass(frozen=True)
class Done:
    """Chat `id` has ended: finish is stop, length or cancelled."""

    tag: ClassVar[str] = "done"
    id: int
    finish: str
    completion_tokens: int


@dataclass(frozen=True)
class Error:
    """A load (id None) or chat `id` failed; kind names the EngineError class."""

    tag: ClassVar[str] = "error"
    id: int | None
    kind: str
    message: str

    def exception(self) -> EngineError:
        """The same typed error the backend raised inside the worker."""
        return from_kind(self.kind, self.message)


Request = Load | Chat | Cancel | Exit
Event = Progress | Loaded | Fitted | Chunk | Done | Error
ChatEvent = Fitted | Chunk | Done | Error
Message = Request | Event

_REQUESTS = {cls.tag: cls for cls in typing.get_args(Request)}
_EVENTS = {cls.tag: cls for cls in typing.get_args(Event)}


# -- the wire format -----------------------------------------------------------------------
def encode(message: Message) -> bytes:
    """The frame for one message."""
    return json.dumps({"type": message.tag, **vars(message)}, default=_to_json).encode("utf-8")


def _to_json(value: Any) -> Any:
    if isinstance(value, ModelEntry):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} cannot be sent to a worker")


def decode_request(data: bytes) -> Request:
    """The request in a frame from the host; ProtocolError if it is not one."""
    return _decode(data, _REQUESTS, "request")


def decode_event(data: bytes) -> Event:
    """The event in a frame from a worker; ProtocolError if it is not one."""
    return _decode(data, _EVENTS, "event")


def _decode(data: bytes, table: dict[str, type], what: str) -> Any:
    try:
        body = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError(f"a worker {what} must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"a worker {what} must be a JSON object, not {type(body).__name__}")
    tag = body.pop("type", None)
    cls = table.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ProtocolError(
            f"unknown worker {what} type {tag!r}; expected one of {', '.join(table)}"
        )
    shape = _shape(cls)
    missing = [name for name in shape.required if name not in body]
    unknown = [name for name in body if name not in shape.checks]
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise ProtocolError(f"worker {what} {tag!r}: {'; '.join(problems)}")
    for name, value in body.items():
        if not shape.checks[name](value):
            raise ProtocolError(
                f"worker {what} {tag!r}: field {name} must be {shape.types[name]}, "
                f"not {json.dumps(value)[:80]}"
            )
        if name in shape.entries:
            try:
                body[name] = ModelEntry.from_json(value)
            except ValueError as exc:
                raise ProtocolError(f"worker {what} {tag!r}: field {name}: {exc}") from None
    return cls(**body)


@dataclass(frozen=True)
class _Shape:
    """What a message class's fields must look like on the wire (worked out once)."""

    required: tuple[str, ...]
    checks: dict[str, Callable[[Any], bool]]
    types: dict[str, str]  # for the error message: "int | None"
    entries: tuple[str, ...]  # fields holding a ModelEntry (a JSON object on the wire)


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    if cls not in _SHAPES:
        fields = dataclasses.fields(cls)
        hints = typing.get_type_hints(cls)
        entries = tuple(f.name for f in fields if hints[f.name] is ModelEntry)
        _SHAPES[cls] = _Shape(
            required=tuple(f.name for f in fields if _required(f)),
            checks={f.name: checker(_on_the_wire(hints[f.name])) for f in fields},
            types={f.name: describe(_on_the_wire(hints[f.name])) for f in fields},
            entries=entries,
        )
    return _SHAPES[cls]


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _on_the_wire(hint: Any) -> Any:
    """A field's type as JSON carries it (a ModelEntry is an object)."""
    return dict[str, Any] if hint is ModelEntry else hint


# -- the host's client ---------------------------------------------------------------------
class WorkerClient:
    """One worker process, spoken to in typed messages; `preload` as in WorkerProcess.

    The host runs one load or chat at a time; `cancel` may come from any thread.
    """

    def __init__(self, preload: str | None = None) -> None:
        self.preload = preload
        self.process = WorkerProcess(preload)
        self._send_lock = threading.Lock()
        self._next_id = 0
        self._chat_id: int | None = None  # the chat in flight

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def load(self, request: Load, progress: Callable[[str], None]) -> Loaded:
        """Load a model; Progress texts go to progress. Raises the backend's EngineError."""
        self._send(request)
        while True:
            event = self._recv()
            if isinstance(event, Progress):
                progress(event.text)
            elif isinstance(event, Loaded):
                return event
            elif isinstance(event, Error):
                raise event.exception()

    def chat(
        self,
        system: str | None,
        messages: list[dict[str, str]],
        settings: dict[str, Any],
        raw: bool = False,
        truncate: bool = True,
    ) -> Iterator[ChatEvent]:
        """Send the chat now; the iterator yields its events up to Done or Error."""
        with self._send_lock:
            self._next_id += 1
            request = Chat(self._next_id, system, messages, settings, raw, truncate)
            self._send_unlocked(request)
            self._chat_id = request.id
        return self._events(request.id)

    def cancel(self) -> None:
        """Stop the chat in flight, if any, at its next token (any thread; idempotent)."""
        with self._send_lock, contextlib.suppress(WorkerDied):
            if self._chat_id is not None:
                self._send_unlocked(Cancel(self._chat_id))

    def stop(self, grace_s: float = 2.0) -> None:
        """Ask the worker to exit, kill it after grace_s, and reap it."""
        if self.alive():
            with contextlib.suppress(WorkerDied):
                self._send(Exit())
        self.process.reap(grace_s)

    def kill(self) -> None:
        self.process.kill()

    def _events(self, chat_id: int) -> Iterator[ChatEvent]:
        try:
            while True:
                event = self._recv()
                if getattr(event, "id", None) != chat_id:
                    continue  # not this chat's: nothing else is in flight
                last = isinstance(event, Done | Error)
                if last:
                    self._end_chat(chat_id)  # a cancel from now on has nothing to stop
                yield event
                if last:
                    return
        finally:
            self._end_chat(chat_id)

    def _end_chat(self, chat_id: int) -> None:
        with self._send_lock:
            if self._chat_id == chat_id:
                self._chat_id = None

    def _send(self, request: Request) -> None:
        with self._send_lock:
            self._send_unlocked(request)

    def _send_unlocked(self, request: Request) -> None:
        self.process.send(encode(request))

    def _recv(self) -> Event:
        data = self.process.recv()
        try:
            return decode_event(data)
        except ProtocolError as exc:
            self.process.kill()
            raise WorkerDied(f"it sent a message the host cannot read ({exc}); it was "
                             "stopped") from None  # fmt: skip
