"""`appliance bench`: the engine's figures against the raw libraries (see README)."""

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
    p = groups.add_parser("bench", help="benchmark the engine against the raw libraries")
    p.add_argument("--model", type=Path, default=DEMO, help="a GGUF file (default: the demo)")
    p.add_argument("--runs", type=int, default=5, help="repetitions per figure (median)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per decode run")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers part")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the safetensors copy is kept")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from appliance.engine import benchmark

    if not args.model.is_file():
        raise ApplianceError(f"{args.model} does not exist: pass a GGUF file with --model.")
    if args.runs < 1 or args.max_tokens < 8:
        raise ApplianceError("--runs must be at least 1 and --max-tokens at least 8.")
    args.cache.mkdir(parents=True, exist_ok=True)
    result = benchmark.run(
        args.model.resolve(),
        args.cache,
        runs=args.runs,
        max_tokens=args.max_tokens,
        transformers=not args.no_transformers,
        say=lambda text: print(f"… {text}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
    return 0


def table(result: dict) -> str:
    m, ll = result["machine"], result["llama_cpp"]
    rows = [
        (
            "decode tokens/s",
            f"{ll['decode_tps_host']}",
            f"{ll['decode_tps_raw']}",
            f"ratio {ll['decode_ratio']}",
            "≥ 0.95",
        ),
        (
            "first token",
            f"{ll['first_token_ms_host']} ms",
            f"{ll['first_token_ms_raw']} ms",
            f"+{ll['first_token_delta_ms']} ms",
            "≤ +50 ms",
        ),
        (
            "switch A→B / raw load",
            f"{ll['switch_s']} s",
            f"{ll['raw_load_s']} s",
            f"+{ll['switch_overhead_s']} s",
            "≤ +0.3 s",
        ),
        (
            "RSS before load / after unload",
            f"{ll['rss_before_mib']} MiB",
            f"{ll['rss_after_unload_mib']} MiB",
            f"{ll['rss_change_pct']:+} %",
            "within 5 %",
        ),
    ]
    if "transformers" in result:
        tf = result["transformers"]
        rows.append(
            (
                "transformers tokens/s",
                f"{tf['tps_host']}",
                f"{tf['tps_raw']}",
                f"ratio {tf['ratio']}",
                "-",
            )
        )
    header = ("figure", "host", "raw", "result", "target")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]
    lines = [
        f"{m['cpu']}, {m['physical_cores']} cores, {m['memory_gib']} GiB; "
        f"{ll['model']}, {ll['n_threads']} threads, median of {ll['runs']} runs"
    ]
    for row in (header, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
