"""models/registry.json: the library's list of models, versioned and validated.

Every write happens inside `Registry.transaction()`, which takes a lock held across
threads and processes, re-reads the file, lets the caller change the entries, and
writes the result atomically. A registry that cannot be read is never overwritten:
loading raises RegistryCorrupt naming the problem, and a copy of the bad file is kept
beside it. `repair()` is the only way to rebuild, and it lists what it could not keep.

Each entry is an appliance.model_entry.ModelEntry: its fields give the keys, their order
and their validation, and it writes an entry as earlier versions did.

Besides `models`, the document holds `hidden`: entries the user removed while keeping
their files, each with the date it was hidden, so that scans and the drop-in watcher do
not add them again. A file without `hidden` (written before it existed) reads as none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import RegistryCorrupt, UnknownModel
from appliance.fsutil import FileLock, atomic_write_bytes, atomic_write_json
from appliance.model_entry import ModelEntry

SCHEMA = "offline-llm-switcher/registry"
VERSION = 1
REPAIR_HINT = (
    "Fix the file by hand, or run `appliance models repair` to rebuild it (entries that "
    "cannot be read are listed, never silently dropped)."
)


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return (slug or "model")[:80]


@dataclass(frozen=True)
class HiddenRecord:
    """A model removed from the library with its files kept, and since when."""

    hidden_at: str
    entry: ModelEntry


@dataclass
class RegistryData:
    """The registry's entries by id, in insertion order, and the hidden models.

    Entries are frozen: a transaction changes one by storing a new one under its id.
    """

    models: dict[str, ModelEntry] = field(default_factory=dict)
    hidden: list[HiddenRecord] = field(default_factory=list)

    def new_id(self, name: str) -> str:
        """A free id for name; ids of hidden models stay reserved (their history uses them)."""
        base = slugify(name)
        taken = set(self.models) | {record.entry.id for record in self.hidden}
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModel(
                f"No model with id {model_id!r}. Run `appliance models list` to see the ids."
            ) from None

    def find_by_path(self, path: str) -> ModelEntry | None:
        return next((e for e in self.models.values() if e.path == path), None)

    def find_hidden(self, model_id: str) -> HiddenRecord | None:
        return next((r for r in self.hidden if r.entry.id == model_id), None)

    def to_json(self) -> dict[str, Any]:
        models = [entry.to_json() for entry in self.models.values()]
        hidden = [{"hidden_at": r.hidden_at, "entry": r.entry.to_json()} for r in self.hidden]
        return {"schema": SCHEMA, "version": VERSION, "models": models, "hidden": hidden}


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

    def entries(self) -> list[ModelEntry]:
        return list(self.load().models.values())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RegistryData]:
        """Lock, re-read, let the caller change the data, then write it atomically."""
        with self.lock.hold():
            data = self.load()
            before = (dict(data.models), list(data.hidden))  # entries are frozen
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
    for index, value in enumerate(models):
        try:
            entry = ModelEntry.from_json(value)
        except ValueError as exc:
            problems.append(f"models[{index}]: {exc}")
            continue
        if entry.id in data.models:
            problems.append(f"models[{index}]: the id {entry.id!r} is used twice")
            continue
        data.models[entry.id] = entry
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
            entry = ModelEntry.from_json(record.get("entry"))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if entry.id in data.models or data.find_hidden(entry.id):
            problems.append(f"{where}: the id {entry.id!r} is used twice")
            continue
        data.hidden.append(HiddenRecord(record["hidden_at"], entry))
