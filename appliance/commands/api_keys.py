"""`appliance api-keys ...`: create, list and revoke the keys of the OpenAI-compatible API.

Each asks for the master password first and checks it against the vault, like every
command that needs the vault unlocked; the key store itself holds no secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime

from appliance.commands.passwords import unlock_vault


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `api-keys` command group to the top-level parser."""
    keys = groups.add_parser(
        "api-keys", help="keys of the OpenAI-compatible API (asks for the master password)"
    ).add_subparsers(dest="command", required=True)
    p = keys.add_parser("create", help="create a named key; its secret is shown this once")
    p.add_argument("name", help="a label: the tool or machine that will use the key")
    p.set_defaults(func=cmd_create)
    p = keys.add_parser("list", help="the keys: id, name, first characters, created, last used")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = keys.add_parser("revoke", help="delete a key: its clients get 401 from the next request")
    p.add_argument("key", metavar="ID_OR_NAME", help="the key's id (k_...) or its name")
    p.set_defaults(func=cmd_revoke)


def _store():
    """The key store, once the master password has been checked against the vault."""
    from appliance.api.keys import KeyStore

    _, unlocked = unlock_vault()
    unlocked.lock()  # only the check was needed: the key store holds no vault data
    return KeyStore()


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def cmd_create(args: argparse.Namespace) -> int:
    from appliance.api.keys import check_name

    check_name(args.name)  # a bad name is refused before the password is asked for
    key, secret = _store().create(args.name)
    print(f"created API key {key.id} {key.name!r}", file=sys.stderr)
    print(secret)
    print(
        "This is the only time the key is shown: only its hash is stored. Copy it now.\n"
        f"Clients send it as the header `Authorization: Bearer {key.prefix}…` to "
        "http://HOST:PORT/v1 (the app's address).",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = _store().list()
    if args.json:
        doc = {"version": 1, "keys": [asdict(k) for k in keys]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    if not keys:
        print("no API keys: the API is off until one exists (`appliance api-keys create NAME`)")
        return 0
    width = max(4, *(len(k.name) for k in keys))
    print(f"{'ID':<10}  {'NAME':<{width}}  {'KEY':<13}  {'CREATED (UTC)':<16}  LAST USED (UTC)")
    for k in keys:
        print(f"{k.id:<10}  {k.name:<{width}}  {k.prefix + '…':<13}  {_when(k.created):<16}  "
              f"{_when(k.last_used)}")  # fmt: skip
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    key = _store().revoke(args.key)
    print(f"revoked API key {key.id} {key.name!r}: clients using it get 401 from now on")
    return 0
