"""The openai backend against a real OpenAI-compatible server on loopback.

The server is llama.cpp's own (`llama-server`, as `make install` builds it) serving the
demo model on a loopback TCP port, with an API key, so authentication is tested too.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Host, RemoteServerError
from appliance.engine.remote import add_remote_models, list_remote_models
from appliance.errors import ImportRefused
from appliance.library.library import Library
from appliance.model_entry import ModelEntry
from tests.engine_models import LanServer

KEY = "test-key-123"
SYSTEM = "You are a helpful assistant."
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    from tests.conftest import DEMO_MODEL

    with LanServer(DEMO_MODEL, alias="smollm2", api_key=KEY, n_ctx=2048) as lan:
        yield lan.url


@pytest.fixture
def host(library: Library) -> Iterator[Host]:
    host = Host(library, spare_worker=False)
    yield host
    host.shutdown()


def test_list_models_fills_the_registry(server: str, library: Library) -> None:
    assert list_remote_models(server + "/v1/", KEY) == ["smollm2"]
    [entry] = add_remote_models(library, server, KEY)
    assert (entry.id, entry.format, entry.backend, entry.path) == (
        "smollm2", "openai", "openai", server + "/v1")  # fmt: skip
    assert entry.metadata.model_name == "smollm2"
    assert add_remote_models(library, server, KEY)[0].id == "smollm2"  # no duplicate
    text = library.paths.registry.read_text()
    assert KEY not in text  # the key is never stored in the registry
    assert [e["id"] for e in json.loads(text)["models"]] == ["smollm2"]
    library.scan()
    assert library.get("smollm2").status == "present"  # a URL is never "missing"


def test_chat_streams_over_sse(server: str, host: Host, library: Library) -> None:
    model = library.add_remote(server, "smollm2", name="LAN SmolLM2").id
    status = host.load(model, api_key=KEY)  # llama-server's /v1/models says its n_ctx
    assert (status.backend, status.phase, status.context_length) == ("openai", "ready", 2048)
    status = host.load(model, api_key=KEY, options={"n_ctx": 1024})
    assert status.context_length == 1024
    gen = host.chat(model, FRANCE, system_prompt=SYSTEM, settings={"temperature": 0, "seed": 1},
                    api_key=KEY)  # fmt: skip
    chunks = list(gen)
    assert len(chunks) > 3 and "".join(chunks) == "The capital of France is Paris."
    assert gen.result.finish == "stop" and gen.result.error is None


def test_cancel_remote_stream(server: str, host: Host, library: Library) -> None:
    model = library.add_remote(server, "smollm2").id
    story = [{"role": "user", "content": "Write a very long story about a dragon."}]
    gen = host.chat(model, story, settings={"temperature": 0, "max_tokens": 1500}, api_key=KEY)
    received = []
    for text in gen:
        received.append(text)
        if len(received) == 5:
            gen.cancel()
    assert gen.result.stopped and gen.result.text == "".join(received) and len(received) == 5
    again = host.chat(model, FRANCE, system_prompt=SYSTEM, settings={"temperature": 0},
                      api_key=KEY)  # fmt: skip
    assert "".join(again) == "The capital of France is Paris."


def test_wrong_or_missing_key(server: str, host: Host, library: Library) -> None:
    model = library.add_remote(server, "smollm2").id
    for key in (None, "wrong"):
        with pytest.raises(RemoteServerError, match=r"refused the request \(HTTP 401\): the API"):
            host.load(model, api_key=key)
    assert host.status().phase == "error"
    assert host.load(model, api_key=KEY).phase == "ready"


def test_unknown_model(server: str, host: Host, library: Library) -> None:
    model = library.add_remote(server, "ghost").id
    with pytest.raises(
        RemoteServerError, match=r"has no model named 'ghost'; it offers: smollm2\."
    ):
        host.load(model, api_key=KEY)


def test_wrong_path_is_404(server: str) -> None:
    with pytest.raises(RemoteServerError, match=r"/nope/v1/models does not exist \(HTTP 404\)"):
        list_remote_models(server + "/nope", KEY)


def test_connection_refused(host: Host, library: Library) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        RemoteServerError, match=r"Cannot connect to .*: the connection was refused"
    ):
        list_remote_models(url)
    model = library.add_remote(url, "any").id
    with pytest.raises(RemoteServerError, match="the connection was refused"):
        host.load(model)
    assert host.worker_pids() == []


@pytest.mark.parametrize(
    ("url", "match"),
    [("ftp://x/v1", "not a server address"), ("localhost:8000", "not a server address"),
     ("http:// spaced/v1", "not a server address")],
)  # fmt: skip
def test_bad_base_urls(library: Library, url: str, match: str) -> None:
    with pytest.raises(ImportRefused, match=match):
        library.add_remote(url, "m")


def test_registry_validates_remote_entries(library: Library) -> None:
    entry = library.add_remote("http://10.0.0.5:8000", "m")
    assert ModelEntry.from_json(entry.to_json()) == entry
    assert entry.path == "http://10.0.0.5:8000/v1" and entry.secret_name == "api-key:m"
    for change, problem in (
        ({"path": "/models/x"}, r"must be the server's http\(s\) base URL"),
        ({"metadata": {}}, "'metadata.model_name' must name the server's model"),
        ({"backend": "llama.cpp"}, "remote models need format and backend 'openai'"),
    ):
        with pytest.raises(ValueError, match=problem):
            ModelEntry.from_json({**entry.to_json(), **change})


def test_remote_entry_survives_a_reload(library: Library) -> None:
    entry = library.add_remote("https://gpu.lan/v1", "big-model", name="Big")
    again = Library(library.paths)
    assert again.get(entry.id) == entry
    assert Path(again.paths.registry).exists()
