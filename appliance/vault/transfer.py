"""Conversation export (Markdown, JSON) and import (that JSON, or the seed's plain list).

JSON export, version 1:

    {"format": "offline-llm-switcher/conversation", "version": 1,
     "model_id": "...", "conversation_id": "...", "title": "...",
     "created_at": "<ISO 8601>", "messages": [
        {"role": "user", "content": "...", "created_at": "<ISO 8601>", "meta": {}}]}

Import also accepts a bare list of {"role", "content"} objects, the seed's format.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appliance.roles import HISTORY_ROLES
from appliance.vault.errors import HistoryError

if TYPE_CHECKING:
    from appliance.vault.history import ConversationLog

FORMAT = "offline-llm-switcher/conversation"
VERSION = 1
MAX_IMPORT_MESSAGES = 1_000_000
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def to_json(model_id: str, log: ConversationLog) -> str:
    doc = {
        "format": FORMAT, "version": VERSION, "model_id": model_id,
        "conversation_id": log.info.id, "title": log.info.title,
        "created_at": iso(log.info.created_at),
        "messages": [
            {"role": m.role, "content": m.content, "created_at": iso(m.created_at), "meta": m.meta}
            for m in log.messages
        ],
    }  # fmt: skip
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them, as JSON escapes
        text = json.dumps(doc, indent=2, ensure_ascii=True) + "\n"
    return text


def to_markdown(model_id: str, log: ConversationLog) -> str:
    info = log.info
    lines = [
        f"# {info.title or 'Untitled conversation'}",
        "",
        f"Model `{model_id}` · conversation `{info.id}` · {len(log.messages)} messages · "
        f"started {_human(info.created_at)}",
    ]
    for msg in log.messages:
        notes = [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in msg.meta.items()]
        lines += ["", f"## {msg.role.capitalize()} · {_human(msg.created_at)}", ""]
        lines.append(msg.content)
        if notes:
            lines += ["", f"*({'; '.join(notes)})*"]
    return "\n".join(lines) + "\n"


def parse_json(text: str) -> tuple[str | None, float | None, list[tuple[str, str, Any, Any]]]:
    """(title, created_at, [(role, content, created_at, meta)]) from an export."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"it is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(doc, list):
        title, created, items = None, None, doc
    elif isinstance(doc, dict):
        if doc.get("format") != FORMAT:
            raise _bad(f"its format is {doc.get('format')!r}, not {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise _bad(f"it has version {doc.get('version')!r}; this app reads {VERSION}")
        title, items = doc.get("title"), doc.get("messages")
        if title is not None and not isinstance(title, str):
            raise _bad("its title is not text")
        created = _time(doc.get("created_at"), "created_at")
    else:
        raise _bad("it is neither an export object nor a list of messages")
    if not isinstance(items, list):
        raise _bad("it has no `messages` list")
    if len(items) > MAX_IMPORT_MESSAGES:
        raise _bad(f"it has more than {MAX_IMPORT_MESSAGES:,} messages")
    return title, created, [_message(i, item) for i, item in enumerate(items)]


def _message(index: int, item: Any) -> tuple[str, str, float | None, dict]:
    if not isinstance(item, dict):
        raise _bad(f"messages[{index}] is not an object")
    role, content, meta = item.get("role"), item.get("content"), item.get("meta")
    if role not in HISTORY_ROLES:
        raise _bad(
            f"messages[{index}].role is {role!r}; expected one of {', '.join(HISTORY_ROLES)}"
        )
    if not isinstance(content, str):
        raise _bad(f"messages[{index}].content is not text")
    if meta is not None and not isinstance(meta, dict):
        raise _bad(f"messages[{index}].meta is not an object")
    return role, content, _time(item.get("created_at"), f"messages[{index}].created_at"), meta or {}


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _bad(f"{where} is not an ISO 8601 time ({value!r})") from None
        ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        raise _bad(f"{where} is not a time")
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise _bad(f"{where} is out of range ({value!r})")
    return ts


def _human(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bad(why: str) -> HistoryError:
    return HistoryError(
        f"This file cannot be imported: {why}. Import a file made by "
        "`appliance history export MODEL --format json` (or the app's JSON export)."
    )
