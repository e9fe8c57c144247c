"""models/registry.json: the library's list of models, versioned and validated.

Every write happens inside `Registry.transaction()`, which takes a lock held across
threads and processes, re-reads the file, lets the caller change the entries, and
writes the result atomically. A registry that cannot be read is never overwritten:
loading raises RegistryCorrupt naming the problem, and a copy of the bad file is kept
beside it. `repair()` is the only way to rebuild, and it lists what it could not keep.

Besides `models`, the document holds `hidden`: entries the user removed while keeping
their files, each with the date it was hidden, so that scans and the drop-in watcher do
not add them again. A file without `hidden` (written before it existed) reads as none.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance import sampling
from appliance.errors import RegistryCorrupt, UnknownModel
from appliance.fsutil import FileLock, atomic_write_bytes, atomic_write_json
from appliance.library.model_info import BACKENDS, FORMATS

SCHEMA = "offline-llm-switcher/registry"
VERSION = 1
STATUSES = ("present", "missing", "damaged")
METADATA_KEYS = (
    "model_name", "parameters", "quantization", "dtype", "context_length", "chat_template",
    "tokenizer", "gguf_version", "ggml_variant", "shards", "tensor_count", "layers",
    "embedding", "heads", "kv_heads", "notes",
)  # fmt: skip
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
REPAIR_HINT = (
    "Fix the file by hand, or run `appliance models repair` to rebuild it (entries that "
    "cannot be read are listed, never silently dropped)."
)


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return (slug or "model")[:80]


@dataclass
class RegistryData:
    """The registry's entries by id, in insertion order."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    hidden: list[dict[str, Any]] = field(default_factory=list)

    def new_id(self, name: str) -> str:
        """A free id for name; ids of hidden models stay reserved (their history uses them)."""
        base = slugify(name)
        taken = set(self.models) | {record["entry"]["id"] for record in self.hidden}
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def get(self, model_id: str) -> dict[str, Any]:
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModel(
                f"No model with id {model_id!r}. Run `appliance models list` to see the ids."
            ) from None

    def find_by_path(self, path: str) -> dict[str, Any] | None:
        return next((e for e in self.models.values() if e["path"] == path), None)

    def find_hidden(self, model_id: str) -> dict[str, Any] | None:
        """The hidden record ({"hidden_at", "entry"}) of model_id, or None."""
        return next((r for r in self.hidden if r["entry"]["id"] == model_id), None)

    def to_json(self) -> dict[str, Any]:
        models = [_ordered(entry) for entry in self.models.values()]
        hidden = [{"hidden_at": r["hidden_at"], "entry": _ordered(r["entry"])} for r in self.hidden]
        return {"schema": SCHEMA, "version": VERSION, "models": models, "hidden": hidden}


ENTRY_ORDER = (
    "id", "name", "path", "external", "format", "backend", "architecture",
    "architecture_source", "size_bytes", "mtime", "sha256", "added_at", "status", "problem",
    "metadata", "defaults",
)  # fmt: skip


def _ordered(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with its keys in a fixed, readable order (unknown keys last)."""
    head = {k: entry[k] for k in ENTRY_ORDER if k in entry}
    return head | {k: v for k, v in entry.items() if k not in head}


class Registry:
    """The registry file of one models/ folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = FileLock(path.parent / ".registry.lock")

    def load(self) -> RegistryData:
        """Read and validate the file; an absent file is an empty registry."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return RegistryData()
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = (
                f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
                if isinstance(exc, json.JSONDecodeError)
                else "it is not UTF-8 text"
            )
            self._fail(raw, f"is not valid JSON ({detail})")
        data, problems = parse(doc)
        if problems:
            self._fail(raw, f"has {len(problems)} problem(s): " + "; ".join(problems[:5]))
        return data

    def entries(self) -> list[dict[str, Any]]:
        return list(self.load().models.values())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RegistryData]:
        """Lock, re-read, let the caller change the data, then write it atomically."""
        with self.lock.hold():
            data = self.load()
            before = copy.deepcopy((data.models, data.hidden))
            yield data
            if (data.models, data.hidden) != before or not self.path.exists():
                self.save(data)

    def ensure(self) -> None:
        """Write an empty registry when there is none yet (an existing one is not touched)."""
        with self.transaction():
            pass

    def save(self, data: RegistryData) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, data.to_json(), mode=0o644)

    def repair(self) -> tuple[RegistryData, list[str]]:
        """Rebuild from what can be read; return the data and what was left out."""
        with self.lock.hold():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return RegistryData(), []
            backup = self._backup(raw)
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if doc is None:
                data, problems = (
                    RegistryData(),
                    [f"the whole file (not JSON; kept as {backup.name})"],
                )
            else:
                data, problems = parse(doc)
            self.save(data)
            return data, problems

    def _fail(self, raw: bytes, problem: str) -> None:
        backup = self._backup(raw)
        raise RegistryCorrupt(
            f"{self.path} {problem}. It was left untouched and a copy was saved as "
            f"{backup.name}. {REPAIR_HINT}"
        )

    def _backup(self, raw: bytes) -> Path:
        digest = hashlib.sha256(raw).hexdigest()[:12]
        backup = self.path.with_name(f"{self.path.name}.corrupt-{digest}")
        if not backup.exists():
            atomic_write_bytes(backup, raw, mode=0o600)
        return backup


def parse(doc: Any) -> tuple[RegistryData, list[str]]:
    """Validate a registry document; return the valid entries and a list of problems."""
    if not isinstance(doc, dict):
        return RegistryData(), ["the top level is not a JSON object"]
    problems: list[str] = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"'schema' is {doc.get('schema')!r}, expected {SCHEMA!r}")
    if doc.get("version") != VERSION:
        problems.append(
            f"'version' is {doc.get('version')!r}; this app reads version {VERSION}"
            " (a newer app may have written it)"
        )
    models = doc.get("models")
    if not isinstance(models, list):
        return RegistryData(), [*problems, "'models' is not a list"]
    data = RegistryData()
    for index, entry in enumerate(models):
        try:
            clean = validate_entry(entry)
        except ValueError as exc:
            problems.append(f"models[{index}]: {exc}")
            continue
        if clean["id"] in data.models:
            problems.append(f"models[{index}]: the id {clean['id']!r} is used twice")
            continue
        data.models[clean["id"]] = clean
    _parse_hidden(doc.get("hidden", []), data, problems)
    return data, problems


def _parse_hidden(hidden: Any, data: RegistryData, problems: list[str]) -> None:
    """Validate the hidden records into data.hidden; name each one that is not valid."""
    if not isinstance(hidden, list):
        problems.append("'hidden' is not a list")
        return
    for index, record in enumerate(hidden):
        where = f"hidden[{index}]"
        if not isinstance(record, dict) or not isinstance(record.get("hidden_at"), str):
            problems.append(f"{where}: expected an object with 'hidden_at' and 'entry'")
            continue
        try:
            entry = validate_entry(record.get("entry"))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if entry["id"] in data.models or data.find_hidden(entry["id"]):
            problems.append(f"{where}: the id {entry['id']!r} is used twice")
            continue
        data.hidden.append({"hidden_at": record["hidden_at"], "entry": entry})


def validate_entry(entry: Any) -> dict[str, Any]:
    """Check one entry's fields and types; raise ValueError naming the first bad one."""
    if not isinstance(entry, dict):
        raise ValueError("the entry is not an object")
    _require(entry, "id", str, lambda v: bool(_ID_RE.match(v)), "lower-case letters, digits, .-_")
    label = f"entry {entry['id']!r}"
    _require(entry, "name", str, lambda v: 0 < len(v) <= 200, "1 to 200 characters", label)
    _require(entry, "path", str, bool, "a non-empty path", label)
    _require(entry, "external", bool, None, "true or false", label)
    _require(entry, "format", str, lambda v: v in FORMATS, f"one of {FORMATS}", label)
    _require(entry, "backend", str, lambda v: v in BACKENDS, f"one of {BACKENDS}", label)
    _require(entry, "architecture", str, bool, "a non-empty name", label)
    _require(entry, "size_bytes", int, lambda v: v >= 0, "a size in bytes", label)
    _require(entry, "status", str, lambda v: v in STATUSES, f"one of {STATUSES}", label)
    _require(entry, "added_at", str, bool, "a date", label)
    problem = entry.get("problem")
    if entry["status"] == "damaged" and not (isinstance(problem, str) and problem):
        raise ValueError(f"{label}: a damaged entry needs a 'problem' saying what is wrong")
    if entry["format"] == "openai" or entry["backend"] == "openai":
        _check_remote(entry, label)
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA_RE.match(sha)):
        raise ValueError(f"{label}: 'sha256' must be 64 hex digits or null")
    if not entry["external"] and (
        Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts
    ):
        raise ValueError(f"{label}: 'path' must stay inside models/ unless 'external' is true")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{label}: 'metadata' must be an object")
    unknown = set(metadata) - set(METADATA_KEYS)
    if unknown:
        raise ValueError(f"{label}: unknown metadata key(s) {sorted(unknown)}")
    clean = dict(entry)
    clean["metadata"] = metadata
    clean["sha256"] = sha
    clean.setdefault("architecture_source", "metadata")
    clean["defaults"] = sampling.validate(entry.get("defaults", {}), f"{label}: defaults")
    return clean


def _check_remote(entry: dict[str, Any], label: str) -> None:
    """A remote entry: format and backend 'openai', an http(s) base URL, a model name."""
    if (entry["format"], entry["backend"]) != ("openai", "openai"):
        raise ValueError(f"{label}: remote models need format and backend 'openai'")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", entry["path"]) or not entry["external"]:
        raise ValueError(f"{label}: 'path' must be the server's http(s) base URL, external")
    name = (
        entry.get("metadata", {}).get("model_name")
        if isinstance(entry.get("metadata"), dict)
        else None
    )
    if not (isinstance(name, str) and name):
        raise ValueError(f"{label}: 'metadata.model_name' must name the server's model")


def _require(entry: dict, key: str, kind: type, check: Any, expected: str, label: str = "") -> None:
    value = entry.get(key)
    where = f"{label}: " if label else ""
    if key not in entry:
        raise ValueError(f"{where}'{key}' is missing")
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok or (check is not None and not check(value)):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{where}'{key}' is {shown}; expected {expected}")
