"""Password strength: a hint for people (score 0-4) and the one hard rule (a minimum length).

The score is a rough estimate of guessing entropy: character pools, length, and
penalties for well-known passwords, repeats and keyboard or alphabet runs. It is a hint
shown while typing, not a guarantee.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata

from appliance.vault.errors import WeakPassword

MIN_LENGTH = 8
# fmt: off
COMMON = frozenset([
    "password", "passw0rd", "p@ssw0rd", "password1", "password123", "123456", "1234567",
    "12345678", "123456789", "1234567890", "qwerty", "qwertyuiop", "qwerty123", "azerty",
    "111111", "000000", "abc123", "letmein", "welcome", "admin", "administrator", "iloveyou",
    "monkey", "dragon", "master", "sunshine", "princess", "football", "baseball", "shadow",
    "trustno1", "secret", "changeme", "default", "root", "toor", "hello123", "welcome1",
    "login", "starwars", "whatever", "freedom", "superman", "batman",
])
# fmt: on
RUNS = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "qwertyuiop", "asdfghjkl", "zxcvbnm")
HINTS = (
    "Very weak: this is easy to guess. Use a passphrase of four or more unrelated words.",
    "Weak: make it longer, or use a passphrase of four or more unrelated words.",
    "Fair: a few more characters or another word would make it much stronger.",
    "Good.",
    "Strong.",
)


def password_strength(password: str) -> tuple[int, str]:
    """(score 0-4, hint) for a candidate password."""
    pw = unicodedata.normalize("NFC", password)
    if len(pw) < MIN_LENGTH:
        return 0, f"Too short: use at least {MIN_LENGTH} characters (a passphrase is best)."
    if pw.lower() in COMMON or pw.lower().rstrip("0123456789!") in COMMON:
        return 0, "Very weak: this is one of the most common passwords."
    bits = _entropy_bits(pw)
    score = 0 if bits < 28 else 1 if bits < 40 else 2 if bits < 60 else 3 if bits < 80 else 4
    return score, HINTS[score]


def check_new_password(password: str) -> None:
    """Raise WeakPassword for a password the vault refuses to set."""
    if not isinstance(password, str) or not password:
        raise WeakPassword("The password is empty. Choose one of at least 8 characters.")
    if len(unicodedata.normalize("NFC", password)) < MIN_LENGTH:
        raise WeakPassword(
            f"The password is too short: use at least {MIN_LENGTH} characters "
            "(a passphrase of several words is best)."
        )


def _entropy_bits(pw: str) -> float:
    pool = 0
    if re.search(r"[a-z]", pw):
        pool += 26
    if re.search(r"[A-Z]", pw):
        pool += 26
    if re.search(r"[0-9]", pw):
        pool += 10
    if re.search(r"[ -/:-@\[-`{-~]", pw):
        pool += 33
    if any(ord(c) > 127 for c in pw):
        pool += 100
    effective = len(pw) - _predictable_chars(pw.lower())
    return max(0, effective) * math.log2(max(pool, 2))


def _predictable_chars(pw: str) -> int:
    """How many characters repeat the previous one or continue a known run."""
    count = 0
    for prev, cur in itertools.pairwise(pw):
        if cur == prev or any(prev + cur in run or cur + prev in run for run in RUNS):
            count += 1
    return count
