"""The seed app's vault: check a password against it and bring its history over.

The seed stored PBKDF2-SHA256(password, salt, 480k) as `password_hash` in
config/settings.json and used the very same bytes as the Fernet key of
history/<model file name>.chat (a JSON list of {"role", "content"}). Anyone holding that
settings file could read the history, so on the first unlock the vault moves to the
envelope format and re-encrypts each .chat file into a conversation.

Nothing is dropped: every message is imported. Roles the vault does not know (`bot`,
`human`, ...) are mapped to the nearest known one, content given as a list of parts is
joined into text, and each such change is kept in the message's meta and said in a
notice. The original file is kept, renamed `<name>.chat.imported`, until the user
deletes it. Conversations are filed under the library's model id, which the caller
finds for each file name (`match_legacy_names` builds such a resolver).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from appliance.fsutil import fsync_dir
from appliance.roles import HISTORY_ROLES
from appliance.vault import keys
from appliance.vault.history import HistoryStore
from appliance.vault.kdf import derive, normalize_password
from appliance.vault.keys import KeyRing
from appliance.vault.vault_settings import SeedSettings

SEED_TITLE = "Imported from the original app"
IMPORTED_SUFFIX = ".imported"
ModelResolver = Callable[[str], str | None]
# Role names other tools and the original app used, by the role they mean here.
ROLE_SYNONYMS = {
    "assistant": ("bot", "ai", "model", "chatbot", "gpt", "llm", "agent", "assistant_response",
                  "response", "answer", "completion"),
    "user": ("human", "me", "person", "you", "prompt", "question", "customer", "client"),
    "system": ("developer", "instructions", "instruction", "context", "sys"),
    "tool": ("function", "tool_result", "function_call", "ipython", "observation"),
}  # fmt: skip
_SYNONYM = {name: role for role, names in ROLE_SYNONYMS.items() for name in names}


def verify_seed_password(password: str, seed: SeedSettings) -> bytes | None:
    """The seed's key when the password is right, else None.

    The seed did not normalise passwords, so the typed form is tried after NFC.
    """
    candidates = [normalize_password(password)]
    typed = password.encode("utf-8", "surrogatepass")
    if typed != candidates[0]:
        candidates.append(typed)
    for candidate in candidates:
        derived = derive(candidate, seed.kdf)
        if hmac.compare_digest(derived, seed.password_hash):
            return derived
    return None


def seed_chat_files(history_dir: Path) -> list[Path]:
    return sorted(p for p in history_dir.glob("*.chat") if p.is_file())


def match_legacy_names(models: Iterable[tuple[str, str, str]]) -> ModelResolver:
    """A resolver from the original app's file names to model ids, given the library's
    (id, name, path) triples. A name matches a model's file name (with or without its
    extension), its display name or its id: exactly first, then ignoring case and
    punctuation ("SmolLM2-135M-Instruct_Q4_1" finds "SmolLM2-135M-Instruct.Q4_1.gguf").
    A name that matches several models at the best level matches none."""
    exact: dict[str, set[str]] = {}
    loose: dict[str, set[str]] = {}
    for model_id, name, path in models:
        file_name = Path(path).name
        for label in (Path(file_name).stem, file_name, name, model_id):
            exact.setdefault(label, set()).add(model_id)
            loose.setdefault(_loose(label), set()).add(model_id)

    def resolve(legacy_name: str) -> str | None:
        for table, key in ((exact, legacy_name), (loose, _loose(legacy_name))):
            found = table.get(key, set())
            if len(found) == 1:
                return next(iter(found))
            if found:
                return None
        return None

    return resolve


def lazy_legacy_resolver(load: Callable[[], Iterable[tuple[str, str, str]]]) -> ModelResolver:
    """`match_legacy_names` over what `load` returns, called once, at the first lookup:
    an unlock with nothing to import never reads the library."""
    resolver: ModelResolver | None = None

    def resolve(legacy_name: str) -> str | None:
        nonlocal resolver
        if resolver is None:
            resolver = match_legacy_names(load())
        return resolver(legacy_name)

    return resolve


@dataclass
class _Converted:
    """One .chat file's messages as the vault stores them, and what had to change."""

    messages: list[tuple[str, str, float, dict]] = field(default_factory=list)
    roles: Counter = field(default_factory=Counter)  # (original, mapped) -> count
    reshaped: Counter = field(default_factory=Counter)  # what the content was -> count


def import_seed_history(
    history: HistoryStore,
    ring: KeyRing,
    seed_key: bytes,
    history_dir: Path,
    resolve_model: ModelResolver | None = None,
) -> tuple[list[str], list[str]]:
    """Import every seed .chat file; returns (notices, warnings). Safe to rerun after a
    crash: each file maps to a fixed conversation id, replaced on rerun, and a file is
    renamed (never deleted) only once its conversation is written."""
    fernet = Fernet(base64.urlsafe_b64encode(seed_key))
    notices: list[str] = []
    warnings: list[str] = []
    for path in seed_chat_files(history_dir):
        data = _decrypt(fernet, path, warnings)
        if data is None:
            continue
        converted = convert_messages(data, path.stat().st_mtime)
        matched = resolve_model(path.stem) if resolve_model else None
        model_id = matched or path.stem
        conv_id = keys.tag(ring["names"], "seed/" + path.name, 8)
        history.import_messages(model_id, converted.messages, title=SEED_TITLE,
                                created_at=path.stat().st_mtime, conv_id=conv_id)  # fmt: skip
        kept = _keep_original(path)
        unmatched = resolve_model is not None and matched is None
        notices.append(_notice(path, model_id, converted, kept, unmatched))
    return notices, warnings


def _decrypt(fernet: Fernet, path: Path, warnings: list[str]) -> list | None:
    """The message list of a .chat file, or None with a warning (the file is kept)."""
    try:
        data = json.loads(fernet.decrypt(path.read_bytes()))
    except (InvalidToken, ValueError, OSError):
        warnings.append(
            f"{path.name} from the original app could not be decrypted with this password; "
            "it is kept as it is in history/."
        )
        return None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list):
        warnings.append(
            f"{path.name} from the original app holds no message list; it is kept as it is "
            "in history/."
        )
        return None
    return data


def convert_messages(items: list[Any], at: float) -> _Converted:
    """Every item of a seed message list as (role, text, time, meta), nothing skipped."""
    out = _Converted()
    previous = None
    for item in items:
        raw_role, raw_content = _split(item)
        role, known = _role(raw_role, previous)
        text, shape = _text(raw_content)
        meta: dict[str, Any] = {}
        if not known:
            meta["original_role"] = raw_role
            out.roles[(_shown(raw_role), role)] += 1
        if shape is not None:
            meta["original_content"] = raw_content
            out.reshaped[shape] += 1
        out.messages.append((role, text, at, meta))
        previous = role
    return out


def _split(item: Any) -> tuple[Any, Any]:
    """(role, content) of one list item, whatever its shape."""
    if isinstance(item, dict):
        content = item.get("content", item.get("text"))
        return item.get("role", item.get("author", item.get("sender"))), content
    if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    return None, item


def _role(raw: Any, previous: str | None) -> tuple[str, bool]:
    """(role, known): a known role as it is, a synonym mapped, anything else taken as
    the turn after the previous message (a reply to the user, else the user)."""
    if isinstance(raw, str):
        key = raw.strip().lower()
        if key in HISTORY_ROLES:
            return key, True
        if key in _SYNONYM:
            return _SYNONYM[key], False
    return ("assistant" if previous == "user" else "user"), False


def _text(content: Any) -> tuple[str, str | None]:
    """(text, shape): the content as text, and what it was when it was not text."""
    if isinstance(content, str):
        return content, None
    if content is None:
        return "", "no content"
    if isinstance(content, list):
        return "\n".join(t for t in map(_part_text, content) if t), "a list of parts"
    return _part_text(content), "an object" if isinstance(content, dict) else "a JSON value"


def _part_text(part: Any) -> str:
    """The text of one content part ({"type": "text", "text": ...} and the like)."""
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        for key in ("text", "content", "value"):
            if isinstance(part.get(key), str):
                return part[key]
        for key in ("content", "parts"):
            if isinstance(part.get(key), list):
                return _text(part[key])[0]
    return json.dumps(part, ensure_ascii=False)


def _keep_original(path: Path) -> Path:
    """Rename the imported file to <name>.chat.imported (or -2, -3...), never replacing
    another file, so the user can check the import and delete it themselves."""
    target = path.with_name(path.name + IMPORTED_SUFFIX)
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}{IMPORTED_SUFFIX}-{n}")
        n += 1
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def _notice(path: Path, model_id: str, converted: _Converted, kept: Path, unmatched: bool) -> str:
    """What happened to one file, in words."""
    count = len(converted.messages)
    where = f"model {model_id!r}"
    if unmatched:
        where += (
            " (no single model in the library matches that name, so it is filed under the "
            "name itself: see it with `appliance history list`)"
        )
    parts = [f"Imported {count} message{'s' if count != 1 else ''} of {path.stem!r} from the "
             f"original app into {where}."]  # fmt: skip
    for (original, role), n in converted.roles.items():  # in order of appearance
        parts.append(f"{n} with role {original} {'was' if n == 1 else 'were'} imported as {role}.")
    for shape, n in converted.reshaped.items():
        parts.append(
            f"{n} whose content was {shape} {'was' if n == 1 else 'were'} turned into text "
            "(the original is kept in the message's meta)."
        )
    parts.append(
        f"The original file is kept as history/{kept.name}: delete it once you have checked "
        "the conversation (it can be read by anyone who has a copy of the original app's "
        "settings.json)."
    )
    return " ".join(parts)


def _shown(raw_role: Any) -> str:
    return "(none)" if raw_role is None else repr(raw_role)


def _loose(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", label.casefold())
