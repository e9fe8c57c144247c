"""The host against llama.cpp's own tools, built from the same source, in one run.

The host path (Host.chat -> llama-server -> streamed chunks) is measured against
`llama-bench` and `llama-batched-bench`, which `scripts/build-llama-server` builds beside
`llama-server` from the same pinned source. The tools run with the CPU variant the
host's server loaded (a folder holding only that `libggml-cpu-<variant>.so`), the same
model and the same threads. Measurements alternate round by round (tool, host, tool,
host...), so both sides see the same machine load; each figure is the median of the
rounds.

- single stream: host decode tokens/s after the first token (parallel=1) ÷ llama-bench
  tg (target ≥ 0.95);
- 4 clients at once (parallel=4, 4 threads each calling Host.chat): aggregate decode
  tokens/s ÷ llama-batched-bench S_TG at 4 sequences (≥ 0.85), and ÷ the same 4
  requests through a host loaded with parallel=1 (≥ 1.4);
- the worst first token among those 4 clients (≤ 0.5 s);
- turn 10 of a conversation (9 generated turns of history, the same new message) against
  turn 1: first-token ratio (≤ 1.5; the server reuses the cached prefix);
- a switch A→B until B is ready against starting llama-server for B directly (≤ raw +
  0.3 s), and RSS of this process and its children after an unload against before the
  load (within 5 %);
- transformers tokens/s through the host ÷ raw `generate` on a safetensors model (no
  target).

Every figure comes with its target and whether it passed (`checks`). The /v1 API's
figures come from appliance.api.bench, which `appliance bench` runs after these.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import operator
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from appliance.engine.backends.llama_cpp import MAX_BATCH
from appliance.engine.errors import EngineError
from appliance.engine.host import Host
from appliance.engine.llama_server import (
    LlamaServer,
    ServerOptions,
    _variant_view,
    build_info,
    cpu_variants,
    find_binary,
    server_env,
)
from appliance.engine.options import physical_cores
from appliance.library.library import Library
from appliance.paths import Paths

VERSION = 2
SYSTEM = "You are a helpful assistant."
STORY = "Write a long story about a dragon who learns to bake bread. Run {i}."
QUESTION = "Tell me one more short fact about bread."
N_CTX = 2048  # per slot, as the host loads it
CLIENTS = 4
PROMPT_TOKENS = 32  # llama-batched-bench -npp: about the host's prompts
TOOLS = ("llama-bench", "llama-batched-bench")
# A pause before a measurement that follows another llama-server's replies: llama.cpp's
# threads spin-wait for work a moment after a batch (--poll), which on a small machine
# slows down whatever runs next.
IDLE_S = 0.3
# (key, comparison, limit, unit); the text of each target is made from these.
TARGETS: dict[str, tuple[str, float, str]] = {
    "decode_ratio": (">=", 0.95, ""),
    "concurrent_ratio": (">=", 0.85, ""),
    "concurrent_vs_serial": (">=", 1.4, "x"),
    "worst_first_token_s": ("<=", 0.5, " s"),
    "turn10_first_token_ratio": ("<=", 1.5, ""),
    "switch_overhead_s": ("<=", 0.3, " s"),
    "rss_change_pct": ("within", 5.0, " %"),
    # the /v1 API path (appliance.api.bench)
    "api_decode_ratio": (">=", 0.95, ""),
    "api_first_token_delta_ms": ("<=", 30.0, " ms"),
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "within": lambda value, limit: abs(value) <= limit,
}
_SIGNS = {">=": "≥", "<=": "≤", "within": "±"}
_ids = itertools.count(1)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }


def tree_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def check(key: str, value: float) -> dict[str, Any]:
    """One figure against its target: {"figure", "value", "target", "pass"}."""
    op, limit, unit = TARGETS[key]
    return {
        "figure": key,
        "value": value,
        "target": f"{_SIGNS[op]} {limit:g}{unit}",
        "pass": bool(_OPS[op](value, limit)),
    }


# -- the host side --------------------------------------------------------------------------


@dataclass
class Run:
    """One request through the host: seconds from chat() to the first chunk, the
    first and last chunk's clock, and the tokens generated."""

    first_token_s: float
    first: float
    end: float
    tokens: int
    text: str

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / max(self.end - self.first, 1e-9)


def _story(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": STORY.format(i=i)}]


def _system() -> str:
    """A system prompt that starts differently each request, so no request finds its
    prompt in the server's cache from an earlier one (the worst case for first token)."""
    return f"Session {next(_ids)}. {SYSTEM}"


def _chat(
    host: Host,
    model_id: str,
    messages: list[dict[str, str]],
    system: str,
    max_tokens: int,
) -> Run:
    settings = {"temperature": 0, "seed": 1, "max_tokens": max_tokens}
    start = time.perf_counter()
    gen = host.chat(model_id, messages, system_prompt=system, settings=settings)
    first = end = None
    parts = []
    for piece in gen:
        end = time.perf_counter()
        first = first or end
        parts.append(piece)
    if first is None or end is None or gen.result is None:
        raise EngineError(f"the host returned no text ({gen.result and gen.result.error})")
    return Run(first - start, first, end, gen.result.completion_tokens, "".join(parts))


def _clients(host: Host, model_id: str, max_tokens: int) -> list[Run]:
    """CLIENTS requests at once, each from its own thread."""
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> Run:
        barrier.wait()
        return _chat(host, model_id, _story(i), _system(), max_tokens)

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(client, range(CLIENTS)))


def _aggregate_tps(runs: list[Run]) -> float:
    """Tokens decoded after each request's first token, per second, from the first
    first-token to the last end (what S_TG counts: decoding, not the prompts)."""
    window = max(r.end for r in runs) - min(r.first for r in runs)
    return sum(r.tokens - 1 for r in runs) / max(window, 1e-9)


def _conversation(host: Host, model_id: str, tag: int, reply_tokens: int) -> tuple[float, float]:
    """First-token seconds of turn 1 and turn 10 of one conversation; every reply is
    generated by the model and appended, and each turn sends the same new message."""
    system = f"Session {tag % 10}. {SYSTEM}"
    history: list[dict[str, str]] = []
    firsts = []
    for _turn in range(10):
        history.append({"role": "user", "content": QUESTION})
        run = _chat(host, model_id, history, system, reply_tokens)
        firsts.append(run.first_token_s)
        history.append({"role": "assistant", "content": run.text})
    return firsts[0], firsts[9]


# -- llama.cpp's own tools -----------------------------------------------------------------


class Tools:
    """llama-bench and llama-batched-bench from the server's build, with the CPU variant
    the server loaded (a folder holding only that variant, as LlamaServer forces one)."""

    def __init__(self, variant: str | None, workdir: Path) -> None:
        server = find_binary()
        self.folder = server.parent
        missing = [t for t in TOOLS if not (self.folder / t).is_file()]
        if missing:
            raise EngineError(
                f"{', '.join(missing)} missing beside {server}: rebuild llama-server "
                "(`make install` builds the tools with it)."
            )
        self.workdir = workdir
        self.programs = {t: self.folder / t for t in TOOLS}
        if variant and variant in cpu_variants(server):
            for tool in TOOLS:
                view = workdir / f"{tool}-view"
                self.programs[tool] = _variant_view(self.folder / tool, [variant], view)

    def _run(self, tool: str, args: list[str]) -> str:
        proc = subprocess.run(
            [str(self.programs[tool]), *args],
            cwd=self.workdir,  # ggml also looks for CPU variants in the working directory
            env=server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise EngineError(f"{tool} failed (exit status {proc.returncode}): {tail}")
        return proc.stdout

    def tg(self, model: Path, threads: int, tokens: int) -> float:
        """llama-bench's text-generation tokens/s (one repetition after its warm-up)."""
        out = self._run("llama-bench", ["-m", str(model), "-t", str(threads), "-p", "0",
                                        "-n", str(tokens), "-r", "1", "-o", "json"])  # fmt: skip
        (row,) = [r for r in json.loads(out) if r.get("n_gen")]
        return float(row["avg_ts"])

    def batched_tg(self, model: Path, threads: int, tokens: int, sequences: int) -> float:
        """llama-batched-bench's S_TG (generation tokens/s over all sequences)."""
        out = self._run("llama-batched-bench", [
            "-m", str(model), "-t", str(threads), "-tb", str(threads),
            "-c", str(N_CTX * sequences), "-b", str(MAX_BATCH), "-ub", str(MAX_BATCH),
            "-npp", str(PROMPT_TOKENS), "-ntg", str(tokens), "-npl", str(sequences),
            "-kvu", "--output-format", "jsonl",
        ])  # fmt: skip
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        (row,) = [r for r in rows if r.get("pl") == sequences]
        return float(row["speed_tg"])


# -- the llama.cpp part -------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _server_options(threads: int, parallel: int, alias: str) -> ServerOptions:
    """What LlamaCppBackend starts llama-server with for these load options."""
    return ServerOptions(n_ctx=N_CTX * parallel, n_threads=threads, n_gpu_layers=0,
                         parallel=parallel, kv_unified=True, n_batch=min(MAX_BATCH, N_CTX),
                         alias=alias, embeddings=True)  # fmt: skip


def bench_llama(
    demo: Path, runs: int, max_tokens: int, threads: int, say: Callable[[str], None]
) -> dict:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as home:
        library = Library(Paths(Path(home)))
        a = library.register(demo, external=True, name="bench-a").entry.id
        copy = shutil.copyfile(demo, library.paths.models / "bench-b.gguf")
        b = library.register(copy, name="bench-b").entry.id

        def options(parallel: int) -> dict[str, int]:
            return {"n_ctx": N_CTX, "n_threads": threads, "n_gpu_layers": 0,
                    "parallel": parallel}  # fmt: skip

        host = Host(library, keep_alive_s=0, queue_size=2 * CLIENTS, spare_worker=False)
        serial = Host(library, keep_alive_s=0, queue_size=2 * CLIENTS, spare_worker=False)
        try:
            say("memory: before load / after unload")
            time.sleep(0.5)
            rss_before = tree_rss()
            host.load(a, options=options(CLIENTS))
            list(host.chat(a, _story(0), system_prompt=SYSTEM, settings={"max_tokens": 8}))
            rss_loaded = tree_rss()
            host.unload()
            time.sleep(0.5)
            rss_after = tree_rss()

            say("switch A -> B, and llama-server started directly")
            host.load(a, options=options(CLIENTS))
            switch_s, raw_loads = [], []
            for i in range(runs):
                target = b if i % 2 == 0 else a
                start = time.perf_counter()
                host.load(target, options=options(CLIENTS))
                switch_s.append(time.perf_counter() - start)
                path = library.resolve(library.get(target))
                raw = LlamaServer(path, _server_options(threads, CLIENTS, target))
                start = time.perf_counter()
                raw.start()
                raw_loads.append(time.perf_counter() - start)
                raw.stop()
            model_id = b if runs % 2 else a
            model_path = library.resolve(library.get(model_id))
            status = host.status()
            serial.load(model_id, options=options(1))
            tools = Tools(status.cpu_variant, Path(home))

            say("single stream, 4 clients, serial host: host and llama.cpp's tools alternating")
            rows: dict[str, list[float]] = {k: [] for k in (
                "tg", "single_tps", "single_first", "batched", "concurrent", "worst_first",
                "serial")}  # fmt: skip
            tokens = []
            for i in range(runs + 1):  # round 0 warms everything up and is not counted
                tg = tools.tg(model_path, threads, max_tokens)
                single = _chat(serial, model_id, _story(i), _system(), max_tokens)
                batched = tools.batched_tg(model_path, threads, max_tokens, CLIENTS)
                concurrent = _clients(host, model_id, max_tokens)
                time.sleep(IDLE_S)  # the other server spin-waits a moment after its replies
                in_turn = _clients(serial, model_id, max_tokens)
                if i == 0:
                    continue
                say(
                    f"round {i}/{runs}: 1 stream {single.decode_tps:.1f} vs {tg:.1f} tok/s, "
                    f"{CLIENTS} clients {_aggregate_tps(concurrent):.1f} vs {batched:.1f}"
                )
                rows["tg"].append(tg)
                rows["single_tps"].append(single.decode_tps)
                rows["single_first"].append(single.first_token_s)
                rows["batched"].append(batched)
                rows["concurrent"].append(_aggregate_tps(concurrent))
                rows["worst_first"].append(max(r.first_token_s for r in concurrent))
                rows["serial"].append(_aggregate_tps(in_turn))
                tokens += [single.tokens, *(r.tokens for r in concurrent + in_turn)]
            serial.unload()

            say("turn 10 of a conversation against turn 1")
            turn1, turn10 = [], []
            for i in range(runs):
                first, tenth = _conversation(host, model_id, i, max(8, max_tokens // 2))
                turn1.append(first)
                turn10.append(tenth)
        finally:
            serial.shutdown()
            host.shutdown()

    m = {k: _median(v) for k, v in rows.items()}
    server = find_binary()
    build = build_info(server)
    figures = {
        "decode_ratio": round(m["single_tps"] / m["tg"], 3),
        "concurrent_ratio": round(m["concurrent"] / m["batched"], 3),
        "concurrent_vs_serial": round(m["concurrent"] / m["serial"], 3),
        "worst_first_token_s": round(m["worst_first"], 3),
        "turn10_first_token_ratio": round(_median(turn10) / _median(turn1), 3),
        "switch_overhead_s": round(_median(switch_s) - _median(raw_loads), 3),
        "rss_change_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
    }
    return {
        "model": demo.name,
        "n_threads": threads,
        "n_ctx": N_CTX,
        "clients": CLIENTS,
        "runs": runs,
        "max_tokens": max_tokens,
        "tokens_per_run_min": min(tokens),
        "cpu_variant": status.cpu_variant,
        "build_flavour": build.get("flavour"),
        "build_key": build.get("key"),
        "decode_tps_host": round(m["single_tps"], 1),
        "decode_tps_llama_bench": round(m["tg"], 1),
        "first_token_ms_single": round(m["single_first"] * 1000, 1),
        "concurrent_tps_host": round(m["concurrent"], 1),
        "concurrent_tps_batched_bench": round(m["batched"], 1),
        "concurrent_tps_serial_host": round(m["serial"], 1),
        "turn1_first_token_ms": round(_median(turn1) * 1000, 1),
        "turn10_first_token_ms": round(_median(turn10) * 1000, 1),
        "switch_s": round(_median(switch_s), 3),
        "raw_load_s": round(_median(raw_loads), 3),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_loaded_mib": round(rss_loaded / 2**20, 1),
        "rss_after_unload_mib": round(rss_after / 2**20, 1),
        **figures,
        "checks": [check(key, value) for key, value in figures.items()],
    }


# -- transformers -------------------------------------------------------------------------


def hf_bench_model(demo: Path, cache: Path, say: Callable[[str], None]) -> Path:
    """The demo GGUF dequantised to a safetensors folder (about 20 s once, then cached)."""
    folder = cache / "smollm2-135m-instruct-hf"
    if (folder / "config.json").is_file():
        return folder
    say(f"building {folder} from the demo GGUF (once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(demo.parent, gguf_file=demo.name)
    model = AutoModelForCausalLM.from_pretrained(
        demo.parent, gguf_file=demo.name, quantization_config=GgufConfig(dequantize=True)
    )
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


_RAW_MODEL: dict[str, Any] = {}


def raw_transformers(folder: Path, i: int, max_tokens: int, threads: int) -> float:
    """tokens/s of plain `generate` on prompt i. It runs in a process of its own (the
    model stays loaded there between calls), as the host's worker does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not _RAW_MODEL:
        torch.set_num_threads(threads)
        _RAW_MODEL["tokenizer"] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        _RAW_MODEL["model"] = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32
        )
    tokenizer, model = _RAW_MODEL["tokenizer"], _RAW_MODEL["model"]
    messages = [{"role": "system", "content": SYSTEM}, *_story(i)]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            repetition_penalty=1.1,
            pad_token_id=tokenizer.eos_token_id,
        )
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def bench_transformers(
    folder: Path, runs: int, max_tokens: int, threads: int, say: Callable[[str], None]
) -> dict:
    """Host and raw runs alternate, so both see the same machine load."""
    settings = {"temperature": 0, "max_tokens": max_tokens, "repeat_penalty": 1.1}
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="appliance-bench-") as home,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as raw,
    ):
        library = Library(Paths(Path(home)))
        model_id = library.register(folder, external=True).entry.id
        host = Host(library, keep_alive_s=0, spare_worker=False)
        try:
            say("transformers: host and raw generate, alternating")
            host.load(model_id, options={"n_threads": threads})
            host_tps, raw_tps = [], []
            for i in range(runs + 1):  # run 0 warms both up and is not counted
                start = time.perf_counter()
                gen = host.chat(model_id, _story(i), system_prompt=SYSTEM, settings=settings)
                list(gen)
                assert gen.result is not None
                host_rate = gen.result.completion_tokens / (time.perf_counter() - start)
                raw_rate = raw.submit(raw_transformers, folder, i, max_tokens, threads).result()
                if i:
                    host_tps.append(host_rate)
                    raw_tps.append(raw_rate)
        finally:
            host.shutdown()
    host_median, raw_median = statistics.median(host_tps), statistics.median(raw_tps)
    return {
        "model": folder.name,
        "n_threads": threads,
        "runs": runs,
        "tps_host": round(host_median, 1),
        "tps_raw": round(raw_median, 1),
        "ratio": round(host_median / raw_median, 3),
    }


def run(
    demo: Path,
    cache: Path,
    *,
    runs: int = 5,
    max_tokens: int = 128,
    threads: int | None = None,
    transformers: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """All figures, as a JSON-ready dict."""
    threads = threads or physical_cores()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "version": VERSION,
        "machine": machine(),
        "targets": {key: check(key, limit)["target"] for key, (_, limit, _) in TARGETS.items()},
        "llama_cpp": bench_llama(demo, runs, max_tokens, threads, say),
    }
    if transformers:
        folder = hf_bench_model(demo, cache, say)
        result["transformers"] = bench_transformers(folder, max(3, runs // 2), 64, threads, say)
    result["checks"] = result["llama_cpp"]["checks"]
    result["passed"] = all(c["pass"] for c in result["checks"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
