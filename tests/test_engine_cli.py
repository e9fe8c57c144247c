"""`appliance chat` and `appliance bench` as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import run


def test_chat_streams_paris(demo_model: Path) -> None:
    run("models", "add", str(demo_model), "--in-place")
    proc = run("chat", "smollm2-135m-instruct.q4_1", "What is the capital of France?",
               "--system", "You are a helpful assistant.", "--temperature", "0")  # fmt: skip
    assert proc.stdout == "The capital of France is Paris.\n"


def test_chat_flags_reach_the_model(demo_model: Path) -> None:
    run("models", "add", str(demo_model), "--in-place")
    proc = run("chat", "smollm2-135m-instruct.q4_1", "Count from one to twenty.",
               "--temperature", "0", "--max-tokens", "3", "--n-ctx", "512")  # fmt: skip
    assert 0 < len(proc.stdout.split()) <= 3


def test_chat_errors_are_one_line(demo_model: Path) -> None:
    proc = run("chat", "ghost", "hi", check_rc=1)
    assert (
        proc.stderr
        == "error: No model with id 'ghost'. Run `appliance models list` to see the ids.\n"
    )
    run("models", "add", str(demo_model), "--in-place")
    proc = run("chat", "smollm2-135m-instruct.q4_1", "hi", "--temperature", "5", check_rc=1)
    assert proc.stderr.startswith("error: Invalid setting: settings.temperature must be between")
    proc = run("chat", "smollm2-135m-instruct.q4_1", "hi", "--save", check_rc=1)
    assert proc.stderr.startswith("error: ")  # no vault yet: it says how to create one
    assert "appliance vault init" in proc.stderr


def test_chat_save_continues_the_conversation(demo_model: Path) -> None:
    password = "correct horse battery staple\n"
    run("vault", "init", stdin=password + password)
    run("models", "add", str(demo_model), "--in-place")
    args = ("--system", "You are a helpful assistant.", "--temperature", "0")
    first = run("chat", "smollm2-135m-instruct.q4_1", "What is the capital of France?", *args,
                "--save", stdin=password)  # fmt: skip
    assert first.stdout == "The capital of France is Paris.\n"
    assert first.stderr.startswith("saved to conversation ")
    run("chat", "smollm2-135m-instruct.q4_1", "And of Italy?", *args, "--save", stdin=password)
    listing = run("history", "list", "smollm2-135m-instruct.q4_1", stdin=password).stdout
    (line,) = listing.splitlines()
    assert "    4 msgs  What is the capital of France?" in line
    exported = json.loads(run("history", "export", "smollm2-135m-instruct.q4_1", "--format",
                              "json", stdin=password).stdout)  # fmt: skip
    contents = [m["content"] for m in exported["messages"]]
    assert contents[:3] == ["What is the capital of France?", "The capital of France is Paris.",
                            "And of Italy?"]  # fmt: skip
    assert len(contents) == 4


def test_bench_json(demo_model: Path) -> None:
    proc = run("bench", "--json", "--runs", "1", "--max-tokens", "16", "--no-transformers")
    result = json.loads(proc.stdout)
    figures = result["llama_cpp"]
    assert result["version"] == 1 and result["machine"]["physical_cores"] >= 1
    for key in ("decode_ratio", "first_token_delta_ms", "switch_overhead_s", "rss_change_pct"):
        assert isinstance(figures[key], float | int)
    assert figures["decode_tps_raw"] > 0 and figures["tokens_per_run"] == 16
