"""`appliance bench`: the host against llama.cpp's own tools from the same build (README)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.paths import APP_ROOT

DEMO = APP_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "offline-llm-switcher" / "bench"


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `bench` command to the top-level parser."""
    p = groups.add_parser(
        "bench", help="benchmark the engine against llama-bench and llama-batched-bench"
    )
    p.add_argument("--model", type=Path, default=DEMO, help="a GGUF file (default: the demo)")
    p.add_argument("--runs", type=int, default=5, help="rounds per figure (median)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per decode run")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the host and the tools (default: physical cores)")  # fmt: skip
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers part")
    p.add_argument("--no-api", action="store_true", help="skip the /v1 API part")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the safetensors copy is kept")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Exit status 0 whether or not the targets are met: the figures are the output."""
    from appliance.engine import benchmark

    if not args.model.is_file():
        raise ApplianceError(f"{args.model} does not exist: pass a GGUF file with --model.")
    if args.runs < 1 or args.max_tokens < 8:
        raise ApplianceError("--runs must be at least 1 and --max-tokens at least 8.")
    if args.threads is not None and args.threads < 1:
        raise ApplianceError("--threads must be at least 1.")
    args.cache.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)

    result = benchmark.run(
        args.model.resolve(),
        args.cache,
        runs=args.runs,
        max_tokens=args.max_tokens,
        threads=args.threads,
        transformers=not args.no_transformers,
        say=say,
    )
    if not args.no_api:
        from appliance.api.bench import bench_api

        threads = result["llama_cpp"]["n_threads"]
        result["api"] = bench_api(args.model.resolve(), args.runs, args.max_tokens, threads, say)
        result["checks"] = [*result["checks"], *result["api"]["checks"]]
        result["passed"] = all(c["pass"] for c in result["checks"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    return 0


def table(result: dict) -> str:
    m, ll = result["machine"], result["llama_cpp"]
    checks = {c["figure"]: c for c in ll["checks"]}

    def row(label: str, host: str, reference: str, key: str, shown: str) -> tuple[str, ...]:
        c = checks[key]
        return (label, host, reference, shown, c["target"], "pass" if c["pass"] else "FAIL")

    rows = [
        row("decode tok/s, 1 stream / llama-bench tg", f"{ll['decode_tps_host']}",
            f"{ll['decode_tps_llama_bench']}", "decode_ratio", f"ratio {ll['decode_ratio']}"),
        row(f"decode tok/s, {ll['clients']} clients / llama-batched-bench S_TG",
            f"{ll['concurrent_tps_host']}", f"{ll['concurrent_tps_batched_bench']}",
            "concurrent_ratio", f"ratio {ll['concurrent_ratio']}"),
        row(f"decode tok/s, {ll['clients']} clients / same through parallel=1",
            f"{ll['concurrent_tps_host']}", f"{ll['concurrent_tps_serial_host']}",
            "concurrent_vs_serial", f"{ll['concurrent_vs_serial']}x"),
        row(f"worst first token of {ll['clients']} clients", f"{ll['worst_first_token_s']} s",
            "-", "worst_first_token_s", f"{ll['worst_first_token_s']} s"),
        row("first token, turn 10 / turn 1", f"{ll['turn10_first_token_ms']} ms",
            f"{ll['turn1_first_token_ms']} ms", "turn10_first_token_ratio",
            f"ratio {ll['turn10_first_token_ratio']}"),
        row("switch A→B / llama-server start of B", f"{ll['switch_s']} s",
            f"{ll['raw_load_s']} s", "switch_overhead_s", f"{ll['switch_overhead_s']:+} s"),
        row("RSS before load / after unload", f"{ll['rss_before_mib']} MiB",
            f"{ll['rss_after_unload_mib']} MiB", "rss_change_pct", f"{ll['rss_change_pct']:+} %"),
    ]  # fmt: skip
    if "api" in result:
        api = result["api"]
        checks.update({c["figure"]: c for c in api["checks"]})
        rows += [
            row("decode tok/s, streamed through /v1 / llama-bench tg", f"{api['decode_tps_api']}",
                f"{api['decode_tps_llama_bench']}", "api_decode_ratio",
                f"ratio {api['api_decode_ratio']}"),
            row("first token through /v1 / in-process host", f"{api['first_token_ms_api']} ms",
                f"{api['first_token_ms_host']} ms", "api_first_token_delta_ms",
                f"{api['api_first_token_delta_ms']:+} ms"),
        ]  # fmt: skip
    if "transformers" in result:
        tf = result["transformers"]
        rows.append(("transformers tok/s / raw generate", f"{tf['tps_host']}",
                     f"{tf['tps_raw']}", f"ratio {tf['ratio']}", "-", "-"))  # fmt: skip
    header = ("figure", "host", "reference", "result", "target", "")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        f"{m['cpu']}, {m['physical_cores']} cores, {m['memory_gib']} GiB, load average "
        f"{m['load_average'][0]}; {ll['model']}, {ll['n_threads']} threads, n_ctx "
        f"{ll['n_ctx']} per slot, median of {ll['runs']} rounds",
        f"llama.cpp: {ll['build_flavour'] or 'unknown'} build, CPU variant "
        f"{ll['cpu_variant'] or 'built in'}; single stream first token "
        f"{ll['first_token_ms_single']} ms",
    ]
    for r in (header, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    passed = sum(c["pass"] for c in result["checks"])
    lines.append(f"{passed} of {len(result['checks'])} targets met")
    return "\n".join(lines)
