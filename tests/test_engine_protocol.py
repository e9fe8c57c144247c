"""The worker protocol: every message survives the wire, a bad frame says what is wrong,
and WorkerClient drives a real worker process (with the scripted backend)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from appliance.engine import protocol
from appliance.engine.errors import ContextOverflow, GenerationError, ModelLoadError
from appliance.engine.protocol import (
    Cancel,
    Chat,
    Chunk,
    Done,
    Error,
    Exit,
    Fitted,
    Load,
    Loaded,
    Progress,
    ProtocolError,
    WorkerClient,
    WorkerDied,
    decode_event,
    decode_request,
    encode,
)
from appliance.model_entry import ModelMetadata
from tests.engine_fakes import FAKE, fake_entry

REMOTE = fake_entry("http://h/v1", id="h", format="openai", backend="openai",
                    metadata=ModelMetadata(model_name="m"))  # fmt: skip
REQUESTS = [
    Load("tests.engine_fakes:FakeBackend", "/m/a.gguf",
         fake_entry("/m/a.gguf", metadata=ModelMetadata(context_length=512, notes=("é",))),
         {"n_ctx": 512}, api_key="sk-1"),
    Load("m:C", "http://h/v1", REMOTE, {}),
    Chat(7, "Be brief.", [{"role": "user", "content": "héllo ✓"}], {"max_tokens": 8, "top_p": 1}),
    Chat(8, None, [], {}),
    Chat(9, None, [{"role": "user", "content": "Once upon"}], {"max_tokens": 8}, raw=True),
    Cancel(7),
    Exit(),
]  # fmt: skip
EVENTS = [
    Progress("llama.cpp: n_ctx 4096"),
    Loaded(2048, 2, 0, device="cpu", chat_template=False, detail="pid 1"),
    Loaded(4096),
    Fitted(7, 2, 120, 2048),
    Chunk(7, " Paris\n"),
    Done(7, "cancelled", 3),
    Error(7, "ContextOverflow", "too long"),
    Error(None, "ModelLoadError", "bad file"),
]


def test_the_samples_cover_every_message_type() -> None:
    assert {type(m) for m in REQUESTS} == set(typing.get_args(protocol.Request))
    assert {type(m) for m in EVENTS} == set(typing.get_args(protocol.Event))


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_requests_round_trip(request_: protocol.Request) -> None:
    assert decode_request(encode(request_)) == request_


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_events_round_trip(event: protocol.Event) -> None:
    assert decode_event(encode(event)) == event


def test_the_wire_format_is_one_tagged_json_object() -> None:
    assert json.loads(encode(Chunk(3, "Hi"))) == {"type": "chunk", "id": 3, "text": "Hi"}
    assert json.loads(encode(Exit())) == {"type": "exit"}


def test_defaults_may_be_left_out() -> None:
    assert decode_event(b'{"type": "loaded", "context_length": 64}') == Loaded(64)


def test_error_event_rebuilds_the_typed_error() -> None:
    error = Error(1, "ContextOverflow", "too long").exception()
    assert isinstance(error, ContextOverflow) and str(error) == "too long"
    assert isinstance(Error(1, "NoSuchKind", "x").exception(), GenerationError)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"{not json", r"^a worker event must be a JSON object: Expecting property name"),
        (b"\xff", r"^a worker event must be a JSON object: .*codec can't decode"),
        (b"[1, 2]", r"^a worker event must be a JSON object, not list$"),
        (b'{"id": 1, "text": "x"}', r"^unknown worker event type None; expected one of progress,"),
        (b'{"type": "nope"}', r"^unknown worker event type 'nope'; expected one of progress, "
                              r"loaded, fitted, chunk, done, error$"),
        (b'{"type": "chat", "id": 1}', r"^unknown worker event type 'chat'"),  # a request
        (b'{"type": "chunk", "id": 1}', r"^worker event 'chunk': missing text$"),
        (b'{"type": "done", "id": 1, "finish": "stop", "completion_tokens": 2, "extra": 1, '
         b'"more": 2}', r"^worker event 'done': unknown extra, more$"),
        (b'{"type": "fitted", "id": 1, "extra": 0}',
         r"^worker event 'fitted': missing dropped, prompt_tokens, context_length; unknown extra$"),
        (b'{"type": "chunk", "id": "1", "text": "x"}',
         r"^worker event 'chunk': field id must be int, not \"1\"$"),
        (b'{"type": "chunk", "id": true, "text": "x"}',
         r"^worker event 'chunk': field id must be int, not true$"),
        (b'{"type": "chunk", "id": 1, "text": null}',
         r"^worker event 'chunk': field text must be str, not null$"),
        (b'{"type": "loaded", "context_length": 64, "n_threads": 1.5}',
         r"^worker event 'loaded': field n_threads must be int \| None, not 1.5$"),
    ],
)  # fmt: skip
def test_a_malformed_event_says_what_is_wrong(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_event(frame)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b'{"type": "chunk", "id": 1, "text": "x"}', r"^unknown worker request type 'chunk'"),
        (b'{"type": "chat", "id": 1, "system": null, "messages": [{"role": 1}], "settings": {}}',
         r"^worker request 'chat': field messages must be list\[dict\[str, str\]\], not "),
        (b'{"type": "load", "target": "m:C", "path": "p", "entry": [], "options": {}}',
         r"^worker request 'load': field entry must be dict\[str, Any\], not \[\]$"),
        (b'{"type": "load", "target": "m:C", "path": "p", "entry": {"id": "m"}, "options": {}}',
         r"^worker request 'load': field entry: entry 'm': 'name' is missing$"),
        (b'{"type": "cancel"}', r"^worker request 'cancel': missing id$"),
    ],
)  # fmt: skip
def test_a_malformed_request_says_what_is_wrong(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_request(frame)


# -- WorkerClient with a real worker process ------------------------------------------------
def _fake_model(tmp_path: Path, **script: object) -> Load:
    path = tmp_path / "m.gguf"
    path.write_text(json.dumps(script))
    return Load(FAKE, str(path), fake_entry(str(path)), {})


@pytest.fixture
def client() -> typing.Iterator[WorkerClient]:
    client = WorkerClient()
    yield client
    client.kill()


def test_client_load_then_chat(client: WorkerClient, tmp_path: Path) -> None:
    seen: list[str] = []
    loaded = client.load(_fake_model(tmp_path, reply="one two", context=50), seen.append)
    assert loaded == Loaded(50, 1, 0, detail=f"pid {client.pid}")
    assert seen == ["fake: reading the script"]
    events = list(client.chat("sys", [{"role": "user", "content": "hi"}], {"max_tokens": 8}))
    assert events == [Fitted(1, 0, 5, 50), Chunk(1, "one"), Chunk(1, " two"), Done(1, "stop", 2)]
    events = list(client.chat(None, [{"role": "user", "content": "hi"}], {"max_tokens": 1}))
    assert events[1:] == [Chunk(2, "one"), Done(2, "stop", 1)]  # ids count per worker


def test_client_load_raises_the_backend_error(client: WorkerClient, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="^no good$"):
        client.load(_fake_model(tmp_path, fail_load="no good"), print)


def test_client_cancel_stops_the_chat_at_the_next_token(
    client: WorkerClient, tmp_path: Path
) -> None:
    words = " ".join(f"w{i}" for i in range(400))
    client.load(_fake_model(tmp_path, reply=words, delay_s=0.01), print)
    events = client.chat(None, [{"role": "user", "content": "hi"}], {"max_tokens": 400})
    received = []
    for event in events:
        received.append(event)
        if len(received) == 3:
            client.cancel()
    done = received[-1]
    assert isinstance(done, Done) and done.finish == "cancelled"
    assert 2 <= done.completion_tokens < 50
    client.cancel()  # nothing in flight: nothing happens
    assert list(client.chat(None, [{"role": "user", "content": "x"}], {"max_tokens": 1}))[-1] == (
        Done(2, "stop", 1)
    )


def test_a_worker_that_cannot_read_a_request_exits_saying_why(client: WorkerClient) -> None:
    client.process.send(b'{"type": "load"}')
    with pytest.raises(WorkerDied, match=r"^exit code 2; last output: worker: cannot read the "
                       r"host's request: worker request 'load': missing target, path, entry, "
                       r"options$"):  # fmt: skip
        client.process.recv()


class _Garbled:
    """A process stand-in whose next frame is not a message."""

    killed = False

    def recv(self) -> bytes:
        return b'{"type": "chunk", "id": 1}'

    def send(self, frame: bytes) -> None:
        pass

    def kill(self) -> None:
        self.killed = True


def test_a_worker_that_sends_garbage_is_stopped(client: WorkerClient) -> None:
    client.kill()
    garbled = client.process = _Garbled()  # type: ignore[assignment]
    with pytest.raises(WorkerDied, match=r"^it sent a message the host cannot read \(worker "
                       r"event 'chunk': missing text\); it was stopped$"):  # fmt: skip
        list(client.chat(None, [], {}))
    assert garbled.killed
