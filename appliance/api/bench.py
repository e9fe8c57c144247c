"""`appliance bench`'s API path: /v1 against the raw library and the in-process host.

A real server (`streamlit run appliance_server.py`, the UI and the API) starts on a free
loopback port with a home of its own (the model registered in place, one key, the same
threads, context and one slot as the other side). Round by round, alternating:

- llama-bench tg for the model (the raw library, as in the engine benchmark);
- a streamed /v1/chat/completions through the server: decode tokens/s after the first
  content chunk (the usage's completion tokens), and the seconds from sending the
  request to the first content chunk;
- the same request through an in-process Host: its first token.

Figures: API decode ÷ llama-bench tg (target ≥ 0.95), and API first token minus the
in-process host's (target ≤ +30 ms). Each request's system prompt starts differently,
so neither side finds its prompt in a cache, and each starts after a short idle pause.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.api.keys import KeyStore
from appliance.engine import benchmark as eb
from appliance.engine.errors import EngineError
from appliance.engine.host import Host
from appliance.library.library import Library
from appliance.paths import APP_ROOT, Paths

START_TIMEOUT_S = 90
IDLE_S = eb.IDLE_S  # before each measured request: the other server spin-waits a moment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """appliance_server.py in a subprocess, on its own home and port."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.log = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Server:
        env = {**os.environ, "APPLIANCE_HOME": str(self.home)}
        command = [sys.executable, "-m", "streamlit", "run", str(APP_ROOT / "appliance_server.py"),
                   "--server.port", str(self.port), "--server.address", "127.0.0.1",
                   "--server.headless", "true"]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=APP_ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    tail = self.log.read_text(errors="replace")[-1500:]
                    raise EngineError(f"the appliance server did not start: {tail}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stream(self, key: str, body: dict[str, Any]) -> tuple[float, float, float, int, str]:
        """(sent, first content chunk, last content chunk, completion tokens, text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        payload = json.dumps({**body, "stream": True,
                              "stream_options": {"include_usage": True}}).encode()  # fmt: skip
        sent = time.perf_counter()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", payload, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise EngineError(f"/v1/chat/completions answered {resp.status}: {resp.read()!r}")
        first = last = None
        tokens, parts = 0, []
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(text)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        conn.close()
        if first is None or last is None:
            raise EngineError("the API streamed no text")
        return sent, first, last, tokens, "".join(parts)


def bench_api(
    demo: Path, runs: int, max_tokens: int, threads: int, say: Callable[[str], None]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-api-") as scratch:
        home = Path(scratch) / "server"
        paths = Paths(home).ensure()
        (paths.config / "app.json").write_text(json.dumps(
            {"n_threads": threads, "n_ctx": eb.N_CTX, "parallel_slots": 1}))  # fmt: skip
        model_id = Library(paths).register(demo, external=True, name="bench-api").entry.id
        _key, secret = KeyStore(paths).create("bench")
        local = Library(Paths(Path(scratch) / "local").ensure())
        local_id = local.register(demo, external=True, name="bench-api").entry.id
        host = Host(local, keep_alive_s=0, spare_worker=False)
        say("API: starting appliance_server.py")
        try:
            with _Server(home) as server:
                host.load(local_id, options={"n_ctx": eb.N_CTX, "n_threads": threads,
                                             "n_gpu_layers": 0, "parallel": 1})  # fmt: skip
                tools = eb.Tools(host.status().cpu_variant, Path(scratch))
                settings = {"temperature": 0, "seed": 1, "max_tokens": max_tokens}
                rows: dict[str, list[float]] = {"tg": [], "api_tps": [], "api_first": [],
                                                "host_first": []}  # fmt: skip
                for i in range(runs + 1):  # round 0 warms up and is not counted
                    tg = tools.tg(demo, threads, max_tokens)
                    body = {"model": model_id, "messages": [
                        {"role": "system", "content": eb._system()}, *eb._story(i)],
                        **settings}  # fmt: skip
                    time.sleep(IDLE_S)
                    sent, first, last, tokens, _text = server.stream(secret, body)
                    time.sleep(IDLE_S)
                    local_run = eb._chat(host, local_id, eb._story(i), eb._system(), max_tokens)
                    if i == 0:
                        continue
                    api_tps = (tokens - 1) / max(last - first, 1e-9)
                    ms = (first - sent) * 1000, local_run.first_token_s * 1000
                    say(f"API round {i}/{runs}: {api_tps:.1f} vs {tg:.1f} tok/s, first token "
                        f"{ms[0]:.0f} vs {ms[1]:.0f} ms")  # fmt: skip
                    rows["tg"].append(tg)
                    rows["api_tps"].append(api_tps)
                    rows["api_first"].append(first - sent)
                    rows["host_first"].append(local_run.first_token_s)
        finally:
            with contextlib.suppress(Exception):
                host.shutdown()
    m = {k: eb._median(v) for k, v in rows.items()}
    figures = {
        "api_decode_ratio": round(m["api_tps"] / m["tg"], 3),
        "api_first_token_delta_ms": round((m["api_first"] - m["host_first"]) * 1000, 1),
    }
    return {
        "decode_tps_api": round(m["api_tps"], 1),
        "decode_tps_llama_bench": round(m["tg"], 1),
        "first_token_ms_api": round(m["api_first"] * 1000, 1),
        "first_token_ms_host": round(m["host_first"] * 1000, 1),
        **figures,
        "checks": [eb.check(key, value) for key, value in figures.items()],
    }
