"""Several people at once: the host serving the demo model through llama-server's slots.

Every reply is greedy (temperature 0, fixed seed). A reply generated next to others must
answer its own question, so no stream gets another's tokens. It is not compared word for
word with the same request alone: llama.cpp does not promise bit-identical logits between
batch sizes, and the demo model has near ties.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from appliance.engine import EngineError, Host, WorkerCrashed
from appliance.engine.generation import Generation
from appliance.engine.llama_server import LlamaClient
from appliance.library.library import Library
from tests.engine_models import register_demo

GREEDY = {"temperature": 0, "seed": 42, "max_tokens": 48}
PROMPTS = [
    "What is the capital of France?",
    "Count from 1 to 10, separated by commas.",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
]
# What each reply must contain (one of, any case): it answers its own question. Loose on
# purpose: batched decoding may take a reply another way (not another question's way).
ANSWERS = [("paris",), ("1, 2, 3",), ("rainbow", "red", "blue", "colo"), ("sea", "ocean")]


def answers(reply: str, words: tuple[str, ...]) -> bool:
    return any(word in reply.lower() for word in words)


SYSTEM = "You are a helpful assistant."
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def host(library: Library) -> Host:
    host = Host(library, spare_worker=False, queue_size=16)
    yield host
    host.shutdown()


def server_of(host: Host):
    resident = host._resident
    assert resident is not None and resident.kind == "server"
    return resident.backend.server


def run_together(host: Host, model: str, texts: list[str], settings: dict) -> list[Generation]:
    """Start every request at once, read each stream in its own thread."""
    gens = [host.chat(model, ask(t), system_prompt=SYSTEM, settings=settings) for t in texts]
    threads = [threading.Thread(target=lambda g=g: list(g)) for g in gens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return gens


@pytest.mark.parametrize("clients", [2, 4])
def test_concurrent_chats_each_get_their_own_reply(
    host: Host, library: Library, demo_model: Path, clients: int
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 4})
    alone = {
        t: "".join(host.chat(model, ask(t), system_prompt=SYSTEM, settings=GREEDY))
        for t in PROMPTS[:clients]
    }
    assert len(set(alone.values())) == clients  # different questions, different replies
    peak = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            peak.append(host.status().running)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    gens = run_together(host, model, PROMPTS[:clients], GREEDY)
    watching.set()
    watcher.join()
    for answer, gen in zip(ANSWERS, gens, strict=False):
        assert gen.result.error is None and answers(gen.result.text, answer)
    assert max(peak) == clients  # they generated at the same time, not in turn
    status = host.status()
    assert (status.running, status.waiting, status.capacity, status.phase) == (0, 0, 4, "ready")


def test_requests_beyond_the_slots_wait_in_the_queue(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 2})
    long = {**GREEDY, "max_tokens": 400}
    first = [host.chat(model, STORY, settings=long) for _ in range(2)]
    for gen in first:
        next(iter(gen))  # both are generating
    third = host.chat(model, ask(PROMPTS[0]), system_prompt=SYSTEM, settings=GREEDY)
    time.sleep(0.2)
    assert third.position() == 1 and host.status().running == 2
    first[0].cancel()
    assert "".join(third) and third.result.error is None
    first[1].cancel()


def test_cancelling_one_leaves_the_others_running(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 4})
    others = PROMPTS[:3]
    victim = host.chat(model, STORY, settings={**GREEDY, "max_tokens": 2000})
    gens = [host.chat(model, ask(t), system_prompt=SYSTEM, settings=GREEDY) for t in others]
    results: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i, g=g: results.__setitem__(i, "".join(g)))
        for i, g in enumerate(gens)
    ]
    for thread in threads:
        thread.start()
    received = []
    for text in victim:
        received.append(text)
        if len(received) == 5:
            victim.cancel()
    for thread in threads:
        thread.join(timeout=120)
    assert victim.result.stopped and victim.result.text == "".join(received)
    for i, answer in enumerate(ANSWERS[:3]):
        assert answers(results[i], answer)
    # The slot it held is free again: a fourth request runs at once.
    deadline = time.monotonic() + 5
    while host.status().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.status().running == 0


def test_kill_9_mid_generation_errors_every_caller_and_the_next_request_reloads(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 4})
    pid = host.worker_pids()[0]
    gens = [host.chat(model, STORY, settings={**GREEDY, "max_tokens": 2000}) for _ in range(3)]
    streams = [iter(g) for g in gens]
    for stream in streams:
        next(stream)  # all three are generating
    os.kill(pid, signal.SIGKILL)
    for gen, stream in zip(gens, streams, strict=True):
        with pytest.raises(WorkerCrashed, match=r"died \(llama-server: SIGKILL") as caught:
            list(stream)
        assert "The next message reloads the model" in str(caught.value)
        assert gen.result.text  # the partial reply is kept
    status = host.status()
    assert status.phase == "error" and host.worker_pids() == []
    again = host.chat(model, ask(PROMPTS[0]), system_prompt=SYSTEM, settings=GREEDY)
    assert "".join(again) and again.result.error is None
    assert host.worker_pids() and host.worker_pids()[0] != pid


def test_no_request_reaches_the_server_without_its_key(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 2})
    # Every kind of request the host makes: fitting (template, tokenize), chats,
    # completions, a cancel mid-stream.
    history = [*ask("Hi"), {"role": "assistant", "content": "Hello!"}, *ask(PROMPTS[0])]
    "".join(host.chat(model, history, system_prompt="Be brief.", settings=GREEDY))
    "".join(host.chat(model, ask("Once upon a time"), raw=True, settings=GREEDY))
    gen = host.chat(model, STORY, settings={**GREEDY, "max_tokens": 500})
    next(iter(gen))
    gen.cancel()
    run_together(host, model, PROMPTS[:2], GREEDY)
    server = server_of(host)
    time.sleep(0.3)  # let the log reader catch up
    assert not [line for line in server.log_tail(400) if "unauthorized" in line]
    # The check can fail: a request without the key is refused and logged.
    status, body = LlamaClient(server.socket_path, None).request(
        "POST", "/tokenize", {"content": "x"}
    )
    assert status == 401 and body["error"]["type"] == "authentication_error"
    deadline = time.monotonic() + 5
    while not [ln for ln in server.log_tail(400) if "unauthorized" in ln]:
        assert time.monotonic() < deadline, "the server did not log the refused request"
        time.sleep(0.05)


def test_consecutive_turns_reuse_the_cached_prompt(
    host: Host, library: Library, demo_model: Path
) -> None:
    model = register_demo(library, demo_model)
    host.load(model, options={"parallel": 2})
    client = server_of(host).client()

    def processed() -> int:
        for line in client.metrics().splitlines():
            if line.startswith("llamacpp:prompt_tokens_total"):
                return int(float(line.split()[1]))
        raise AssertionError("no prompt_tokens_total in /metrics")

    history: list[dict[str, str]] = []
    for turn in range(4):
        history.append({"role": "user", "content": f"Tell me fact number {turn} about the sea."})
        before = processed()
        gen = host.chat(model, history, system_prompt="Be brief.", settings=GREEDY)
        history.append({"role": "assistant", "content": "".join(gen)})
        evaluated = processed() - before
        if turn:
            # Only the new part of the prompt was evaluated: the earlier turns came from
            # the slot's KV cache.
            assert evaluated < gen.result.prompt_tokens / 2, (turn, evaluated)
        else:
            assert evaluated == gen.result.prompt_tokens


def _switch_while_running(library: Library, demo_model: Path, rule: str):
    host = Host(library, spare_worker=False, switch_rule=rule)
    first = register_demo(library, demo_model, "first")
    copy = library.paths.models / "copy.gguf"
    copy.write_bytes(demo_model.read_bytes())
    second = library.register(copy).entry.id
    host.load(first, options={"parallel": 2})
    running = [host.chat(first, STORY, settings={**GREEDY, "max_tokens": 120}) for _ in range(2)]
    streams = [iter(g) for g in running]
    for stream in streams:
        next(stream)
    return host, first, second, running


def test_switch_rule_wait_lets_running_replies_finish(library: Library, demo_model: Path) -> None:
    host, _first, second, running = _switch_while_running(library, demo_model, "wait")
    try:
        steps: list[str] = []
        host.load(second, progress=steps.append)
        assert any("waiting for 2 running replies" in s for s in steps)
        for gen in running:
            result = gen.wait(10)
            assert result.error is None and result.finish == "length"
            assert result.completion_tokens == 120
        assert host.status().model_id == second
    finally:
        host.shutdown()


def test_switch_rule_cancel_stops_them_with_a_message(library: Library, demo_model: Path) -> None:
    host, _first, second, running = _switch_while_running(library, demo_model, "cancel")
    try:
        started = time.monotonic()
        host.load(second)
        assert time.monotonic() - started < 10
        for gen in running:
            with pytest.raises(EngineError, match="stopped because copy.gguf|stopped because"):
                list(gen)
            assert gen.result.text  # the text so far is kept
            assert "was loaded in place of first" in gen.result.error
        assert host.status().model_id == second
    finally:
        host.shutdown()


def test_a_request_for_another_model_waits_for_the_running_ones(
    library: Library, demo_model: Path
) -> None:
    host, first, second, running = _switch_while_running(library, demo_model, "wait")
    try:
        other = host.chat(second, ask(PROMPTS[0]), system_prompt=SYSTEM, settings=GREEDY)
        reply = "".join(other)
        assert "Paris" in reply and other.result.error is None
        for gen in running:
            assert gen.result is not None and gen.result.error is None
        assert host.status().model_id == second
        # The host may also switch back for a request to the first model.
        back = host.chat(first, ask(PROMPTS[0]), system_prompt=SYSTEM, settings=GREEDY)
        assert "".join(back) == reply
    finally:
        host.shutdown()


def test_worker_backends_still_serve_one_at_a_time(library: Library) -> None:
    from tests.engine_fakes import FAKE, add_fake_model

    host = Host(library, backends={"llama.cpp": FAKE}, spare_worker=False)
    try:
        model = add_fake_model(library, "slow", reply="one two three", delay_s=0.05)
        gens = [host.chat(model, ask("hi")) for _ in range(3)]
        deadline = time.monotonic() + 60
        while host.status().running == 0:  # the first request loads the model
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.01)
        status = host.status()
        assert (status.capacity, status.running, status.runs_in) == (1, 1, "worker")
        assert [g.position() for g in gens[1:]] == [1, 2]
        assert ["".join(g) for g in gens] == ["one two three"] * 3
        assert not host.serves_in_parallel(model)
    finally:
        host.shutdown()
