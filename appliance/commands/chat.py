"""`appliance chat MODEL "prompt"`: one streamed reply on the command line."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from appliance import sampling
from appliance.errors import ApplianceError

VAULT_MISSING = (
    "--save needs the vault (encrypted chat history), which this build does not include yet. "
    "Run the command without --save."
)


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `chat` command to the top-level parser."""
    p = groups.add_parser("chat", help="send one message to a model and stream the reply")
    p.add_argument("model", help="the model's id (see `appliance models list`)")
    p.add_argument("prompt", help="the message")
    p.add_argument("--system", help="system prompt (default: the model's own default)")
    for setting in sampling.SETTINGS:
        if setting.name == "system_prompt":
            continue
        flag = "--" + setting.name.replace("_", "-")
        p.add_argument(flag, dest=setting.name, type=setting.kind, help=setting.description)
    p.add_argument("--n-ctx", type=int, help="context window to load the model with")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="for a remote (openai) model: the environment variable holding its API key",
    )
    p.add_argument(
        "--save", action="store_true", help="append the exchange to the model's conversation"
    )
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from appliance.engine import Host
    from appliance.library.library import Library

    if args.save and importlib.util.find_spec("appliance.vault") is None:
        raise ApplianceError(VAULT_MISSING)
    library = Library()
    library.get(args.model)
    settings = {
        s.name: getattr(args, s.name)
        for s in sampling.SETTINGS
        if s.name != "system_prompt" and getattr(args, s.name) is not None
    }
    options = {k: v for k, v in (("n_ctx", args.n_ctx), ("n_threads", args.threads)) if v}
    api_key = _api_key(args.api_key_env)
    host = Host(library, keep_alive_s=0, queue_size=1, spare_worker=False)
    gen = None
    try:
        host.load(args.model, api_key=api_key, options=options or None)
        messages = [{"role": "user", "content": args.prompt}]
        gen = host.chat(
            args.model, messages, system_prompt=args.system, settings=settings, api_key=api_key
        )
        for text in gen:
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except KeyboardInterrupt:
        if gen is not None:
            gen.cancel()
        sys.stdout.write("\n")
        raise
    finally:
        host.shutdown()
    result = gen.result
    if result is not None and result.dropped_turns:
        print(
            f"note: {result.dropped_turns} older messages did not fit the context and were "
            "left out",
            file=sys.stderr,
        )
    return 0


def _api_key(variable: str | None) -> str | None:
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ApplianceError(f"The environment variable {variable} is not set or is empty.")
    return key
