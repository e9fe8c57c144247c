"""Password strength: the one rule for a new master password, and a hint for people.

The estimate is zxcvbn's (the estimator KeePassXC and Bitwarden use): dictionaries of
common passwords, names and words, plus keyboard patterns, repeats, sequences, dates
and l33t substitutions, turned into a number of guesses and a score from 0 to 4.

The rule, checked by the vault itself (so the set-up page, Settings and the CLI refuse
the same passwords with the same message): at least MIN_LENGTH characters and a zxcvbn
score of at least MIN_SCORE, that is at least 10^8 guesses.
"""

from __future__ import annotations

import unicodedata

from appliance.vault.errors import WeakPassword

MIN_LENGTH = 8
MIN_SCORE = 3
MAX_MEASURED = 72  # zxcvbn's own limit; a longer password is at least as strong
APP_WORDS = ("offline", "llm", "switcher", "appliance", "vault", "master")
RULE = (
    f"A master password needs at least {MIN_LENGTH} characters and a strength of at least "
    f"{MIN_SCORE} of 4 (zxcvbn's estimate: 100 million guesses or more). A passphrase of "
    "four or more unrelated words passes easily."
)
HINTS = (
    "very weak.",
    "weak.",
    "fair, but still too easy to guess.",
    "good.",
    "strong.",
)


def _measure(password: str) -> dict:
    # Imported here: its dictionaries cost about 13 MiB and load time, which every
    # `appliance` command and page would pay otherwise.
    from zxcvbn import zxcvbn

    return zxcvbn(password[:MAX_MEASURED], user_inputs=list(APP_WORDS), max_length=MAX_MEASURED)


def password_strength(password: str) -> tuple[int, str]:
    """(score 0-4, one-line hint) for a candidate password, zxcvbn's advice included."""
    pw = unicodedata.normalize("NFC", password)
    if len(pw) < MIN_LENGTH:
        return 0, f"Too short: use at least {MIN_LENGTH} characters (a passphrase is best)."
    result = _measure(pw)
    score = int(result["score"])
    advice = [result["feedback"]["warning"], *result["feedback"]["suggestions"]]
    advice = [a.strip() for a in advice if a and a.strip()] if score < MIN_SCORE else []
    hint = " ".join([f"Strength {score} of 4: {HINTS[score]}", *advice])
    return score, hint


def weakness(password: str) -> str | None:
    """Why the vault refuses this new password (with the rule), or None if it is accepted."""
    if not isinstance(password, str) or not password:
        return f"The password is empty. {RULE}"
    score, hint = password_strength(password)
    if len(unicodedata.normalize("NFC", password)) < MIN_LENGTH:
        return f"The password is too short. {RULE}"
    if score < MIN_SCORE:
        return f"This password is too weak: it is too easy to guess. {hint} {RULE}"
    return None


def check_new_password(password: str) -> None:
    """Raise WeakPassword, with the rule in its message, for a password the vault refuses."""
    problem = weakness(password)
    if problem is not None:
        raise WeakPassword(problem)
