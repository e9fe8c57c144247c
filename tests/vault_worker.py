"""A process the crash tests kill at random moments (run as a script, not collected).

    vault_worker.py append MODEL CONV   append messages forever, print each index once done
    vault_worker.py passwd A B          change the password A -> B -> A ... forever

Passwords come on stdin (one per line), the home from APPLIANCE_HOME. Prints "ready"
once set up. Uses the tests' cheap KDF parameters (vault_helpers.FAST_KDF).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.vault import Vault
from tests.vault_helpers import FAST_KDF


def message(i: int) -> str:
    """Deterministic content; every 3rd message is large (about 500 KB), so that some
    kills land inside a write and leave a torn record."""
    size = 500_000 if i % 3 == 1 else (i * 37) % 3000
    return f"m{i}:" + "é" * (size // 2)


def append(model: str, conv: str) -> None:
    history = Vault(kdf_params=FAST_KDF).unlock(sys.stdin.readline()[:-1]).history
    i = history.info(model, conv).message_count
    print("ready", flush=True)
    while True:
        history.append(model, conv, "user" if i % 2 == 0 else "assistant", message(i))
        print(i, flush=True)
        i += 1


def passwd() -> None:
    first, second = sys.stdin.readline()[:-1], sys.stdin.readline()[:-1]
    vault = Vault(kdf_params=FAST_KDF)
    print("ready", flush=True)
    i = 0
    while True:
        old, new = (first, second) if i % 2 == 0 else (second, first)
        vault.change_password(old, new)
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append(sys.argv[2], sys.argv[3])
    else:
        passwd()
