"""The library: registry + inspection + hashing, the one API the CLI, watcher and UI use.

It knows what is on disk and never loads a model. Every change goes through a registry
transaction, so the CLI, the app and the watcher can work on the same folder at once.
Entries are frozen appliance.model_entry.ModelEntry values; every method that adds or
re-reads a model returns an Outcome saying what happened (added, moved, restored,
updated, damaged, missing, unchanged, or hidden), so callers report it without working
it out again.

Which files are candidates, and when a copy has finished, is decided in
appliance.library.dropins, for the scan here and the drop-in watcher alike.

Removing a model without deleting its files hides it: scans and the watcher skip a file
that matches a hidden entry (same path and size, and same mtime or sha256) until the
user un-hides it. An entry whose file changed size or mtime is read again; one that no
longer reads is marked "damaged" with the reason.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance import capabilities, sampling
from appliance.errors import ImportRefused, ModelFileError, RegistryCorrupt, UnknownModel
from appliance.fsutil import sweep_stale_temps
from appliance.library.dropins import (
    Signature,
    copy_finished,
    find_candidates,
    signature,
)
from appliance.library.hashing import Hasher, sha256_path
from appliance.library.inspect import inspect_model
from appliance.library.model_info import ModelInfo
from appliance.library.registry import HiddenRecord, Registry, RegistryData, now_iso
from appliance.model_entry import ModelEntry, ModelMetadata
from appliance.paths import Paths, current


class Change(StrEnum):
    """What bringing a model's files into the library did to its entry."""

    ADDED = "added"
    MOVED = "moved"  # a missing entry's files found at a new path
    RESTORED = "restored"  # a missing entry's files are back at its path
    UPDATED = "updated"  # its files changed and were read again
    DAMAGED = "damaged"  # its files changed and no longer read as a model
    MISSING = "missing"  # its files are gone
    UNCHANGED = "unchanged"
    HIDDEN = "hidden"  # a removed model's files: not added again


@dataclass(frozen=True)
class Outcome:
    change: Change
    entry: ModelEntry


Heard = Callable[[Path, Outcome], None]  # told each outcome of a scan, with its path


def problem_text(name: str, message: str) -> str:
    """An inspection error without its leading "<file name>: " (the caller shows the path)."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)  # paths, relative to models/
    rejected: dict[str, str] = field(default_factory=dict)
    busy: list[Path] = field(default_factory=list)

    def changed(self) -> bool:
        """Whether the scan found anything to report."""
        return any((self.added, self.missing, self.restored, self.moved, self.updated,
                    self.damaged, self.hidden, self.rejected))  # fmt: skip

    def record(self, outcome: Outcome, where: str) -> None:
        """File one outcome under its change (where: its path, for hidden models)."""
        change, entry = outcome.change, outcome.entry
        if change is Change.DAMAGED:
            self.damaged[entry.id] = entry.problem or ""
        elif change is Change.HIDDEN:
            self.hidden.append(where)
        elif change is not Change.UNCHANGED:
            getattr(self, change.value).append(entry.id)


@dataclass(frozen=True)
class DropInProblem:
    """A file or folder in models/ that is not in the library because it cannot be used."""

    path: str  # relative to models/
    reason: str


@dataclass(frozen=True)
class HiddenModel:
    """A model removed from the library whose files were kept."""

    entry: ModelEntry
    hidden_at: str
    on_disk: str  # "unchanged", "changed" or "missing"


class Library:
    """Models on disk and their registry, under one APPLIANCE_HOME."""

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = (paths or current()).ensure()
        self.registry = Registry(self.paths.registry)
        self.hasher = Hasher(self._hash_entry)
        self._problems: dict[Path, tuple[Signature | None, str | None]] = {}
        self._problems_lock = threading.Lock()
        sweep_stale_temps(self.paths.models)

    # -- reading -----------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        return self.registry.entries()

    def get(self, model_id: str) -> ModelEntry:
        return self.registry.load().get(model_id)

    def resolve(self, entry: ModelEntry) -> Path:
        path = Path(entry.path)
        return path if entry.external else self.paths.models / path

    def relative(self, path: Path) -> str | None:
        """path relative to models/ (as stored), or None when it lies outside."""
        models = self.paths.models.resolve()
        try:
            return Path(os.path.abspath(path)).relative_to(models).as_posix()
        except ValueError:
            return None

    def _key(self, path: Path) -> str:
        """path as the registry stores it: relative inside models/, else absolute."""
        rel = self.relative(path)
        return rel if rel is not None else os.path.abspath(path)

    # -- hidden models -----------------------------------------------------------------
    def hidden(self) -> list[HiddenModel]:
        """Models removed with their files kept, and whether those files are still there."""
        return [
            HiddenModel(r.entry, r.hidden_at, self._on_disk(r.entry))
            for r in self.registry.load().hidden
        ]

    def _on_disk(self, entry: ModelEntry) -> str:
        sig = signature(self.resolve(entry))
        if sig is None:
            return "missing"
        return (
            "unchanged"
            if (sig.size, sig.mtime_ns) == (entry.size_bytes, entry.mtime)
            else "changed"
        )

    def hidden_match(self, path: Path, data: RegistryData | None = None) -> ModelEntry | None:
        """The hidden entry that path still is (same path and size, same mtime or sha256).

        A different file dropped at the same path is not a match: it is a new model.
        data: the registry as already read, if the caller has it.
        """
        key = self._key(path)
        records = [r for r in (data or self.registry.load()).hidden if r.entry.path == key]
        sig = signature(path) if records else None
        for record in records:
            entry = record.entry
            if sig is None or sig.size != entry.size_bytes:
                continue
            if entry.mtime == sig.mtime_ns:
                return entry
            if entry.sha256 and sha256_path(path) == entry.sha256:
                self._remember_hidden_mtime(entry.id, sig.mtime_ns)
                return entry
        return None

    def _remember_hidden_mtime(self, model_id: str, mtime: int) -> None:
        """Same bytes, new mtime (copied back): store it so the next check needs no hash."""
        with self.registry.transaction() as data:
            record = data.find_hidden(model_id)
            if record is not None:
                _store_hidden(data, record, replace(record.entry, mtime=mtime))

    def unhide(self, model_id: str) -> ModelEntry:
        """Put a hidden model back in the library, with its id, name and defaults."""
        with self.registry.transaction() as data:
            record = data.find_hidden(model_id)
            if record is None:
                raise UnknownModel(
                    f"No hidden model with id {model_id!r}. Run `appliance models hidden` to "
                    "see the hidden ones."
                )
            entry = record.entry
            other = data.find_by_path(entry.path)
            if other is not None:
                raise ImportRefused(
                    f"{entry.path} now holds another model, {other.name} (id {other.id}), "
                    f"added after {model_id} was hidden, so {model_id}'s own file is no "
                    "longer there. Nothing was changed."
                )
            data.hidden.remove(record)
            data.models[model_id] = entry
        entry = self._recheck(entry).entry
        if entry.sha256 is None and entry.status == "present":
            self.hasher.submit(model_id)
        return entry

    # -- stale entries ---------------------------------------------------------------------
    def recheck(self, model_id: str) -> Outcome:
        """Compare an entry with its files; re-read them if their size or mtime changed.

        The change is MISSING, RESTORED, UPDATED, DAMAGED (the entry's `problem` then says
        why) or UNCHANGED.
        """
        return self._recheck(self.get(model_id))

    def _recheck(self, entry: ModelEntry) -> Outcome:
        if entry.is_remote:
            return Outcome(Change.UNCHANGED, entry)
        path = self.resolve(entry)
        sig = signature(path)
        if sig is None:
            if entry.status == "missing":
                return Outcome(Change.UNCHANGED, entry)
            missing = self._set_fields(entry.id, status="missing", problem=None)
            return Outcome(Change.MISSING, missing)
        same = (sig.size, sig.mtime_ns) == (entry.size_bytes, entry.mtime)
        if same and entry.status != "missing":
            return Outcome(Change.UNCHANGED, entry)
        try:
            info = inspect_model(path)
        except (ModelFileError, OSError) as exc:
            damaged = self._set_fields(
                entry.id, status="damaged", problem=problem_text(path.name, str(exc)),
                size_bytes=sig.size, mtime=sig.mtime_ns, sha256=None,
            )  # fmt: skip
            return Outcome(Change.DAMAGED, damaged)
        return self.register(path, info=info, external=entry.external)

    def _set_fields(self, model_id: str, **values: Any) -> ModelEntry:
        """Set fields of one entry; return the entry."""
        with self.registry.transaction() as data:
            entry = data.models[model_id] = replace(data.get(model_id), **values)
            return entry

    def refresh(self, settle_s: float = 0.0, on_outcome: Heard | None = None) -> ScanReport:
        """Recheck every entry against its files (see recheck); report what changed.

        An entry whose copy may not have finished (dropins.copy_finished) is left alone
        and listed in `busy`. on_outcome hears each entry's outcome, with its path.
        """
        report = ScanReport()
        for entry in self.entries():
            if entry.is_remote:
                continue
            path = self.resolve(entry)
            sig = signature(path)
            if sig is not None and not copy_finished(sig, settle_s):
                report.busy.append(path)
                continue
            outcome = self._recheck(entry)
            report.record(outcome, entry.path)
            if on_outcome is not None:
                on_outcome(path, outcome)
        return report

    # -- drop-ins that cannot be used ---------------------------------------------------
    def rejected_drop_ins(self, settle_s: float = 2.0) -> list[DropInProblem]:
        """Candidates in models/ that are not registered because they do not read as models.

        Hidden models read fine and are not listed here. A file whose copy may not have
        finished (see dropins.copy_finished) is left out. Results are kept per file until
        its signature changes.
        """
        registered = {self.resolve(e) for e in self.entries()}
        found: list[DropInProblem] = []
        for candidate in self.candidates():
            if candidate in registered:
                continue
            sig = signature(candidate)
            if sig is None or not copy_finished(sig, settle_s):
                continue
            reason = self._problem_of(candidate, sig)
            if reason is not None:
                found.append(DropInProblem(self.relative(candidate) or str(candidate), reason))
        return found

    def _problem_of(self, candidate: Path, sig: Signature) -> str | None:
        """Why candidate cannot be read as a model (None if it can); cached by signature."""
        with self._problems_lock:
            cached = self._problems.get(candidate)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:
            inspect_model(candidate)
            reason = None
        except (ModelFileError, OSError) as exc:
            reason = problem_text(candidate.name, str(exc))
        with self._problems_lock:
            self._problems[candidate] = (sig, reason)
        return reason

    # -- changing ------------------------------------------------------------------
    def register(
        self,
        path: Path,
        *,
        name: str | None = None,
        backend: str | None = None,
        architecture: str | None = None,
        external: bool = False,
        sha256: str | None = None,
        info: ModelInfo | None = None,
    ) -> Outcome:
        """Add the model at path, or read again the entry registered there.

        The change is ADDED, MOVED (a missing entry's file turned up here: same size and
        mtime, or same name and size), RESTORED, UPDATED or UNCHANGED.
        """
        path = Path(os.path.abspath(path))
        info = info or inspect_model(path)
        stored = self._stored_path(path, external)
        chosen = self.check_backend(info, backend)
        mtime = _mtime(path)
        read = dict(
            path=stored, external=external, format=info.format, backend=chosen,
            architecture=info.architecture, architecture_source=info.architecture_source,
            size_bytes=info.size_bytes, mtime=mtime, status="present", problem=None,
            metadata=info.metadata,
        )  # fmt: skip
        with self.registry.transaction() as data:
            old, change = data.find_by_path(stored), Change.UPDATED
            if old is None:
                old, change = _moved_entry(data, path, info, mtime), Change.MOVED
            elif old.status == "missing":
                change = Change.RESTORED
            if old is None:
                label = name or _default_name(path)
                entry = ModelEntry(id=data.new_id(label), name=label, added_at=now_iso(),
                                   sha256=sha256, **read)  # fmt: skip
                change = Change.ADDED
            else:
                entry = _reread(old, read, name, backend, sha256)
            if architecture:
                entry = replace(entry, architecture=architecture, architecture_source="user")
            if change is Change.UPDATED and entry == old:
                change = Change.UNCHANGED
            data.models[entry.id] = entry
        if entry.sha256 is None:
            self.hasher.submit(entry.id)
        return Outcome(change, entry)

    def take_in(self, candidate: Path) -> Outcome:
        """Bring a candidate in models/ whose copy has finished into the library: read it
        again if it is registered, skip it if it is a hidden model, else register it.

        Raises what inspection raises for a new candidate (TruncatedModelFile: the copy
        is incomplete); a registered one that no longer reads comes back DAMAGED.
        """
        data = self.registry.load()
        entry = data.find_by_path(self._key(candidate))
        if entry is not None:
            return self._recheck(entry)
        hidden = self.hidden_match(candidate, data)
        if hidden is not None:
            return Outcome(Change.HIDDEN, hidden)
        return self.register(candidate)

    def add_remote(self, base_url: str, model: str, name: str | None = None) -> ModelEntry:
        """Register a model served by an OpenAI-compatible server (base URL + model name).

        The API key is not stored here: the caller keeps it in the vault, under the
        entry's `secret_name`. Adding the same server and model again returns the
        existing entry (renamed if a name is given).
        """
        url = normalize_base_url(base_url)
        model = model.strip()
        if not 0 < len(model) <= 200:
            raise ImportRefused("A remote model name must have 1 to 200 characters.")
        label = (name or model).strip()
        with self.registry.transaction() as data:
            for entry in data.models.values():
                if entry.path == url and entry.metadata.model_name == model:
                    if name:
                        entry = data.models[entry.id] = replace(entry, name=label)
                    return entry
            entry = ModelEntry(
                id=data.new_id(label), name=label, path=url, external=True, format="openai",
                backend="openai", architecture="remote", architecture_source="user",
                size_bytes=0, mtime=None, sha256=None, added_at=now_iso(), status="present",
                metadata=ModelMetadata(model_name=model, notes=(f"served by {url}",)),
            )  # fmt: skip
            data.models[entry.id] = entry
            return entry

    def rename(self, model_id: str, name: str) -> ModelEntry:
        name = name.strip()
        if not 0 < len(name) <= 200:
            raise ImportRefused("A model name must have 1 to 200 characters.")
        return self._set_fields(model_id, name=name)

    def set_defaults(self, model_id: str, values: dict[str, Any]) -> ModelEntry:
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            try:
                defaults = sampling.validate({**entry.defaults, **values})
            except ValueError as exc:
                raise ImportRefused(f"Invalid setting: {exc}.") from None
            entry = data.models[model_id] = replace(entry, defaults=defaults)
            return entry

    def remove(self, model_id: str, delete_files: bool = False) -> ModelEntry:
        """Take the model out of the library.

        Weights are deleted only with delete_files, and only in models/. Without it the
        files stay and the entry is hidden: scans and the watcher do not add it again
        until `unhide`. A remote model has no files and is simply dropped.
        """
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            if delete_files and entry.external:
                raise ImportRefused(
                    f"{entry.path} is outside models/ (registered in place); this app never "
                    "deletes files there. Remove the entry without --delete-files and delete "
                    "the files yourself if you mean to."
                )
            del data.models[model_id]
            hide = not delete_files and not entry.is_remote
            if hide:
                data.hidden.append(HiddenRecord(now_iso(), entry))
        if hide and entry.sha256 is None:
            self.hasher.submit(model_id)
        target = self.resolve(entry)
        if delete_files and (target.exists() or target.is_symlink()):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        return entry

    def mark_missing(self, path: Path) -> list[str]:
        """Mark the entries at (or under) path missing; return their ids."""
        prefix = self.relative(path)
        changed: list[str] = []
        with self.registry.transaction() as data:
            for entry in list(data.models.values()):
                stored = entry.path
                inside = (
                    prefix is not None
                    and not entry.external
                    and (stored == prefix or stored.startswith(prefix + "/"))
                )
                gone = (inside or stored == str(path)) and not self.resolve(entry).exists()
                if gone and entry.status != "missing":
                    data.models[entry.id] = replace(entry, status="missing")
                    changed.append(entry.id)
        return changed

    def mark_moved(self, src: Path, dst: Path) -> list[str]:
        """Follow a rename or move inside models/: update paths; return the ids moved."""
        old, new = self.relative(src), self.relative(dst)
        if old is None or new is None:
            return []
        moved: list[str] = []
        with self.registry.transaction() as data:
            for entry in list(data.models.values()):
                stored = entry.path
                if entry.external or not (stored == old or stored.startswith(old + "/")):
                    continue
                entry = replace(entry, path=new + stored[len(old) :])
                status = "present" if self.resolve(entry).exists() else "missing"
                data.models[entry.id] = replace(entry, status=status)
                moved.append(entry.id)
        return moved

    # -- scanning --------------------------------------------------------------------
    def candidates(self, under: Path | None = None) -> list[Path]:
        """Model files (.gguf, .bin) and Hugging Face folders found under models/."""
        return find_candidates(self.paths.models, under)

    def scan(self, settle_s: float = 0.0, on_outcome: Heard | None = None) -> ScanReport:
        """Bring the registry in line with models/: register new, mark missing, restore,
        re-read changed files; hidden models are skipped. on_outcome hears the outcome of
        each registered model and each new candidate, with its path."""
        self.registry.ensure()
        report = self.refresh(settle_s, on_outcome)
        registered = {self.resolve(e) for e in self.entries()}
        for candidate in self.candidates():
            if candidate in registered:
                continue
            sig = signature(candidate)
            if sig is None:
                continue
            if not copy_finished(sig, settle_s):
                report.busy.append(candidate)
                continue
            rel = self.relative(candidate) or str(candidate)
            try:
                outcome = self.take_in(candidate)
            except RegistryCorrupt:
                raise
            except Exception as exc:  # whatever inspection raises: the file is not usable
                report.rejected[rel] = problem_text(candidate.name, str(exc))
                continue
            report.record(outcome, rel)
            if on_outcome is not None:
                on_outcome(candidate, outcome)
        data = self.registry.load()
        for entry in [*data.models.values(), *(r.entry for r in data.hidden)]:
            if entry.sha256 is None and entry.status == "present" and not entry.is_remote:
                self.hasher.submit(entry.id)
        return report

    # -- internals ---------------------------------------------------------------------
    def _stored_path(self, path: Path, external: bool) -> str:
        rel = self.relative(path)
        if rel is not None and not external:
            return rel
        if external:
            return str(path)
        raise ImportRefused(
            f"{path} is outside {self.paths.models}. Copy or link it in (--copy/--link), or "
            "register it where it is with --in-place."
        )

    def check_backend(self, info: ModelInfo, backend: str | None) -> str:
        """The backend to use for info: the chosen one if it can load the format."""
        fmt = capabilities.FORMATS[info.format]
        if not fmt.backends:
            raise ImportRefused(f"{Path(info.path).name}: {fmt.refusal}")
        if backend is None:
            return info.backend
        if backend not in capabilities.BACKENDS:
            raise ImportRefused(
                f"Unknown backend {backend!r}; choose one of "
                f"{', '.join(capabilities.BACKEND_NAMES)}."
            )
        if backend not in fmt.backends:
            raise ImportRefused(
                f"The {backend} backend cannot load {info.format} models; use "
                f"{' or '.join(fmt.backends)}."
            )
        return backend

    def _hash_entry(self, model_id: str) -> None:
        """Fill in the sha256 of an entry, or of a hidden one (removed before its hash was
        done: the hash is what recognises its file when it is copied back)."""
        entry = _active_or_hidden(self.registry.load(), model_id)
        if entry is None:
            return
        path = self.resolve(entry)
        if entry.sha256 or entry.status != "present" or not path.exists():
            return
        mtime = _mtime(path)
        if entry.mtime != mtime:
            return  # changed since it was read: recheck reads it again first
        digest = sha256_path(path)
        with self.registry.transaction() as data:
            now = _active_or_hidden(data, model_id)
            same_file = now is not None and now.path == entry.path and now.mtime == mtime
            if same_file and now.status == "present" and _mtime(path) == mtime:
                hashed = replace(now, sha256=digest)
                if model_id in data.models:
                    data.models[model_id] = hashed
                else:
                    _store_hidden(data, data.find_hidden(model_id), hashed)


def _active_or_hidden(data: RegistryData, model_id: str) -> ModelEntry | None:
    """The entry of model_id, in the library or hidden (None if neither)."""
    if model_id in data.models:
        return data.models[model_id]
    record = data.find_hidden(model_id)
    return record.entry if record else None


def _store_hidden(data: RegistryData, record: HiddenRecord, entry: ModelEntry) -> None:
    data.hidden[data.hidden.index(record)] = HiddenRecord(record.hidden_at, entry)


def normalize_base_url(base_url: str) -> str:
    """'http://host:8000' or 'http://host:8000/v1/' -> 'http://host:8000/v1'."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ImportRefused(
            f"{base_url!r} is not a server address; use http://HOST:PORT (optionally ending "
            "in /v1), for example http://192.168.1.20:8000/v1."
        )
    return url if parts.path.endswith("/v1") else url + "/v1"


def _moved_entry(data: RegistryData, path: Path, info: ModelInfo, mtime: int) -> ModelEntry | None:
    """A missing entry that is this file moved or renamed: same size and mtime, or
    same file name and size (a move keeps both; a fresh copy gets a new mtime)."""
    for entry in data.models.values():
        if entry.status != "missing" or entry.size_bytes != info.size_bytes:
            continue
        if entry.mtime == mtime or Path(entry.path).name == path.name:
            return entry
    return None


def _reread(
    old: ModelEntry, read: dict[str, Any], name: str | None, backend: str | None,
    sha256: str | None,
) -> ModelEntry:  # fmt: skip
    """old with what was read from its files: its name, a backend that still fits, and an
    architecture the user set are kept; its hash only if size and mtime are the same."""
    changed = (old.size_bytes, old.mtime) != (read["size_bytes"], read["mtime"])
    kept: dict[str, Any] = {"name": name or old.name}
    if backend is None and capabilities.can_load(old.backend, read["format"]):
        kept["backend"] = old.backend
    if old.architecture_source == "user":
        kept |= {"architecture": old.architecture, "architecture_source": "user"}
    kept["sha256"] = sha256 or (None if changed else old.sha256)
    return replace(old, **read | kept)


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _mtime(path: Path) -> int:
    """Newest modification time (ns) of a file, or of any file in a folder."""
    sig = signature(path)
    if sig is None:
        raise FileNotFoundError(path)
    return sig.mtime_ns
