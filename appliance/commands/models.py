"""`appliance models ...`: the model library from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from appliance import format as fmt
from appliance.library.model_info import BACKENDS


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `models` command group to the top-level parser."""
    models = groups.add_parser("models", help="the model library").add_subparsers(
        dest="command", required=True
    )
    p = models.add_parser("list", help="list registered models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = models.add_parser("inspect", help="read a model file's or folder's header")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = models.add_parser("add", help="register a model (copy, link or in place)")
    p.add_argument("path", type=Path)
    p.add_argument("--name")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--arch", help="override the architecture read from the header")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy")
    mode.add_argument("--link", dest="mode", action="store_const", const="link")
    mode.add_argument("--in-place", dest="mode", action="store_const", const="in-place")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)
    p = models.add_parser("remove", help="remove an entry (weights stay unless asked)")
    p.add_argument("id")
    p.add_argument("--delete-files", action="store_true", help="also delete the weights")
    p.set_defaults(func=cmd_remove)
    p = models.add_parser("rename", help="change a model's display name (its id stays)")
    p.add_argument("id")
    p.add_argument("name")
    p.set_defaults(func=cmd_rename)
    p = models.add_parser("scan", help="bring the registry in line with models/")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan)
    models.add_parser("watch", help="run the drop-in watcher in the foreground").set_defaults(
        func=cmd_watch
    )
    models.add_parser(
        "repair", help="rebuild a corrupted registry, listing what is dropped"
    ).set_defaults(func=cmd_repair)


def _library():
    from appliance.library.library import Library

    return Library()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_list(args: argparse.Namespace) -> int:
    entries = _library().entries()
    if args.json:
        print_json({"version": 1, "models": entries})
        return 0
    if not entries:
        print("No models registered. Copy weights into models/ or run `appliance models add`.")
        return 0
    header = (
        "ID",
        "NAME",
        "FORMAT",
        "BACKEND",
        "ARCH",
        "PARAMS",
        "QUANT",
        "CTX",
        "SIZE",
        "SHA256",
        "STATUS",
    )
    rows = [header]
    for e in entries:
        meta = e["metadata"]
        rows.append((
            e["id"], e["name"], e["format"], e["backend"], e["architecture"],
            fmt.params(meta.get("parameters")), meta.get("quantization") or "-",
            str(meta.get("context_length") or "-"), fmt.size(e["size_bytes"]),
            (e["sha256"] or "hashing…")[:12], e["status"],
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from appliance.library.inspect import inspect_model

    info = inspect_model(args.path)
    if args.json:
        print_json(info.to_dict())
        return 0
    for key, value in info.to_dict().items():
        if key == "notes":
            for note in value:
                print(f"note: {note}")
        elif value is not None:
            print(f"{key:<20} {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"{key:<20} {value}")  # fmt: skip
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from appliance.library.importer import import_path

    library = _library()
    mode = args.mode or ("in-place" if library.relative(args.path.absolute()) else "copy")
    entry = import_path(
        library, args.path, mode, name=args.name, backend=args.backend,
        architecture=args.arch, progress=_progress_printer(),
    )  # fmt: skip
    _finish_hashing(library)
    entry = library.get(entry["id"])
    if args.json:
        print_json(entry)
    else:
        print(f"added {entry['id']} ({entry['name']}, {entry['backend']}) at {entry['path']}")
    return 0


def _progress_printer():
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        pct = 100 * done / total if total else 100
        end = "\n" if done >= total else ""
        print(f"\rcopying {fmt.size(done)} / {fmt.size(total)} ({pct:.0f}%)", end=end,
              file=sys.stderr)  # fmt: skip

    return show


def _finish_hashing(library) -> None:
    if library.hasher.pending():
        print("computing sha256…", file=sys.stderr)
    library.hasher.join()


def cmd_remove(args: argparse.Namespace) -> int:
    entry = _library().remove(args.id, delete_files=args.delete_files)
    kept = "its files were deleted" if args.delete_files else f"its files stay at {entry['path']}"
    print(f"removed {entry['id']}; {kept}. Its chat history is kept.")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    entry = _library().rename(args.id, args.name)
    print(f"renamed {entry['id']} to {entry['name']!r}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    library = _library()
    report = library.scan()
    _finish_hashing(library)
    if args.json:
        print_json({
            "added": report.added, "missing": report.missing, "restored": report.restored,
            "moved": report.moved, "rejected": report.rejected,
        })  # fmt: skip
        return 0
    for label, ids in (("added", report.added), ("missing", report.missing),
                       ("restored", report.restored), ("moved", report.moved)):  # fmt: skip
        for model_id in ids:
            print(f"{label:<9} {model_id}")
    for path, why in report.rejected.items():
        print(f"rejected  {path}: {why}")
    if not any((report.added, report.missing, report.restored, report.moved, report.rejected)):
        print("registry is up to date")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from appliance.library.watcher import DropInWatcher

    logging.basicConfig(level=logging.WARNING)
    library = _library()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    watcher = DropInWatcher(library, on_event=lambda ev: print(ev.line(), flush=True))
    watcher.start()
    kind = "polling" if watcher.polling else "inotify"
    print(f"watching {library.paths.models} ({kind}); Ctrl-C to stop", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    library = _library()
    data, dropped = library.registry.repair()
    print(f"registry rebuilt with {len(data.models)} entries")
    for problem in dropped:
        print(f"dropped   {problem}")
    report = library.scan()
    for model_id in report.added:
        print(f"added     {model_id}")
    _finish_hashing(library)
    return 0
