"""`appliance chat MODEL "prompt"`: one streamed reply on the command line."""

from __future__ import annotations

import argparse
import os
import sys

from appliance import sampling
from appliance.errors import ApplianceError


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
        "--save",
        action="store_true",
        help="continue the model's latest conversation and append the exchange to it "
        "(asks for the master password)",
    )
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from appliance.engine import Host
    from appliance.library.library import Library

    library = Library()
    library.get(args.model)
    history, conv_id, earlier = _open_conversation(args) if args.save else (None, None, [])
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
        messages = [*earlier, {"role": "user", "content": args.prompt}]
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
    if history is not None and result is not None:
        _save(history, args.model, conv_id, args.prompt, result)
    if result is not None and result.dropped_turns:
        print(
            f"note: {result.dropped_turns} older messages did not fit the context and were "
            "left out",
            file=sys.stderr,
        )
    return 0


def _open_conversation(args: argparse.Namespace):
    """Unlock first (the prompt comes before any generation) and find the conversation."""
    from appliance.commands.passwords import unlock_vault

    _vault, unlocked = unlock_vault()
    history = unlocked.history
    latest = history.latest(args.model)
    if latest is None:
        return history, None, []
    earlier = history.messages(args.model, latest.id).messages
    chat = [
        {"role": m.role, "content": m.content} for m in earlier if m.role in ("user", "assistant")
    ]
    return history, latest.id, chat


def _save(history, model_id: str, conv_id: str | None, prompt: str, result) -> None:
    if conv_id is None:
        title = " ".join(prompt.split())[:60]
        conv_id = history.create(model_id, title=title).id
    history.append(model_id, conv_id, "user", prompt)
    meta = {"stopped": result.stopped, "error": result.error, "finish": result.finish,
            "dropped_turns": result.dropped_turns, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "context_length": result.context_length}  # fmt: skip
    meta = {k: v for k, v in meta.items() if v not in (None, False)}
    history.append(model_id, conv_id, "assistant", result.text, meta)
    print(f"saved to conversation {conv_id}", file=sys.stderr)


def _api_key(variable: str | None) -> str | None:
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ApplianceError(f"The environment variable {variable} is not set or is empty.")
    return key
