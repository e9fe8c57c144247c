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
from appliance.capabilities import BACKEND_NAMES
from appliance.errors import ImportRefused
from appliance.model_entry import ModelEntry


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `models` command group to the top-level parser."""
    models = groups.add_parser("models", help="the model library").add_subparsers(
        dest="command", required=True
    )
    p = models.add_parser("list", help="list registered models (changed files are re-read)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = models.add_parser("show", help="everything known about one model")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = models.add_parser("inspect", help="read a model file's or folder's header")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = models.add_parser("add", help="register a model (copy, link or in place)")
    p.add_argument("path", type=Path)
    p.add_argument("--name")
    p.add_argument("--backend", choices=BACKEND_NAMES)
    p.add_argument("--arch", help="override the architecture read from the header")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy")
    mode.add_argument("--link", dest="mode", action="store_const", const="link")
    mode.add_argument("--in-place", dest="mode", action="store_const", const="in-place")
    p.add_argument(
        "--allow-duplicate", action="store_true",
        help="import even if the library holds the same file (same sha256) already",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)
    p = models.add_parser(
        "remove", help="remove an entry; its files stay and it is hidden unless --delete-files"
    )
    p.add_argument("id")
    p.add_argument("--delete-files", action="store_true", help="also delete the weights")
    p.set_defaults(func=cmd_remove)
    p = models.add_parser("hidden", help="list removed models whose files were kept")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hidden)
    p = models.add_parser("unhide", help="put a removed (hidden) model back in the library")
    p.add_argument("id")
    p.set_defaults(func=cmd_unhide)
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


def _fresh_entries(library) -> list[ModelEntry]:
    """The entries after re-reading files that changed on disk (and hashing them)."""
    library.refresh()
    _finish_hashing(library)
    return library.entries()


def _sha_cell(entry: ModelEntry) -> str:
    if entry.sha256:
        return entry.sha256[:12]
    if entry.is_remote:
        return "remote"
    return "hashing…" if entry.status == "present" else "-"


def cmd_list(args: argparse.Namespace) -> int:
    library = _library()
    entries = _fresh_entries(library)
    if args.json:
        print_json({"version": 1, "models": [e.to_json() for e in entries]})
        return 0
    hidden = len(library.hidden())
    if not entries:
        print("No models registered. Copy weights into models/ or run `appliance models add`.")
        _print_hidden_hint(hidden)
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
        meta = e.metadata
        rows.append((
            e.id, e.name, e.format, e.backend, e.architecture, fmt.params(meta.parameters),
            meta.quantization or "-", str(meta.context_length or "-"), fmt.size(e.size_bytes),
            _sha_cell(e), e.status,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for e in entries:
        if e.status == "damaged":
            print(f"\n{e.id} is damaged: {e.problem}\n{_damaged_advice(e)}")
    _print_hidden_hint(hidden)
    return 0


def _damaged_advice(entry: ModelEntry) -> str:
    return (
        f"To fix it, put a good copy at {entry.location}, or remove the model "
        f"(`appliance models remove {entry.id}`)."
    )


def _print_hidden_hint(count: int) -> None:
    if count:
        print(f"\n{count} removed model(s) are hidden: `appliance models hidden` lists them.")


SHOW_FIELDS = ("id", "name", "status", "problem", "path", "external", "format", "backend",
               "architecture", "architecture_source", "size_bytes", "mtime", "sha256",
               "added_at")  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    library = _library()
    library.get(args.id)  # an unknown id fails here, before any work
    library.recheck(args.id)
    _finish_hashing(library)
    entry = library.get(args.id)
    if args.json:
        print_json(entry.to_json())
        return 0
    for key in SHOW_FIELDS:
        value = getattr(entry, key)
        if key == "problem" and value is None:
            continue
        shown = fmt.size(value) if key == "size_bytes" else ("-" if value is None else value)
        print(f"{key:<20} {shown}")
    for key, value in vars(entry.metadata).items():
        if key == "notes":
            for note in value:
                print(f"note: {note}")
        elif value is not None:
            print(f"{key:<20} {value}")
    if entry.status == "damaged":
        print(_damaged_advice(entry))
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
    from appliance.library.importer import DuplicateModel, import_path

    library = _library()
    mode = args.mode or ("in-place" if library.relative(args.path.absolute()) else "copy")
    if mode == "in-place" and (entry := _registered_at(library, args.path)) is not None:
        if args.json:
            print_json(entry.to_json())
        else:
            print(f"{entry.id} is already in the library ({entry.name}, {entry.backend}) at "
                  f"{entry.path}; nothing was added")  # fmt: skip
        return 0
    try:
        entry = import_path(
            library, args.path, mode, name=args.name, backend=args.backend,
            architecture=args.arch, progress=_progress_printer(),
            allow_duplicate=args.allow_duplicate,
        )  # fmt: skip
    except DuplicateModel as dup:
        model_id = dup.existing.id
        use = (
            f"Run `appliance models unhide {model_id}` to bring it back"
            if dup.hidden
            else f"Use the id {model_id} (for example `appliance chat {model_id} ...`)"
        )
        raise ImportRefused(
            f"{dup.fact} {use}, or add --allow-duplicate to import a second copy."
        ) from None
    _finish_hashing(library)
    entry = library.get(entry.id)
    if args.json:
        print_json(entry.to_json())
    else:
        print(f"added {entry.id} ({entry.name}, {entry.backend}) at {entry.path}")
    return 0


def _registered_at(library, path: Path):
    """The entry whose file or folder is path itself (an in-place add of it adds nothing)."""
    target = path.resolve()
    for entry in library.entries():
        if not entry.is_remote and library.resolve(entry).resolve() == target:
            return entry
    return None


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
    library = _library()
    entry = library.remove(args.id, delete_files=args.delete_files)
    if args.delete_files:
        print(f"removed {entry.id}; its files were deleted. Its chat history is kept.")
    elif entry.is_remote:
        print(f"removed {entry.id} (served by {entry.path}). Its chat history is kept.")
    else:
        print(
            f"removed {entry.id}; its files stay at {entry.path} and it is hidden: scans "
            "and the drop-in watcher will not add it again. Its chat history is kept. "
            f"`appliance models unhide {entry.id}` brings it back."
        )
    return 0


def cmd_hidden(args: argparse.Namespace) -> int:
    hidden = _library().hidden()
    if args.json:
        print_json({
            "version": 1,
            "hidden": [{"hidden_at": h.hidden_at, "on_disk": h.on_disk,
                        "entry": h.entry.to_json()} for h in hidden],
        })  # fmt: skip
        return 0
    if not hidden:
        print("No hidden models. `appliance models remove ID` hides a model and keeps its files.")
        return 0
    rows = [("ID", "NAME", "PATH", "SIZE", "HIDDEN SINCE", "FILES")]
    rows += [(h.entry.id, h.entry.name, h.entry.path, fmt.size(h.entry.size_bytes), h.hidden_at,
              h.on_disk) for h in hidden]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\n`appliance models unhide ID` puts one back in the library.")
    return 0


def cmd_unhide(args: argparse.Namespace) -> int:
    library = _library()
    entry = library.unhide(args.id)
    _finish_hashing(library)
    entry = library.get(entry.id)
    print(f"unhid {entry.id} ({entry.name}); it is back in the library, {entry.status}, at "
          f"{entry.path}.")  # fmt: skip
    if entry.status == "damaged":
        print(f"It is damaged: {entry.problem}\n{_damaged_advice(entry)}")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    entry = _library().rename(args.id, args.name)
    print(f"renamed {entry.id} to {entry.name!r}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    library = _library()
    report = library.scan()
    _finish_hashing(library)
    if args.json:
        print_json({
            "added": report.added, "missing": report.missing, "restored": report.restored,
            "moved": report.moved, "updated": report.updated, "damaged": report.damaged,
            "hidden": report.hidden, "rejected": report.rejected,
        })  # fmt: skip
        return 0
    for label, ids in (("added", report.added), ("missing", report.missing),
                       ("restored", report.restored), ("moved", report.moved),
                       ("updated", report.updated)):  # fmt: skip
        for model_id in ids:
            print(f"{label:<9} {model_id}")
    for model_id, why in report.damaged.items():
        print(f"damaged   {model_id}: {why}")
    for path in report.hidden:
        print(f"hidden    {path} (removed earlier; `appliance models hidden` lists it)")
    for path, why in report.rejected.items():
        print(f"rejected  {path}: {why}")
    if not report.changed():
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
