"""The OpenAI-compatible API (issue 13) with real clients against the real server.

One server (`streamlit run appliance_server.py`) serves the whole module: its home has
the demo model, a copy of it that a test damages later, an API key, and
`parallel_slots: 1`, so that one long reply occupies the engine and the queue and
cancellation tests are deterministic. The official `openai` package (the version pinned
in the dev extra), `curl`, raw HTTP, and a second appliance's remote backend are the
clients. A second small server tests TLS and the API being off until a key exists.

The tests share the server and run in file order; none leaves a reply running.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import math
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from appliance import app_settings
from appliance.api.keys import KeyStore
from appliance.engine import Host, RemoteServerError
from appliance.library.library import Library
from appliance.paths import Paths
from tests.browser import AppServer, register, with_demo
from tests.conftest import DEMO_MODEL

SYSTEM = "You are a helpful assistant."
FRANCE = [{"role": "system", "content": SYSTEM},
          {"role": "user", "content": "What is the capital of France?"}]  # fmt: skip
PARIS = "The capital of France is Paris."
# A base-model prompt the demo model continues for as long as it is allowed to.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def long_counting() -> str:
    """A counting prompt no earlier request had: a slot holding an earlier one's tokens
    would reuse them, and a reused prefix may take the greedy reply another way (to an
    early end of text); a fresh one counts on to the token limit."""
    return f"Counting, list {secrets.token_hex(2)}: {COUNTING}"


EMBEDDING_SIZE = 576  # SmolLM2-135M's hidden size


@dataclass
class Appliance:
    server: AppServer
    home: Path
    secret: str
    model: str
    broken: str  # a registered copy of the demo model, damaged by a test
    history_at_start: list[str]

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, secret: str | None = None, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=secret or self.secret,
                             max_retries=0, **kwargs)  # fmt: skip

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.secret}"}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    home = tmp_path_factory.mktemp("api") / "home"
    paths = Paths(home).ensure()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("APPLIANCE_HOME", str(home))
        app_settings.save({"parallel_slots": 1}, paths)
        model = with_demo(home, DEMO_MODEL)
        broken = paths.models / "broken.gguf"
        shutil.copyfile(DEMO_MODEL, broken)  # a copy: the damage must not reach the demo
        broken_id = register(broken)
    _, secret = KeyStore(paths).create("tests")
    server = AppServer(home).start()
    try:
        yield Appliance(server, home, secret, model, broken_id, files_under(paths.history))
    finally:
        server.stop()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def sse_events(lines: Iterator[str]) -> Iterator[str]:
    """The data of each server-sent event."""
    for line in lines:
        if line:
            assert line.startswith("data: "), line
            yield line[len("data: ") :]


# ---- the official openai client --------------------------------------------------------------


def test_models_list_and_retrieve(appliance: Appliance) -> None:
    client = appliance.client()
    models = {m.id: m for m in client.models.list().data}
    assert sorted(models) == sorted([appliance.model, appliance.broken])
    demo = models[appliance.model]
    assert demo.object == "model" and demo.owned_by == "offline-llm-switcher"
    extra = demo.model_extra or {}
    assert extra["backend"] == "llama.cpp" and extra["format"] == "gguf"
    assert extra["context_length"] == 4096 and extra["meta"] == {"n_ctx": 4096}
    assert demo.created > 1_700_000_000
    one = client.models.retrieve(appliance.model)
    assert one.id == appliance.model and (one.model_extra or {})["backend"] == "llama.cpp"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_chat_completion(appliance: Appliance) -> None:
    answer = appliance.client().chat.completions.create(
        model=appliance.model, messages=FRANCE, temperature=0, seed=1
    )
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == appliance.model
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == PARIS
    assert choice.finish_reason == "stop"
    use = answer.usage
    assert use is not None and use.completion_tokens >= 7 and use.prompt_tokens >= 20
    assert use.total_tokens == use.prompt_tokens + use.completion_tokens
    # the model is now resident: the list says so, with the context it really serves
    [demo] = [m for m in appliance.client().models.list().data if m.id == appliance.model]
    assert (demo.model_extra or {})["loaded"] is True


def test_chat_stream_with_usage(appliance: Appliance) -> None:
    stream = appliance.client().chat.completions.create(
        model=appliance.model, messages=FRANCE, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3 and "".join(texts) == PARIS
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens >= 7 and last.usage.prompt_tokens >= 20
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_cuts_before_the_stop_string(appliance: Appliance) -> None:
    client = appliance.client()
    answer = client.chat.completions.create(model=appliance.model, messages=FRANCE,
                                            temperature=0, stop=["Paris"])  # fmt: skip
    assert answer.choices[0].message.content == "The capital of France is "
    assert answer.choices[0].finish_reason == "stop"
    # At least the six tokens read, " Paris" included (not 0: the cut reply was
    # cancelled); up to the 8 llama.cpp generated when it finished before the cancel.
    assert answer.usage is not None and 6 <= answer.usage.completion_tokens <= 8
    stream = client.chat.completions.create(model=appliance.model, messages=FRANCE,
                                            temperature=0, stop="France", stream=True)  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "The capital of "


def test_completion_continues_raw_text(appliance: Appliance) -> None:
    client = appliance.client()
    answer = client.completions.create(model=appliance.model, prompt=COUNTING, max_tokens=8,
                                       temperature=0)  # fmt: skip
    assert answer.object == "text_completion"
    [choice] = answer.choices
    assert choice.text.startswith(" 11, 12"), choice.text
    assert choice.finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    stream = client.completions.create(model=appliance.model, prompt=COUNTING, max_tokens=8,
                                       temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == choice.text


def test_embeddings(appliance: Appliance) -> None:
    client = appliance.client()
    texts = ["The cat sat on the mat.", "A cat was sitting on the rug.",
             "Quarterly corporate tax filing deadlines."]  # fmt: skip
    answer = client.embeddings.create(model=appliance.model, input=texts)  # base64 on the wire
    assert [d.index for d in answer.data] == [0, 1, 2]
    cat, cat2, tax = (d.embedding for d in answer.data)
    assert len(cat) == len(cat2) == len(tax) == EMBEDDING_SIZE
    assert cosine(cat, cat2) > cosine(cat, tax) and cosine(cat, cat2) > cosine(cat2, tax)
    assert answer.usage.prompt_tokens > 10
    floats = client.embeddings.create(model=appliance.model, input=texts[0],
                                      encoding_format="float")  # fmt: skip
    [one] = floats.data
    assert len(one.embedding) == EMBEDDING_SIZE
    assert cosine(one.embedding, cat) > 0.9999  # the same vector, either encoding


# ---- errors as the client raises them --------------------------------------------------------


def test_unknown_model(appliance: Appliance) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        appliance.client().chat.completions.create(model="ghost", messages=FRANCE)
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"
    assert "ghost" in caught.value.message


def test_context_length_exceeded_is_never_cut(appliance: Appliance) -> None:
    huge = [{"role": "user", "content": "word " * 6000}]
    with pytest.raises(openai.BadRequestError) as caught:
        appliance.client().chat.completions.create(model=appliance.model, messages=huge)
    error = caught.value
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert "its context window holds 4,096 tokens" in error.message, error.message
    assert "The messages take 6," in error.message, error.message


def test_wrong_key(appliance: Appliance) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        appliance.client("ols_not-a-key").models.list()
    assert caught.value.code == "invalid_api_key"
    assert caught.value.response.headers["www-authenticate"] == "Bearer"
    assert "Retry-After" not in caught.value.response.headers  # one failure does not block


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
         "tools", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
         "messages[0].content", "unsupported_content"),
        ({"temperature": 5}, "temperature", None),
    ],
)  # fmt: skip
def test_unsupported_requests(appliance: Appliance, extra: dict, param: str, code: str) -> None:
    args: dict[str, Any] = {"model": appliance.model, "messages": FRANCE, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        appliance.client().chat.completions.create(**args)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert caught.value.type == "invalid_request_error"


# ---- curl ------------------------------------------------------------------------------------


def curl(*args: str, body: Any = None) -> subprocess.CompletedProcess[str]:
    data = None if body is None else json.dumps(body)
    return subprocess.run(["/usr/bin/curl", "-sS", "--max-time", "120", *args], input=data,
                          capture_output=True, text=True, check=True)  # fmt: skip


def test_curl_streams_sse(appliance: Appliance) -> None:
    body = {"model": appliance.model, "messages": FRANCE, "temperature": 0, "stream": True}
    out = curl("-N", "-H", f"Authorization: Bearer {appliance.secret}", "-H",
               "Content-Type: application/json", f"{appliance.url}/v1/chat/completions",
               "-d", "@-", body=body).stdout  # fmt: skip
    assert out.endswith("data: [DONE]\n\n")
    events = list(sse_events(iter(out.split("\n"))))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == PARIS
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_curl_without_key_gets_401_json(appliance: Appliance) -> None:
    result = curl("-D", "-", f"{appliance.url}/v1/models")
    head, _, body = result.stdout.partition("\n\n")  # text mode: \r\n read as \n
    assert head.startswith("HTTP/1.1 401")
    assert "\nwww-authenticate: bearer\n" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "missing_api_key" and error["type"] == "authentication_error"
    assert "Authorization: Bearer" in error["message"]


# ---- statelessness ---------------------------------------------------------------------------


def test_api_chats_write_no_history(appliance: Appliance) -> None:
    history = appliance.home / "history"
    before = files_under(history)
    answer = appliance.client().chat.completions.create(
        model=appliance.model, messages=FRANCE, temperature=0
    )
    assert answer.choices[0].message.content == PARIS
    # nothing now, nothing after the earlier tests' chats either
    assert files_under(history) == before == appliance.history_at_start == []


# ---- a client that goes away; a full queue ---------------------------------------------------


LONG = 4000  # tokens: with the prompt, as much as the 4,096-token context holds


def long_request(client: httpx2.Client, appliance: Appliance) -> httpx2.Request:
    """A streamed 4,000-token completion of a fresh counting prompt."""
    body = {"model": appliance.model, "prompt": long_counting(), "max_tokens": LONG,
            "temperature": 0, "stream": True}  # fmt: skip
    return client.build_request("POST", f"{appliance.url}/v1/completions", json=body,
                                headers=appliance.auth())  # fmt: skip


def open_long_stream(client: httpx2.Client, appliance: Appliance, events: int) -> tuple[Any, float]:
    """Start a 4,000-token streamed completion; read `events` events.

    Returns the open response and the measured decode rate (events per second)."""
    response = client.send(long_request(client, appliance), stream=True)
    assert response.status_code == 200, response.read()
    started = 0.0
    for seen, data in enumerate(sse_events(response.iter_lines()), 1):
        assert json.loads(data)["choices"][0]["finish_reason"] is None
        if seen == 1:
            started = time.monotonic()
        if seen == events:
            break
    return response, (events - 1) / (time.monotonic() - started)


def test_disconnect_cancels_the_generation(appliance: Appliance) -> None:
    """With one slot, a reply waits for the one before it: it starts at once only if the
    closed stream's 4,000-token generation was cancelled."""
    with httpx2.Client(timeout=60) as raw:
        response, rate = open_long_stream(raw, appliance, events=6)
        response.close()  # the client goes away mid-stream
    left_s = (LONG - 6) / rate  # what the long reply would still need
    answers_within(appliance, left_s / 2, rate, "the closed stream kept generating")


def answers_within(appliance: Appliance, bound: float, rate: float, otherwise: str) -> None:
    """A new chat gets its answer within `bound` seconds (else: `otherwise`)."""
    assert bound > 3, f"the machine decodes too fast ({rate:.0f}/s) for this test to tell"
    started = time.monotonic()
    try:
        answer = appliance.client(timeout=bound).chat.completions.create(
            model=appliance.model, messages=FRANCE, temperature=0
        )
    except openai.APITimeoutError:
        pytest.fail(f"no answer within {bound:.0f} s: {otherwise}")
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == PARIS
    assert elapsed < bound, f"waited {elapsed:.1f} s: {otherwise}"


def test_disconnect_while_queued_cancels_the_request(appliance: Appliance) -> None:
    """With one slot busy, a second long request waits in the queue; its client goes away
    there. When the first is closed, a third request runs at once: the second, had it
    stayed in the queue, would have taken the slot for 4,000 tokens."""
    with httpx2.Client(timeout=60) as raw, httpx2.Client(timeout=60) as waiting:
        first, rate = open_long_stream(raw, appliance, events=4)
        request = long_request(waiting, appliance)
        sender = threading.Thread(target=lambda: _ignore(lambda: waiting.send(request)))
        sender.start()
        time.sleep(1.0)  # it is in the queue now (the slot is busy)
        waiting.close()  # the client goes away while queued
        sender.join(30)
        time.sleep(0.5)
        first.close()
    answers_within(appliance, (LONG - 4) / rate / 2, rate, "the abandoned request still ran")


def _ignore(call: Any) -> None:
    with contextlib.suppress(Exception):
        call()


def test_full_queue_gets_429_with_retry_after(appliance: Appliance) -> None:
    """One slot and a queue of 4: with one long reply running, 6 more requests give 4 that
    wait their turn and 2 refused at once."""
    results: list[httpx2.Response | None] = [None] * 6
    body = {"model": appliance.model, "messages": FRANCE, "temperature": 0, "max_tokens": 1}

    def ask(i: int) -> None:
        results[i] = httpx2.post(f"{appliance.url}/v1/chat/completions", json=body,
                                 headers=appliance.auth(), timeout=300)  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    with httpx2.Client(timeout=60) as raw:
        long, _ = open_long_stream(raw, appliance, events=2)
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while sum(r is not None for r in results) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            refused = [r for r in results if r is not None]
            assert len(refused) == 2, [r.status_code for r in refused]  # the others wait
        finally:
            long.close()  # cancels the long reply: the waiting ones run now
    for thread in threads:
        thread.join(120)
    assert all(r is not None for r in results)
    assert sorted(r.status_code for r in results) == [200] * 4 + [429] * 2
    for response in refused:
        assert response.status_code == 429 and response.headers["retry-after"] == "5"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
        assert "requests are already waiting" in error["message"]
    for response in results:
        if response.status_code == 200:
            assert response.json()["usage"]["completion_tokens"] == 1


# ---- a model that cannot be loaded -----------------------------------------------------------


def test_damaged_model_gives_503_with_the_reason(appliance: Appliance) -> None:
    broken = appliance.home / "models" / "broken.gguf"
    broken.write_bytes(b"\x00garbage" * 4096)  # registered while good, damaged now
    client = appliance.client()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=appliance.broken, messages=FRANCE)
    error = caught.value
    assert error.status_code == 503 and error.code == "model_unavailable"
    assert error.type == "server_error"
    message = error.body["message"] if isinstance(error.body, dict) else ""
    assert message.startswith("llama.cpp cannot load broken.gguf: invalid magic characters: "
                              "'"), message  # fmt: skip
    assert "expected 'GGUF'" in message
    assert error.response.headers["retry-after"] == "5"
    # the good model loads again at the next request
    answer = client.chat.completions.create(model=appliance.model, messages=FRANCE,
                                            temperature=0)  # fmt: skip
    assert answer.choices[0].message.content == PARIS


# ---- failed authentications are limited per address ------------------------------------------


def from_address(address: str) -> httpx2.Client:
    """A client whose connections come from another loopback address."""
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=60)


def test_wrong_keys_block_one_address_only(appliance: Appliance) -> None:
    url = f"{appliance.url}/v1/models"
    with from_address("127.0.0.2") as flood, from_address("127.0.0.3") as other:
        answers = [flood.get(url, headers=appliance.auth(f"ols_guess{i}")) for i in range(10)]
        assert [a.status_code for a in answers] == [401] * 10
        assert all("retry-after" not in a.headers for a in answers[:9])
        assert answers[9].headers["retry-after"] == "30"  # the 10th failure blocks
        blocked = flood.get(url, headers=appliance.auth())  # even with the right key
        assert blocked.status_code == 429 and blocked.headers["retry-after"] in ("29", "30")
        assert blocked.json()["error"]["code"] == "too_many_failed_authentications"
        assert "127.0.0.2" in blocked.json()["error"]["message"]
        # another address with the right key is not slowed down, nor is 127.0.0.1
        assert other.get(url, headers=appliance.auth()).status_code == 200
    assert len(appliance.client().models.list().data) == 2


# ---- appliance to appliance ------------------------------------------------------------------


def test_second_appliance_chats_through_the_first(appliance: Appliance, library: Library) -> None:
    """This test's own home is the second appliance: its remote backend (backend "openai")
    points at the first one's /v1, with the first one's key."""
    entry = library.add_remote(appliance.url + "/v1", appliance.model, name="First appliance")
    host = Host(library, spare_worker=False)
    try:
        with pytest.raises(RemoteServerError, match=r"HTTP 401"):
            host.load(entry.id, api_key="ols_wrong")
        status = host.load(entry.id, api_key=appliance.secret)
        assert (status.backend, status.phase, status.context_length) == ("openai", "ready", 4096)
        gen = host.chat(entry.id, FRANCE[1:], system_prompt=SYSTEM,
                        settings={"temperature": 0}, api_key=appliance.secret)  # fmt: skip
        chunks = list(gen)
        assert len(chunks) > 3 and "".join(chunks) == PARIS
        assert gen.result is not None and gen.result.finish == "stop"
    finally:
        host.shutdown()


# ---- TLS, and the API off until a key exists (a second server) -------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    loopback = ipaddress.ip_address("127.0.0.1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_file.chmod(0o600)
    return cert_file, key_file


def test_tls_and_api_off_without_keys(tmp_path: Path) -> None:
    home = tmp_path / "tls-home"
    paths = Paths(home).ensure()
    cert, key = self_signed(tmp_path)
    server = AppServer(home, tls=(cert, key)).start()
    # Connections are closed before the server stops: over TLS, an idle keep-alive
    # connection keeps the server from exiting on SIGTERM (see the report of issue 13).
    trusting = httpx2.Client(verify=ssl.create_default_context(cafile=str(cert)))
    untrusting = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    try:
        assert server.url.startswith("https://")
        store = KeyStore(paths)

        def client(secret: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=server.url + "/v1", api_key=secret, max_retries=0,
                                 http_client=trusting)  # fmt: skip

        with pytest.raises(openai.PermissionDeniedError) as caught:  # no key exists yet
            client("ols_anything").models.list()
        assert caught.value.status_code == 403 and caught.value.code == "api_disabled"
        made, secret = store.create("tls client")
        assert client(secret).models.list().data == []  # an empty library, over HTTPS
        with pytest.raises(openai.AuthenticationError):
            client("ols_wrong").models.list()
        store.revoke(made.id)  # the server re-reads the key file: off again
        with pytest.raises(openai.PermissionDeniedError):
            client(secret).models.list()
        _, secret = store.create("again")
        assert client(secret).models.list().data == []
        # the certificate is not trusted by default, and plain HTTP gets no answer
        with pytest.raises(openai.APIConnectionError) as caught_tls:
            untrusting.with_options(api_key=secret).models.list()
        assert "CERTIFICATE_VERIFY_FAILED" in repr(caught_tls.value.__cause__)
        plain = server.url.replace("https://", "http://") + "/v1/models"
        with pytest.raises(httpx2.RemoteProtocolError, match="disconnected without sending"):
            httpx2.get(plain, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    finally:
        trusting.close()
        untrusting.close()
        server.stop()


# ---- last: it blocks 127.0.0.1 for the rest of the module's server -----------------------------


def test_a_forwarded_header_does_not_dodge_the_limit(appliance: Appliance) -> None:
    """uvicorn would believe X-Forwarded-For from 127.0.0.1; the appliance counts the
    connection's own address, so a flood that names a new address each time is blocked."""
    url = f"{appliance.url}/v1/models"
    with httpx2.Client(timeout=60) as flood:
        codes = [
            flood.get(url, headers={**appliance.auth(f"ols_guess{i}"),
                                    "X-Forwarded-For": f"10.0.{i}.1"}).status_code
            for i in range(11)
        ]  # fmt: skip
        # Earlier tests' wrong keys from 127.0.0.1 may already count: blocked by the 10th.
        assert 429 in codes and set(codes) == {401, 429}, codes
        blocked = flood.get(url, headers={**appliance.auth(), "X-Forwarded-For": "10.9.9.9"})
    assert blocked.status_code == 429
    assert "127.0.0.1" in blocked.json()["error"]["message"]
