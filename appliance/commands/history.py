"""`appliance history ...`: list, export, import and delete encrypted chat history."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from appliance.commands.passwords import unlock_vault
from appliance.fsutil import atomic_write_bytes


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `history` command group to the top-level parser."""
    history = groups.add_parser(
        "history", help="encrypted chat history (asks for the master password)"
    ).add_subparsers(dest="command", required=True)
    p = history.add_parser("list", help="models with history, or one model's conversations")
    p.add_argument("model", nargs="?", help="a model id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = history.add_parser("export", help="decrypt one conversation to stdout or a file")
    p.add_argument("model")
    p.add_argument(
        "--conversation", "-c", help="conversation id or unique prefix (default: latest)"
    )
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.add_argument("--output", "-o", type=Path, help="write to this file (mode 0600)")
    p.set_defaults(func=cmd_export)
    p = history.add_parser("import", help="import a conversation exported as JSON")
    p.add_argument("model")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_import)
    p = history.add_parser(
        "recover", help="keep a recovered conversation (a log found without its header)"
    )
    p.add_argument("model")
    p.add_argument("--conversation", "-c", required=True, help="its id or a unique prefix")
    p.set_defaults(func=cmd_recover)
    p = history.add_parser("delete", help="delete a conversation, or all of a model's history")
    p.add_argument("model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", "-c", help="conversation id or unique prefix")
    which.add_argument("--all", action="store_true", help="every conversation of the model")
    p.add_argument("--yes", action="store_true", required=True, help="confirm the deletion")
    p.set_defaults(func=cmd_delete)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _resolve(history, model: str, wanted: str | None) -> str:
    from appliance.vault import UnknownConversation

    convs = history.conversations(model)
    if not convs:
        raise UnknownConversation(f"Model {model!r} has no conversations.")
    if wanted is None:
        latest = history.latest(model)
        if latest is None:
            raise UnknownConversation(f"No conversation of model {model!r} can be read.")
        return latest.id
    matches = [c.id for c in convs if c.id.startswith(wanted.lower())]
    if len(matches) != 1:
        what = "matches no" if not matches else "matches more than one"
        raise UnknownConversation(
            f"{wanted!r} {what} conversation of model {model!r}. "
            f"Run `appliance history list {model}` to see their ids."
        )
    return matches[0]


def cmd_list(args: argparse.Namespace) -> int:
    _, unlocked = unlock_vault()
    history = unlocked.history
    if args.model is None:
        models = [{"model_id": m, "conversations": history.count(m)} for m in history.model_ids()]
        if args.json:
            print(json.dumps({"version": 1, "models": models}, indent=2, ensure_ascii=False))
        elif not models:
            print("no history yet")
        for m in models if not args.json else []:
            print(f"{m['model_id']}  ({m['conversations']} conversation(s))")
        return 0
    convs = history.conversations(args.model)
    if args.json:
        rows = [asdict(c) for c in convs]
        doc = {"version": 1, "model_id": args.model, "conversations": rows}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    if not convs:
        print(f"model {args.model!r} has no conversations")
    for c in convs:
        title = c.title or "(untitled)"
        state = f"  DAMAGED: {c.problem}" if c.problem else ""
        print(f"{c.id}  {_when(c.updated_at)}  {c.message_count:>5} msgs  {title}{state}")
    recovered = [c.id for c in convs if c.recovered and not c.problem]
    if recovered:
        print(
            f"{len(recovered)} recovered conversation(s): messages found without their "
            "header, as after restoring part of a backup. Read them with `appliance history "
            f"export {args.model} -c ID`, keep them with `appliance history recover "
            f"{args.model} -c ID`, or delete them.",
            file=sys.stderr,
        )
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    _, unlocked = unlock_vault()
    history = unlocked.history
    conv_id = _resolve(history, args.model, args.conversation)
    info = history.adopt(args.model, conv_id)
    print(f"kept recovered conversation {conv_id} as conversation {info.id} "
          f"({info.message_count} messages) of {args.model}")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _, unlocked = unlock_vault()
    history = unlocked.history
    conv_id = _resolve(history, args.model, args.conversation)
    text = history.export(args.model, conv_id, args.format)
    data = text.encode("utf-8", "replace")  # a lone surrogate cannot be UTF-8
    if args.output:
        atomic_write_bytes(args.output.absolute(), data, mode=0o600)
        print(f"exported conversation {conv_id} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from appliance.vault import HistoryError

    try:
        text = args.file.read_text("utf-8")
    except UnicodeDecodeError:
        raise HistoryError(f"{args.file} is not UTF-8 text: export files are JSON.") from None
    _, unlocked = unlock_vault()
    info = unlocked.history.import_json(args.model, text)
    print(f"imported conversation {info.id} ({info.message_count} messages) for {args.model}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _, unlocked = unlock_vault()
    history = unlocked.history
    if args.all:
        count = history.delete_model(args.model)
        print(f"deleted {count} conversation(s) of {args.model}")
        return 0
    conv_id = _resolve(history, args.model, args.conversation)
    history.delete(args.model, conv_id)
    print(f"deleted conversation {conv_id} of {args.model}")
    return 0
