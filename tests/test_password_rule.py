"""The one rule for a new master password (zxcvbn score >= 3, 8+ characters), and the CLI.

The set-up page and Settings apply it too: tests/test_app.py and tests/test_ui_chat.py
check that they show this same message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.vault import PASSWORD_RULE, Vault, WeakPassword, check_new_password
from appliance.vault.strength import MIN_SCORE, password_strength, weakness
from tests.vault_helpers import PASSWORD, fast_vault

WEAK = ["password", "Password1!", "qwertyuiop", "abcdefgh12", "hunter2hunter2", "iloveyou123"]
STRONG = [PASSWORD, "another long passphrase", "Xk9#mQ2!vL7@pR4$", "plum-orbit-7-sled"]


@pytest.mark.parametrize("password", WEAK)
def test_common_and_patterned_passwords_are_refused(password: str) -> None:
    score, _ = password_strength(password)
    assert score < MIN_SCORE
    message = weakness(password)
    assert message is not None
    assert message.startswith("This password is too weak: it is too easy to guess. Strength ")
    assert message.endswith(PASSWORD_RULE)
    with pytest.raises(WeakPassword) as caught:
        check_new_password(password)
    assert str(caught.value) == message


@pytest.mark.parametrize("password", STRONG)
def test_passphrases_pass(password: str) -> None:
    assert password_strength(password)[0] >= MIN_SCORE
    assert weakness(password) is None


def test_the_rule_is_stated() -> None:
    assert PASSWORD_RULE == (
        "A master password needs at least 8 characters and a strength of at least 3 of 4 "
        "(zxcvbn's estimate: 100 million guesses or more). A passphrase of four or more "
        "unrelated words passes easily."
    )
    assert weakness("") == f"The password is empty. {PASSWORD_RULE}"
    assert weakness("Zq9!") == f"The password is too short. {PASSWORD_RULE}"
    hint = password_strength("password")[1]
    assert hint.startswith("Strength 0 of 4: very weak. This is a top-10 common password.")


def test_very_long_passwords_are_measured_quickly() -> None:
    """zxcvbn refuses more than 72 characters; the rest cannot make a password weaker."""
    assert weakness("x" * 10_000 + PASSWORD) is not None  # 72 x's: a repeat
    assert weakness(PASSWORD + "x" * 10_000) is None


def test_the_vault_refuses_a_weak_password_and_keeps_the_old_one(appliance_home: Path) -> None:
    with pytest.raises(WeakPassword, match="too weak"):
        fast_vault().init("password")
    assert not fast_vault().initialized
    fast_vault().init(PASSWORD)
    with pytest.raises(WeakPassword, match="too weak"):
        fast_vault().change_password(PASSWORD, "Password1!")
    fast_vault().unlock(PASSWORD).lock()


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, timeout=120, input=stdin, env=os.environ.copy(),
    )  # fmt: skip


def test_cli_refuses_with_the_same_message(appliance_home: Path) -> None:
    expected = weakness("password")
    out = _cli("vault", "init", stdin="password\n")
    assert out.returncode == 1
    assert out.stderr == f"error: {expected}\n"
    assert not Vault().initialized
    out = _cli("vault", "init", stdin=f"{PASSWORD}\n")
    assert out.returncode == 0, out.stderr
    assert "password strength 4/4 (zxcvbn)" in out.stderr
    out = _cli("vault", "change-password", stdin=f"{PASSWORD}\nPassword1!\n")
    assert out.returncode == 1
    assert out.stderr == f"error: {weakness('Password1!')}\n"
    Vault().unlock(PASSWORD).lock()  # the old password still opens it
