"""Reading passwords for the CLI: a TTY prompt (getpass), or stdin when it is piped.

Never from argv or the environment: those leak into `ps`, shell history and
/proc/*/environ. Piped, each password asked for is one line of stdin.
"""

from __future__ import annotations

import getpass
import sys

from appliance.vault import VaultError


def read_password(prompt: str, *, confirm: bool = False) -> str:
    """One password; on a terminal, asked twice when `confirm`."""
    if sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat it: ") != password:
            raise VaultError("The two passwords differ; nothing was changed.")
        return password
    line = sys.stdin.readline()
    if not line:
        raise VaultError(
            f"{prompt.rstrip(': ')} was expected on standard input (one line per password), "
            "or run the command in a terminal to be prompted."
        )
    return line.removesuffix("\n").removesuffix("\r")


def unlock_vault():
    """Prompt for the master password and return (vault, unlocked session)."""
    from appliance.vault import Vault, VaultNotInitialized

    vault = Vault()
    if not vault.initialized:
        raise VaultNotInitialized()
    unlocked = vault.unlock(read_password("Master password: "))
    for notice in unlocked.notices:
        print(notice, file=sys.stderr)
    return vault, unlocked
