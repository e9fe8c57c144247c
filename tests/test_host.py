"""The host with a scripted backend in real worker processes and an injected clock."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from appliance.engine import (
    BackendUnavailable,
    ContextOverflow,
    EngineBusy,
    GenerationError,
    Host,
    InvalidChat,
    InvalidOptions,
    ModelLoadError,
    WorkerCrashed,
)
from appliance.library.library import Library
from tests.engine_fakes import FAKE, MISSING, FakeClock, add_fake_model, pid_alive

USER = [{"role": "user", "content": "hi"}]
SLOW = " ".join(f"w{i}" for i in range(400))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(library: Library, clock: FakeClock) -> Iterator[Host]:
    host = Host(library, clock=clock, backends={"llama.cpp": FAKE}, spare_worker=False,
                idle_poll_s=3600)  # fmt: skip
    yield host
    host.shutdown()


def first_chunk(gen) -> tuple[Iterator[str], str]:
    stream = iter(gen)
    return stream, next(stream)


def test_chat_streams_and_reports(host: Host, library: Library) -> None:
    model = add_fake_model(library, "a", reply="one two three")
    gen = host.chat(model, USER)
    assert list(gen) == ["one", " two", " three"]
    result = gen.result
    assert (result.text, result.stopped, result.error, result.finish) == (
        "one two three", False, None, "stop")  # fmt: skip
    assert (result.prompt_tokens, result.completion_tokens, result.context_length) == (3, 3, 1000)
    status = host.status()
    assert (status.model_id, status.phase, status.backend, status.context_length) == (
        model, "ready", "llama.cpp", 1000)  # fmt: skip


def test_queue_positions_and_order(library: Library, clock: FakeClock) -> None:
    host = Host(library, clock=clock, backends={"llama.cpp": FAKE}, spare_worker=False,
                queue_size=3, idle_poll_s=3600)  # fmt: skip
    try:
        slow = add_fake_model(library, "slow", reply=SLOW, delay_s=0.01)
        quick = add_fake_model(library, "quick", reply="done")
        running = host.chat(slow, USER)
        stream, _ = first_chunk(running)
        waiting = [host.chat(quick, USER) for _ in range(3)]
        assert running.position() == 0
        assert [g.position() for g in waiting] == [1, 2, 3]
        with pytest.raises(EngineBusy, match="3 requests are already waiting"):
            host.chat(quick, USER)
        assert [g.position() for g in waiting] == [1, 2, 3]  # the refusal changed nothing
        assert "".join(stream).endswith("w399")
        assert [("".join(g), g.position()) for g in waiting] == [("done", 0)] * 3
        assert host.chat(quick, USER) is not None  # room again
    finally:
        host.shutdown()


def test_cancel_running_keeps_partial_text_within_half_a_second(
    host: Host, library: Library
) -> None:
    model = add_fake_model(library, "slow", reply=SLOW, delay_s=0.02)
    gen = host.chat(model, USER)
    stream, head = first_chunk(gen)
    started = time.monotonic()
    gen.cancel()
    rest = list(stream)
    assert time.monotonic() - started < 0.5
    result = gen.result
    assert result.stopped and result.finish == "cancelled" and result.error is None
    assert result.text == head + "".join(rest)
    assert result.text.startswith("w0") and not result.text.endswith("w399")
    follow = host.chat(model, USER, settings={"max_tokens": 2})  # the worker serves the next
    assert "".join(follow) == "w0 w1"


def test_cancel_waiting_request(host: Host, library: Library) -> None:
    slow = add_fake_model(library, "slow", reply=SLOW, delay_s=0.01)
    running = host.chat(slow, USER)
    first_chunk(running)
    waiting = host.chat(slow, USER)
    assert waiting.position() == 1
    waiting.cancel()
    assert waiting.position() == 0
    assert list(waiting) == []
    assert waiting.result.stopped and waiting.result.text == ""
    running.cancel()


def test_idle_unload_after_keep_alive(library: Library, clock: FakeClock) -> None:
    host = Host(library, clock=clock, backends={"llama.cpp": FAKE}, keep_alive_s=1800,
                spare_worker=False, idle_poll_s=3600)  # fmt: skip
    try:
        model = add_fake_model(library, "a")
        assert "".join(host.chat(model, USER)) == "hello there"
        [pid] = host.worker_pids()
        clock.advance(1799)
        assert host.check_idle() is False and host.status().phase == "ready"
        clock.advance(2)
        assert host.check_idle() is True
        assert host.status().phase == "idle" and host.status().model_id is None
        assert not pid_alive(pid) and host.worker_pids() == []
        assert "".join(host.chat(model, USER)) == "hello there"  # reloads on demand
    finally:
        host.shutdown()


def test_keep_alive_zero_never_unloads(library: Library, clock: FakeClock) -> None:
    host = Host(library, clock=clock, backends={"llama.cpp": FAKE}, keep_alive_s=0,
                spare_worker=False, idle_poll_s=3600)  # fmt: skip
    try:
        host.load(add_fake_model(library, "a"))
        clock.advance(10**9)
        assert host.check_idle() is False and host.status().phase == "ready"
    finally:
        host.shutdown()


def test_no_idle_unload_while_generating(host: Host, library: Library, clock: FakeClock) -> None:
    gen = host.chat(add_fake_model(library, "slow", reply=SLOW, delay_s=0.01), USER)
    first_chunk(gen)
    clock.advance(10**6)
    assert host.check_idle() is False
    gen.cancel()


def test_sigkill_mid_stream_keeps_partial_reply_and_recovers(host: Host, library: Library) -> None:
    model = add_fake_model(library, "slow", reply=SLOW, delay_s=0.01)
    gen = host.chat(model, USER)
    received = []
    with pytest.raises(WorkerCrashed, match=r"died \(SIGKILL: killed; the system may have run out"):
        for text in gen:
            received.append(text)
            if len(received) == 5:
                os.kill(host.worker_pids()[0], signal.SIGKILL)
    assert gen.result.text == "".join(received) and len(received) >= 5
    assert "partial reply is kept" in gen.result.error
    assert host.status().phase == "error"
    again = host.chat(model, USER, settings={"max_tokens": 3})
    assert "".join(again) == "w0 w1 w2"
    assert host.status().phase == "ready"


def test_abort_while_loading_leaves_the_host_usable(host: Host, library: Library) -> None:
    bad = add_fake_model(library, "aborts", abort_on_load=True)
    good = add_fake_model(library, "good", reply="fine")
    with pytest.raises(
        ModelLoadError,
        match=r"Cannot load aborts .*aborts\.gguf\): the worker "
        r"process crashed while loading it \(SIGABRT: aborted by native code",
    ):
        host.load(bad)
    assert host.status().phase == "error" and host.worker_pids() == []
    gen = host.chat(bad, USER)
    with pytest.raises(ModelLoadError, match="SIGABRT"):
        list(gen)
    assert "".join(host.chat(good, USER)) == "fine"


def test_switch_stops_the_previous_worker(host: Host, library: Library) -> None:
    a, b = (
        add_fake_model(library, "a", reply="from a"),
        add_fake_model(library, "b", reply="from b"),
    )
    seen = []
    host.load(a, progress=seen.append)
    [pid_a] = host.worker_pids()
    status = host.load(b, progress=seen.append)
    assert status.model_id == b and status.phase == "ready"
    assert not pid_alive(pid_a)
    assert seen == ["loading a", "fake: reading the script", "ready",
                    "unloading a", "loading b", "fake: reading the script", "ready"]  # fmt: skip
    assert "".join(host.chat(a, USER)) == "from a"  # chat switches back by itself
    assert host.status().model_id == a


def test_unload_ends_the_worker(host: Host, library: Library) -> None:
    host.load(add_fake_model(library, "a"))
    [pid] = host.worker_pids()
    host.unload()
    assert not pid_alive(pid) and host.status().phase == "idle"


def test_spare_worker_takes_the_next_load(library: Library) -> None:
    host = Host(library, backends={"llama.cpp": FAKE}, idle_poll_s=3600)
    try:
        a, b = add_fake_model(library, "a"), add_fake_model(library, "b")
        host.load(a)
        resident, spare = host.worker_pids()
        host.load(b)
        assert host.worker_pids()[0] == spare and not pid_alive(resident)
        host.unload()
        assert host.worker_pids() == []
    finally:
        host.shutdown()


def test_load_error_from_the_backend(host: Host, library: Library) -> None:
    model = add_fake_model(library, "bad", fail_load="bad.gguf: no good")
    with pytest.raises(ModelLoadError, match="^bad.gguf: no good$"):
        host.load(model)


def test_backend_failure_while_generating(host: Host, library: Library) -> None:
    gen = host.chat(add_fake_model(library, "oops", fail_chat="boom"), USER)
    with pytest.raises(GenerationError, match="The backend failed: RuntimeError: boom"):
        list(gen)
    assert gen.result.error == "The backend failed: RuntimeError: boom"


def test_missing_file(host: Host, library: Library) -> None:
    model = add_fake_model(library, "gone")
    (library.paths.models / "gone.gguf").unlink()
    with pytest.raises(ModelLoadError, match=r"Cannot load gone: .*gone\.gguf is missing"):
        host.load(model)


def test_missing_extra_names_it(library: Library) -> None:
    host = Host(library, backends={"llama.cpp": MISSING}, spare_worker=False)
    try:
        with pytest.raises(BackendUnavailable, match=r"Install the 'imaginary' extra"):
            host.chat(add_fake_model(library, "a"), USER)
    finally:
        host.shutdown()


def test_registry_defaults_and_overrides(host: Host, library: Library) -> None:
    model = add_fake_model(library, "s", reply="{settings}")
    library.set_defaults(model, {"system_prompt": "Be brief.", "temperature": 0.2, "seed": 7})
    got = json.loads("".join(host.chat(model, USER)))
    assert got["system"] == "Be brief."
    assert (got["settings"]["temperature"], got["settings"]["seed"]) == (0.2, 7)
    got = json.loads("".join(host.chat(model, USER, system_prompt="", settings={"top_k": 5})))
    assert got["system"] is None and got["settings"]["top_k"] == 5
    assert got["settings"]["temperature"] == 0.2


def test_context_fitting_drops_oldest_turns(host: Host, library: Library) -> None:
    model = add_fake_model(library, "small", reply="{settings}", context=60)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " + "x " * 8},
                    {"role": "assistant", "content": f"answer {i} " + "y " * 8}]  # fmt: skip
    history.append({"role": "user", "content": "last"})
    gen = host.chat(model, history, system_prompt="sys", settings={"max_tokens": 10})
    got = json.loads("".join(gen))
    # 11 "tokens" per message; the budget is 60 - 10 for the reply: two exchanges fit.
    assert gen.dropped_turns == gen.result.dropped_turns == 8
    assert got["system"] == "sys" and got["n"] == 6  # system + 2 exchanges + "last"
    assert gen.result.prompt_tokens == 49


def test_single_message_too_long(host: Host, library: Library) -> None:
    model = add_fake_model(library, "small", context=60)
    gen = host.chat(model, [{"role": "user", "content": "z " * 200}], settings={"max_tokens": 10})
    with pytest.raises(ContextOverflow, match=r"takes 202 tokens, and the context window holds 60"):
        list(gen)


@pytest.mark.parametrize(
    ("messages", "settings", "error", "match"),
    [
        ([], None, InvalidChat, "at least one message"),
        ([{"role": "system", "content": "x"}], None, InvalidChat, "use 'user' or 'assistant'"),
        ([{"role": "assistant", "content": "x"}], None, InvalidChat, "last message must be"),
        (USER, {"temperature": 9}, InvalidChat, r"settings.temperature must be between"),
        (USER, {"nope": 1}, InvalidChat, "not a known setting"),
    ],
)  # fmt: skip
def test_bad_requests(host: Host, library: Library, messages, settings, error, match) -> None:
    with pytest.raises(error, match=match):
        host.chat(add_fake_model(library, "a"), messages, settings=settings)


def test_bad_load_options(host: Host, library: Library) -> None:
    with pytest.raises(InvalidOptions, match="n_ctx must be a whole number from 64"):
        host.load(add_fake_model(library, "a"), options={"n_ctx": 1})


def test_shutdown_ends_waiting_requests(library: Library) -> None:
    host = Host(library, backends={"llama.cpp": FAKE}, spare_worker=False)
    slow = add_fake_model(library, "slow", reply=SLOW, delay_s=0.01)
    running = host.chat(slow, USER)
    first_chunk(running)
    waiting = host.chat(slow, USER)
    host.shutdown()
    assert running.result.stopped
    assert "shut down" in waiting.result.error
    assert host.worker_pids() == []
