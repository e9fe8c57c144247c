"""The engine against the raw libraries, in one process run, on the same machine.

Each figure compares the full host path (worker process, IPC, streaming) with the raw
library called in-process, with the same model, threads and prompt:

- decode tokens/s (host ÷ raw, target ≥ 0.95), measured after the first token;
- time to first token (host minus raw, target ≤ 50 ms), each run with a new prompt;
- switch A→B until B is ready against a raw load of B (target ≤ raw + 0.3 s);
- RSS of this process and its children after an unload against before the load
  (target within 5%);
- transformers tokens/s through the host ÷ raw `generate` on a safetensors model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from appliance.engine.host import Host
from appliance.engine.options import physical_cores
from appliance.library.library import Library
from appliance.model_entry import ModelEntry
from appliance.paths import Paths

SYSTEM = "You are a helpful assistant."
STORY = "Write a long story about a dragon who learns to bake bread. Run {i}."
TARGETS = {
    "decode_ratio": 0.95,
    "first_token_delta_ms": 50,
    "switch_overhead_s": 0.3,
    "rss_change_pct": 5.0,
}


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
    }


def tree_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": STORY.format(i=i)}]


def _host_run(host: Host, model_id: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, decode tokens/s, tokens) through the host."""
    settings = {"temperature": 0, "seed": 1, "max_tokens": max_tokens}
    start = time.perf_counter()
    gen = host.chat(model_id, _messages(i), system_prompt=SYSTEM, settings=settings)
    first = end = None
    for _ in gen:
        end = time.perf_counter()
        first = first or end
    tokens = gen.result.completion_tokens
    return first - start, (tokens - 1) / (end - first), tokens


def _raw_run(llm: Any, backend: Any, i: int, max_tokens: int) -> tuple[float, float, int]:
    """The same through llama-cpp-python in this process."""
    tokens, stop, criteria = backend._prompt([{"role": "system", "content": SYSTEM}, *_messages(i)])
    start = time.perf_counter()
    first = end = None
    for _ in llm.create_completion(
        tokens,
        max_tokens=max_tokens,
        temperature=0,
        seed=1,
        top_p=0.95,
        top_k=40,
        repeat_penalty=1.1,
        stop=stop,
        stopping_criteria=criteria,
        stream=True,
    ):
        end = time.perf_counter()
        first = first or end
    generated = llm.n_tokens - len(tokens)
    return first - start, (generated - 1) / (end - first), generated


def bench_llama(demo: Path, runs: int, max_tokens: int, say: Callable[[str], None]) -> dict:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as home:
        library = Library(Paths(Path(home)))
        a = library.register(demo, external=True, name="bench-a").entry.id
        copy = shutil.copyfile(demo, library.paths.models / "bench-b.gguf")
        b = library.register(copy, name="bench-b").entry.id
        threads = physical_cores()
        options = {"n_ctx": 2048, "n_threads": threads}
        host = Host(library, keep_alive_s=0)
        try:
            say("memory: before load / after unload")
            time.sleep(0.5)
            rss_before = tree_rss()
            host.load(a, options=options)
            list(host.chat(a, _messages(0), system_prompt=SYSTEM, settings={"max_tokens": 8}))
            rss_loaded = tree_rss()
            host.unload()
            time.sleep(0.5)
            rss_after = tree_rss()

            say("raw llama-cpp-python in-process")
            import llama_cpp

            from appliance.engine.backends.llama_cpp import LlamaCppBackend

            start = time.perf_counter()
            raw_backend = LlamaCppBackend()
            raw_backend.load(_spec(library.get(a), options), lambda _t: None)
            raw_load_s = time.perf_counter() - start
            llm = raw_backend.llm
            host.load(a, options=options)
            host.load(b, options=options)  # warm the spare path once
            host.load(a, options=options)
            time.sleep(1.0)  # let the spare worker finish importing
            say("switch A -> B")
            switch_s = []
            raw_loads = []
            for i in range(runs):
                start = time.perf_counter()
                host.load(b if i % 2 == 0 else a, options=options)
                switch_s.append(time.perf_counter() - start)
                time.sleep(1.0)
                start = time.perf_counter()
                again = llama_cpp.Llama(
                    model_path=str(demo),
                    n_ctx=2048,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=0,
                    verbose=False,
                )
                raw_loads.append(time.perf_counter() - start)
                again.close()
            time.sleep(2.0)  # the last spare worker finishes importing
            say("decode and first token")
            host_runs, raw_runs = [], []
            for i in range(1, runs + 1):
                host_runs.append(_host_run(host, b if runs % 2 else a, i, max_tokens))
                raw_runs.append(_raw_run(llm, raw_backend, i, max_tokens))
            raw_backend.close()
        finally:
            host.shutdown()
    host_ttft = statistics.median(r[0] for r in host_runs)
    raw_ttft = statistics.median(r[0] for r in raw_runs)
    host_tps = statistics.median(r[1] for r in host_runs)
    raw_tps = statistics.median(r[1] for r in raw_runs)
    return {
        "model": demo.name,
        "n_threads": threads,
        "n_ctx": 2048,
        "runs": runs,
        "tokens_per_run": host_runs[0][2],
        "decode_tps_host": round(host_tps, 1),
        "decode_tps_raw": round(raw_tps, 1),
        "decode_ratio": round(host_tps / raw_tps, 3),
        "first_token_ms_host": round(host_ttft * 1000, 1),
        "first_token_ms_raw": round(raw_ttft * 1000, 1),
        "first_token_delta_ms": round((host_ttft - raw_ttft) * 1000, 1),
        "switch_s": round(statistics.median(switch_s), 3),
        "raw_load_s": round(statistics.median(raw_loads), 3),
        "raw_first_load_s": round(raw_load_s, 3),
        "switch_overhead_s": round(statistics.median(switch_s) - statistics.median(raw_loads), 3),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_loaded_mib": round(rss_loaded / 2**20, 1),
        "rss_after_unload_mib": round(rss_after / 2**20, 1),
        "rss_change_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
    }


def _spec(entry: ModelEntry, options: dict[str, Any]) -> Any:
    from appliance.engine.backends.base import LoadSpec

    return LoadSpec(entry.path, entry, options)


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
    model stays loaded there between calls): llama.cpp's and torch's OpenMP runtimes
    slow each other down when both are in one process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not _RAW_MODEL:
        torch.set_num_threads(threads)
        _RAW_MODEL["tokenizer"] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        _RAW_MODEL["model"] = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32
        )
    tokenizer, model = _RAW_MODEL["tokenizer"], _RAW_MODEL["model"]
    messages = [{"role": "system", "content": SYSTEM}, *_messages(i)]
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
    folder: Path, runs: int, max_tokens: int, say: Callable[[str], None]
) -> dict:
    """Host and raw runs alternate, so both see the same machine load."""
    threads = physical_cores()
    settings = {"temperature": 0, "max_tokens": max_tokens}
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
                gen = host.chat(model_id, _messages(i), system_prompt=SYSTEM, settings=settings)
                list(gen)
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
    transformers: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """All figures, as a JSON-ready dict."""
    result: dict[str, Any] = {
        "version": 1,
        "machine": machine(),
        "targets": TARGETS,
        "llama_cpp": bench_llama(demo, runs, max_tokens, say),
    }
    if transformers:
        folder = hf_bench_model(demo, cache, say)
        result["transformers"] = bench_transformers(folder, max(3, runs // 2), 64, say)
    return result
