"""llama.cpp's own server (appliance.engine.llama_server) on the real demo model.

The program is built by `make install` (scripts/build-llama-server, portable flavour:
every x86-64 CPU variant as its own libggml-cpu-*.so), so none of this is skipped.
Greedy decoding (temperature 0, fixed seed) makes the replies exact.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from appliance.engine.errors import InvalidOptions, ModelLoadError
from appliance.engine.llama_server import (
    AVOIDED_VARIANTS,
    LlamaClient,
    LlamaServer,
    ServerHTTPError,
    ServerLost,
    ServerOptions,
    ServerUnavailable,
    build_info,
    cpu_variants,
    find_binary,
    server_env,
)
from appliance.paths import APP_ROOT
from tests.conftest import DEMO_MODEL
from tests.engine_fakes import pid_alive
from tests.engine_models import DAMAGE

GREEDY = {"temperature": 0, "seed": 42}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FRANCE = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
FRANCE_REPLY = "The capital of France is Paris."
SEA = [SYSTEM, {"role": "user", "content": "Write a short poem about the sea."}]
# Replies that do not change with the batch they are decoded in. (Greedy decoding is
# not batch-invariant in llama.cpp: a long free-form reply, like the poem, can take
# another turn when it shares a batch or reuses a cached prefix.)
STORY = [SYSTEM, {"role": "user", "content": "Write a short story about a cat."}]
COUNT = [SYSTEM, {"role": "user", "content": "Count from 1 to 20, separated by commas."}]
OPTIONS = ServerOptions(n_ctx=2048, n_threads=2, parallel=2)


@pytest.fixture(scope="module")
def server() -> LlamaServer:
    """One server with two parallel slots, shared by the read-only tests."""
    with LlamaServer(DEMO_MODEL, OPTIONS) as srv:
        yield srv


def _text(chunks: list[dict]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for c in chunks for choice in c.get("choices", ())
    )


def test_the_build_is_portable_with_every_cpu_variant() -> None:
    binary = find_binary()
    info = build_info(binary)
    assert info["flavour"] == "portable" and info["sdist_sha256"].startswith("832db069")
    assert "-DGGML_CPU_ALL_VARIANTS=ON" in info["cmake_flags"]
    variants = cpu_variants(binary)
    assert {"x64", "sse42", "haswell", "skylakex", "icelake", "zen4"} <= set(variants)
    assert (binary.parent / "llama-bench").is_file()
    assert (binary.parent / "llama-batched-bench").is_file()


def test_health_exact_reply_and_the_best_cpu_variant(server: LlamaServer) -> None:
    client = server.client()
    assert client.health() == {"status": "ok"}
    chunks = list(client.chat_stream(FRANCE, max_tokens=64, **GREEDY))
    assert _text(chunks) == FRANCE_REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    # llama-server counts the end-of-turn token too (llama-cpp-python's backend says 7).
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (27, 8)
    # The loaded kernels are the best of the variants for this CPU, never the baseline.
    assert server.cpu_backend in cpu_variants(server.binary)
    assert server.cpu_backend != "x64" and server.cpu_backend not in AVOIDED_VARIANTS
    assert 50 * 2**20 < server.rss_bytes() < 1024 * 2**20


def test_tokenize_template_and_native_completion(server: LlamaServer) -> None:
    client = server.client()
    prompt = client.apply_template(FRANCE)
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    tokens = client.tokenize(prompt)
    assert len(tokens) == 27 and all(isinstance(t, int) for t in tokens)
    assert client.detokenize(tokens) == prompt
    chunks = list(client.completion_stream(prompt, n_predict=64, **GREEDY))
    assert "".join(c["content"] for c in chunks) == FRANCE_REPLY
    assert chunks[-1]["stop"] is True


def test_two_concurrent_streams_each_get_their_own_reply(server: LlamaServer) -> None:
    client = server.client()
    alone = {
        "story": client.chat_text(STORY, max_tokens=64, **GREEDY),
        "count": client.chat_text(COUNT, max_tokens=64, **GREEDY),
    }
    assert len(alone["story"]) > 100  # long enough to overlap the other one
    assert alone["count"].startswith("1. 1\n2. 2\n3. 3\n")
    spans: dict[str, list[float]] = {}
    replies: dict[str, str] = {}
    start = threading.Barrier(2)

    def run(name: str, messages: list[dict]) -> None:
        start.wait()
        chunks, times = [], []
        for chunk in client.chat_stream(messages, max_tokens=64, **GREEDY):
            chunks.append(chunk)
            times.append(time.monotonic())
        spans[name], replies[name] = [times[0], times[-1]], _text(chunks)

    threads = [threading.Thread(target=run, args=("story", STORY)),
               threading.Thread(target=run, args=("count", COUNT))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # Each got its own reply (batched decoding is not bit-identical to decoding alone,
    # so the story may take another turn; the counting is unambiguous).
    assert replies["count"].startswith("1. 1\n2. 2\n3. 3\n")
    assert len(replies["story"]) > 100 and "1. 1\n2. 2" not in replies["story"]
    # Both were generating at the same time (two slots), not one after the other.
    assert spans["story"][0] < spans["count"][1] and spans["count"][0] < spans["story"][1]


def test_every_request_needs_the_key(server: LlamaServer) -> None:
    for key in (None, "wrong-key"):
        bare = LlamaClient(server.socket_path, key)
        for call in (
            lambda c: c.chat_text(FRANCE, max_tokens=4),
            lambda c: c.tokenize("Paris"),
            lambda c: c.apply_template(FRANCE),
            lambda c: list(c.completion_stream("Hello", n_predict=2)),
            lambda c: c.props(),
            lambda c: c.slots(),
        ):
            with pytest.raises(ServerHTTPError, match="Invalid API Key") as caught:
                call(bare)
            assert caught.value.status == 401
    # Only /health is public, as llama-server defines it.
    assert LlamaClient(server.socket_path, None).health() == {"status": "ok"}
    # The key is in neither the command line nor the environment of the process.
    proc = psutil.Process(server.pid)
    key = server._key
    assert key not in " ".join(proc.cmdline()) and key not in str(proc.environ())
    assert "--api-key-file" in proc.cmdline()


def test_private_folder_modes_and_cleanup_on_stop() -> None:
    srv = LlamaServer(DEMO_MODEL, ServerOptions(n_ctx=512, n_threads=2)).start()
    folder, pid = srv.private_dir, srv.pid
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "api-key").stat().st_mode) == 0o600
    assert stat.S_ISSOCK(srv.socket_path.stat().st_mode)
    assert srv.alive() and pid_alive(pid)
    srv.stop()
    assert not folder.exists() and not srv.alive() and not pid_alive(pid)
    assert srv.returncode() == 0  # SIGTERM: a clean shutdown
    srv.stop()  # idempotent


def test_kill_9_mid_generation_gives_a_clear_error() -> None:
    with LlamaServer(DEMO_MODEL, ServerOptions(n_ctx=2048, n_threads=2)) as srv:
        client = srv.client()
        stream = client.chat_stream(SEA, max_tokens=400, ignore_eos=True, **GREEDY)
        next(stream)
        next(stream)
        os.kill(srv.pid, signal.SIGKILL)
        with pytest.raises(ServerLost) as caught:
            for _ in stream:
                pass
        assert str(caught.value).startswith(
            "llama-server stopped during the request (SIGKILL: killed; the system may have "
            "run out of memory"
        )
        assert not srv.alive()
        with pytest.raises(ServerLost, match="SIGKILL"):
            client.chat_text(FRANCE, max_tokens=4)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "failed to read magic"),
        ("random", "invalid magic characters: '??m<', expected 'GGUF'"),
        ("truncated", "tensor 'output_norm.weight' data is not within the file bounds, "
                      "model is corrupted or incomplete"),
    ],
)  # fmt: skip
def test_a_damaged_file_gives_llama_cpps_reason(tmp_path: Path, kind: str, reason: str) -> None:
    target = tmp_path / f"{kind}.gguf"
    target.write_bytes(DAMAGE[kind](DEMO_MODEL.read_bytes()))
    srv = LlamaServer(target, ServerOptions(n_ctx=512, n_threads=2))
    with pytest.raises(ModelLoadError) as caught:
        srv.start()
    assert str(caught.value) == (
        f"llama.cpp cannot load {kind}.gguf: {reason}. If the file was copied, copy it again "
        "from the original; otherwise the file is damaged or not a model this llama.cpp "
        "supports."
    )
    assert not srv.alive() and not srv.private_dir.exists()


def test_a_missing_file_and_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no such file"):
        LlamaServer(tmp_path / "absent.gguf").start()
    with pytest.raises(ServerUnavailable, match=r"llama-server is not built.*make install"):
        LlamaServer(DEMO_MODEL, binary=tmp_path / "llama-server")
    with pytest.raises(InvalidOptions, match="parallel must be 1 to 64"):
        LlamaServer(DEMO_MODEL, ServerOptions(parallel=0))


def test_the_baseline_cpu_variant_can_be_forced_and_still_replies() -> None:
    with LlamaServer(DEMO_MODEL, ServerOptions(n_ctx=512, n_threads=2), cpu_variant="x64") as srv:
        assert srv.cpu_backend == "x64"
        assert srv.client().chat_text(FRANCE, max_tokens=32, **GREEDY) == FRANCE_REPLY
    with pytest.raises(InvalidOptions, match=r"no CPU variant 'pentium4' \(available: .*x64"):
        LlamaServer(DEMO_MODEL, cpu_variant="pentium4").start()


def test_avoided_variants_are_left_out_of_ggmls_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a SIGILL at start does to the variant that crashed (seen here: this VM's CPU
    reports AMX, and the sapphirerapids kernels die of SIGILL while warming up)."""
    from appliance.engine import llama_server

    keep = {"x64", "sse42", "haswell"}
    monkeypatch.setattr(llama_server, "AVOIDED_VARIANTS", set(cpu_variants(find_binary())) - keep)
    with LlamaServer(DEMO_MODEL, ServerOptions(n_ctx=512, n_threads=2)) as srv:
        assert srv.cpu_backend == "haswell"
        assert {p.name for p in (srv.private_dir / "bin").glob("libggml-cpu-*")} == {
            f"libggml-cpu-{v}.so" for v in keep
        }


def test_the_environment_cannot_add_a_key_or_override_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAMA_API_KEY", "from-the-environment")
    monkeypatch.setenv("LLAMA_ARG_HOST", "0.0.0.0")
    env = server_env()
    assert "LLAMA_API_KEY" not in env and "LLAMA_ARG_HOST" not in env
    assert env["HF_HUB_OFFLINE"] == "1"


def test_a_server_never_outlives_the_app(tmp_path: Path) -> None:
    """The app killed with SIGKILL (no cleanup runs): its llama-server dies with it, so
    the model's memory is freed (setpriv --pdeathsig, from one long-lived thread)."""
    script = tmp_path / "app.py"
    script.write_text(
        "import sys, threading\n"
        "from appliance.engine.llama_server import LlamaServer, ServerOptions\n"
        "holder = []\n"
        "def start():  # a short-lived thread, as a page's script run is\n"
        "    holder.append(LlamaServer(sys.argv[1], ServerOptions(n_ctx=256, n_threads=1)).start())\n"
        "t = threading.Thread(target=start); t.start(); t.join()\n"
        "print(holder[0].pid, flush=True)\n"
        "threading.Event().wait()\n"
    )
    app = subprocess.Popen([sys.executable, str(script), str(DEMO_MODEL)], cwd=APP_ROOT,
                           stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(APP_ROOT)})  # fmt: skip
    try:
        server_pid = int(app.stdout.readline())
        time.sleep(1.0)  # the short-lived thread is long gone: the server must live on
        assert psutil.pid_exists(server_pid)
        assert psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE
    finally:
        app.kill()
        app.wait()
    deadline = time.monotonic() + 10
    while (
        psutil.pid_exists(server_pid)
        and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE
    ):
        assert time.monotonic() < deadline, "llama-server outlived the app"
        time.sleep(0.05)
