"""Reading passwords for the CLI: a TTY prompt (getpass), or stdin when it is piped.

Never from argv or the environment: those leak into `ps`, shell history and
/proc/*/environ. Piped, each password asked for is one line of stdin.
"""

from __future__ import annotations

import getpass
import sys

from appliance.vault import VaultError, check_new_password


def read_password(prompt: str) -> str:
    """One password, from a terminal prompt or one line of piped stdin."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise VaultError(
            f"{prompt.rstrip(': ')} was expected on standard input (one line per password), "
            "or run the command in a terminal to be prompted."
        )
    return line.removesuffix("\n").removesuffix("\r")


def read_new_password(prompt: str) -> str:
    """A new master password, refused at once (before the repeat) when it breaks the rule.

    The vault applies the same rule and message (appliance.vault.strength); checking
    here first spares typing the repeat of a password that will be refused.
    """
    if not sys.stdin.isatty():
        password = read_password(prompt)
        check_new_password(password)
        return password
    password = getpass.getpass(prompt)
    check_new_password(password)
    if getpass.getpass("Repeat it: ") != password:
        raise VaultError("The two passwords differ; nothing was changed.")
    return password


def unlock_vault():
    """Prompt for the master password and return (vault, unlocked session). What the
    unlock did or found (the original app's history imported, settings reset) goes to
    stderr."""
    from appliance.vault import Vault, VaultNotInitialized, lazy_legacy_resolver

    vault = Vault()
    if not vault.initialized:
        raise VaultNotInitialized()
    password = read_password("Master password: ")
    unlocked = vault.unlock(password, resolve_model=lazy_legacy_resolver(library_models))
    for notice in unlocked.notices:
        print(notice, file=sys.stderr)
    for warning in unlocked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return vault, unlocked


def library_models() -> list[tuple[str, str, str]]:
    """(id, name, path) of every library entry, to file the original app's history
    under; none when the registry cannot be read (the import keeps the file names)."""
    from appliance.errors import ApplianceError
    from appliance.library.library import Library

    try:
        return [(e.id, e.name, e.path) for e in Library().entries()]
    except ApplianceError:
        return []
