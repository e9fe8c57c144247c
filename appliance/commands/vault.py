"""`appliance vault ...`: set up, inspect and change the master password."""

from __future__ import annotations

import argparse
import json
import sys

from appliance.commands.passwords import read_new_password, read_password
from appliance.vault.kdf import KDF_NAMES


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `vault` command group to the top-level parser."""
    vault = groups.add_parser(
        "vault", help="the master password (read from a terminal prompt or piped stdin)"
    ).add_subparsers(dest="command", required=True)
    p = vault.add_parser("init", help="set the master password on first run")
    p.add_argument("--kdf", choices=KDF_NAMES, default="argon2id")
    p.set_defaults(func=cmd_init)
    p = vault.add_parser("change-password", help="re-wrap the data key under a new password")
    p.add_argument("--kdf", choices=KDF_NAMES, help="also switch the key-derivation function")
    p.set_defaults(func=cmd_change_password)
    p = vault.add_parser("status", help="KDF, parameters, throttle state (no secrets)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


def _vault():
    from appliance.vault import Vault

    return Vault()


def _describe_kdf(kdf: dict | None) -> str:
    if not kdf:
        return "-"
    if kdf["name"] == "argon2id":
        return (f"argon2id, {kdf['memory_kib'] // 1024} MiB, {kdf['iterations']} iterations, "
                f"{kdf['lanes']} lanes")  # fmt: skip
    return f"{kdf['name']}, {kdf['iterations']:,} iterations"


def cmd_init(args: argparse.Namespace) -> int:
    from appliance.vault import VaultAlreadyInitialized, password_strength

    vault = _vault()
    if vault.initialized:
        raise VaultAlreadyInitialized()
    password = read_new_password("New master password: ")
    score, _ = password_strength(password)
    unlocked = vault.init(password, kdf=args.kdf)
    unlocked.lock()
    print(f"vault created ({_describe_kdf(vault.status()['kdf'])})")
    print(f"password strength {score}/4 (zxcvbn)", file=sys.stderr)
    return 0


def cmd_change_password(args: argparse.Namespace) -> int:
    from appliance.vault import password_strength

    vault = _vault()
    old = read_password("Current master password: ")
    new = read_new_password("New master password: ")
    vault.change_password(old, new, kdf=args.kdf)
    print(f"password changed ({_describe_kdf(vault.status()['kdf'])}); history untouched")
    print(f"password strength {password_strength(new)[0]}/4 (zxcvbn)", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _vault().status()
    if args.json:
        print(json.dumps({"version": 1, **status}, indent=2))
        return 0
    if not status["initialized"]:
        print("not initialized: run `appliance vault init`")
        return 0
    rows = [
        ("format", status["format"] or "-"),
        ("kdf", _describe_kdf(status["kdf"])),
        ("upgrade pending", "yes (at the next unlock)" if status["kdf_upgrade_pending"] else "no"),
        ("auto-lock", f"{status['auto_lock_s'] // 60} min" if status["auto_lock_s"] else "-"),
        ("created", status["created_at"] or "-"),
        ("password changed", status["password_changed_at"] or "-"),
        ("failed attempts", str(status["failed_attempts"])),
        ("throttled", f"yes, {status['throttle_remaining_s']:.0f} s left"
                      if status["throttled"] else "no"),
    ]  # fmt: skip
    for label, value in rows:
        print(f"{label:<17} {value}")
    if status["error"]:
        print(f"error: {status['error']}", file=sys.stderr)
        return 1
    return 0
