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


def test_bench_reports_every_figure_with_its_target(demo_model: Path) -> None:
    """The bench runs end to end (tiny runs) and reports each figure, its target and
    pass/fail; whether the targets are met depends on the machine, so it is not checked."""
    proc = run("bench", "--json", "--runs", "1", "--max-tokens", "8", "--no-transformers")
    result = json.loads(proc.stdout)
    figures = result["llama_cpp"]
    assert result["version"] == 2 and result["machine"]["physical_cores"] >= 1
    keys = ("decode_ratio", "concurrent_ratio", "concurrent_vs_serial", "worst_first_token_s",
            "turn10_first_token_ratio", "switch_overhead_s", "rss_change_pct",
            "api_decode_ratio", "api_first_token_delta_ms")  # fmt: skip
    assert [c["figure"] for c in result["checks"]] == list(keys)
    api = result["api"]
    for c in result["checks"]:
        source = api if c["figure"].startswith("api_") else figures
        assert isinstance(c["value"], float | int) and c["value"] == source[c["figure"]]
        assert c["target"] == result["targets"][c["figure"]]
        assert c["target"][0] in "≥≤±" and isinstance(c["pass"], bool)
    assert result["passed"] == all(c["pass"] for c in result["checks"])
    for key in ("decode_tps_llama_bench", "concurrent_tps_batched_bench", "decode_tps_host",
                "concurrent_tps_host", "concurrent_tps_serial_host"):  # fmt: skip
        assert figures[key] > 0
    assert 0 < figures["tokens_per_run_min"] <= 8
    assert api["decode_tps_api"] > 0 and api["first_token_ms_api"] > 0
    assert figures["build_flavour"] and figures["cpu_variant"]  # the portable build


def test_bench_table_shows_targets_and_verdicts() -> None:
    from appliance.commands.bench import table
    from appliance.engine.benchmark import check

    ll = {
        "model": "m.gguf", "n_threads": 2, "n_ctx": 2048, "runs": 1, "clients": 4,
        "cpu_variant": "haswell", "build_flavour": "portable", "first_token_ms_single": 30.0,
        "decode_tps_host": 100.0, "decode_tps_llama_bench": 101.0, "decode_ratio": 0.99,
        "concurrent_tps_host": 150.0, "concurrent_tps_batched_bench": 200.0,
        "concurrent_ratio": 0.75, "concurrent_tps_serial_host": 100.0,
        "concurrent_vs_serial": 1.5, "worst_first_token_s": 0.2,
        "turn1_first_token_ms": 30.0, "turn10_first_token_ms": 35.0,
        "turn10_first_token_ratio": 1.17, "switch_s": 0.9, "raw_load_s": 0.7,
        "switch_overhead_s": 0.2, "rss_before_mib": 40.0, "rss_after_unload_mib": 40.2,
        "rss_change_pct": 0.5,
    }  # fmt: skip
    keys = ("decode_ratio", "concurrent_ratio", "concurrent_vs_serial", "worst_first_token_s",
            "turn10_first_token_ratio", "switch_overhead_s", "rss_change_pct")  # fmt: skip
    ll["checks"] = [check(k, ll[k]) for k in keys]
    api = {"decode_tps_api": 97.0, "decode_tps_llama_bench": 101.0, "api_decode_ratio": 0.96,
           "first_token_ms_api": 70.0, "first_token_ms_host": 30.0,
           "api_first_token_delta_ms": 40.0}  # fmt: skip
    api["checks"] = [check(k, api[k]) for k in ("api_decode_ratio", "api_first_token_delta_ms")]
    machine = {"cpu": "CPU", "physical_cores": 2, "memory_gib": 8, "load_average": [0.1]}
    text = table({"machine": machine, "llama_cpp": ll, "api": api,
                  "checks": ll["checks"] + api["checks"]})  # fmt: skip
    assert "CPU variant haswell" in text and "portable build" in text
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert lines["decode tok/s, 4 clients / llama-batched-bench S_TG"].endswith("≥ 0.85   FAIL")
    assert lines["decode tok/s, 1 stream / llama-bench tg"].endswith("≥ 0.95   pass")
    assert lines["first token through /v1 / in-process host"].endswith("≤ 30 ms  FAIL")
    assert text.endswith("7 of 9 targets met")
