"""The library: registry + inspection + hashing, the one API the CLI, watcher and UI use.

It knows what is on disk and never loads a model. Every change goes through a registry
transaction, so the CLI, the app and the watcher can work on the same folder at once.

Removing a model without deleting its files hides it: scans and the watcher skip a file
that matches a hidden entry (same path and size, and same mtime or sha256) until the
user un-hides it. An entry whose file changed size or mtime is read again; one that no
longer reads is marked "damaged" with the reason.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance import sampling
from appliance.errors import ImportRefused, ModelFileError, UnknownModel
from appliance.fsutil import sweep_stale_temps
from appliance.library.hashing import Hasher, sha256_path
from appliance.library.inspect import inspect_model
from appliance.library.model_info import BACKENDS, ModelInfo
from appliance.library.registry import Registry, RegistryData, now_iso
from appliance.paths import Paths, current

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".aria2", "~")
DROP_IN_SUFFIXES = (".gguf", ".bin")
MAX_DEPTH = 3
# Which backends can load which formats.
COMPATIBLE = {
    "gguf": ("llama.cpp", "ctransformers"),
    "ggml": ("ctransformers",),
    "hf-folder": ("transformers",),
    "safetensors": (),
    "openai": ("openai",),
}


def is_ignored_name(name: str) -> bool:
    """Hidden files and partial-download names are never models."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES) or ".corrupt-" in lower


def problem_text(name: str, message: str) -> str:
    """An inspection error without its leading "<file name>: " (the caller shows the path)."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def signature(path: Path) -> tuple[int, int, int] | None:
    """(file count, total size, newest mtime) of a file or folder; None if it is gone."""
    try:
        if path.is_dir():
            stats = [p.stat() for p in path.rglob("*") if p.is_file()]
            return (
                len(stats),
                sum(s.st_size for s in stats),
                max((s.st_mtime_ns for s in stats), default=0),
            )
        stat = path.stat()
        return (1, stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:
        return None


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (as inspection counts them)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    busy: list[Path] = field(default_factory=list)

    def changed(self) -> bool:
        """Whether the scan found anything to report."""
        return any((self.added, self.missing, self.restored, self.moved, self.updated,
                    self.damaged, self.hidden, self.rejected))  # fmt: skip


@dataclass(frozen=True)
class DropInProblem:
    """A file or folder in models/ that is not in the library because it cannot be used."""

    path: str  # relative to models/
    reason: str


@dataclass(frozen=True)
class HiddenModel:
    """A model removed from the library whose files were kept."""

    entry: dict[str, Any]
    hidden_at: str
    on_disk: str  # "unchanged", "changed" or "missing"


class Library:
    """Models on disk and their registry, under one APPLIANCE_HOME."""

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = (paths or current()).ensure()
        self.registry = Registry(self.paths.registry)
        self.hasher = Hasher(self._hash_entry)
        self._problems: dict[Path, tuple[tuple | None, str | None]] = {}
        self._problems_lock = threading.Lock()
        sweep_stale_temps(self.paths.models)

    # -- reading -----------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        return self.registry.entries()

    def get(self, model_id: str) -> dict[str, Any]:
        return self.registry.load().get(model_id)

    @staticmethod
    def is_remote(entry: dict[str, Any]) -> bool:
        return entry["format"] == "openai"

    def resolve(self, entry: dict[str, Any]) -> Path:
        path = Path(entry["path"])
        return path if entry["external"] else self.paths.models / path

    def relative(self, path: Path) -> str | None:
        """path relative to models/ (as stored), or None when it lies outside."""
        models = self.paths.models.resolve()
        try:
            return Path(os.path.abspath(path)).relative_to(models).as_posix()
        except ValueError:
            return None

    def entry_at(self, path: Path) -> dict[str, Any] | None:
        """The registered entry whose files are at path, if any."""
        return self.registry.load().find_by_path(self._key(path))

    def _key(self, path: Path) -> str:
        """path as the registry stores it: relative inside models/, else absolute."""
        rel = self.relative(path)
        return rel if rel is not None else os.path.abspath(path)

    # -- hidden models -----------------------------------------------------------------
    def hidden(self) -> list[HiddenModel]:
        """Models removed with their files kept, and whether those files are still there."""
        return [
            HiddenModel(dict(r["entry"]), r["hidden_at"], self._on_disk(r["entry"]))
            for r in self.registry.load().hidden
        ]

    def _on_disk(self, entry: dict[str, Any]) -> str:
        path = self.resolve(entry)
        if not path.exists():
            return "missing"
        same = (disk_size(path), _mtime(path)) == (entry["size_bytes"], entry.get("mtime"))
        return "unchanged" if same else "changed"

    def hidden_match(self, path: Path) -> dict[str, Any] | None:
        """The hidden entry that path still is (same path and size, same mtime or sha256).

        A different file dropped at the same path is not a match: it is a new model.
        """
        key = self._key(path)
        for record in self.registry.load().hidden:
            entry = record["entry"]
            if entry["path"] != key or not path.exists():
                continue
            if disk_size(path) != entry["size_bytes"]:
                continue
            mtime = _mtime(path)
            if entry.get("mtime") == mtime:
                return entry
            if entry["sha256"] and sha256_path(path) == entry["sha256"]:
                self._remember_hidden_mtime(entry["id"], mtime)
                return entry
        return None

    def _remember_hidden_mtime(self, model_id: str, mtime: int) -> None:
        """Same bytes, new mtime (copied back): store it so the next check needs no hash."""
        with self.registry.transaction() as data:
            record = data.find_hidden(model_id)
            if record is not None:
                record["entry"]["mtime"] = mtime

    def unhide(self, model_id: str) -> dict[str, Any]:
        """Put a hidden model back in the library, with its id, name and defaults."""
        with self.registry.transaction() as data:
            record = data.find_hidden(model_id)
            if record is None:
                raise UnknownModel(
                    f"No hidden model with id {model_id!r}. Run `appliance models hidden` to "
                    "see the hidden ones."
                )
            entry = record["entry"]
            other = data.find_by_path(entry["path"])
            if other is not None:
                raise ImportRefused(
                    f"{entry['path']} now holds another model, {other['name']} (id "
                    f"{other['id']}), added after {model_id} was hidden, so {model_id}'s own "
                    "file is no longer there. Nothing was changed."
                )
            data.hidden.remove(record)
            data.models[model_id] = entry
        entry, _ = self.recheck(model_id)
        if entry["sha256"] is None and entry["status"] == "present":
            self.hasher.submit(model_id)
        return entry

    # -- stale entries ---------------------------------------------------------------------
    def recheck(self, model_id: str) -> tuple[dict[str, Any], str | None]:
        """Compare an entry with its files; re-read them if their size or mtime changed.

        Returns the entry and what changed: None, "missing", "restored", "updated" or
        "damaged" (the entry's "problem" then says why).
        """
        entry = self.get(model_id)
        if self.is_remote(entry):
            return entry, None
        path = self.resolve(entry)
        if not path.exists():
            if entry["status"] == "missing":
                return entry, None
            return self._set_fields(model_id, status="missing", problem=None), "missing"
        size, mtime = disk_size(path), _mtime(path)
        same = (size, mtime) == (entry["size_bytes"], entry.get("mtime"))
        if same and entry["status"] != "missing":
            return entry, None
        try:
            info = inspect_model(path)
        except (ModelFileError, OSError) as exc:
            damaged = self._set_fields(
                model_id, status="damaged", problem=problem_text(path.name, str(exc)),
                size_bytes=size, mtime=mtime, sha256=None,
            )  # fmt: skip
            return damaged, "damaged"
        was_missing = entry["status"] == "missing"
        entry = self.register(path, info=info, external=entry["external"])
        return entry, "restored" if was_missing else "updated"

    def _set_fields(self, model_id: str, **values: Any) -> dict[str, Any]:
        """Set fields of one entry (a None "problem" removes it); return the entry."""
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            entry.update(values)
            if entry.get("problem") is None:
                entry.pop("problem", None)
            return dict(entry)

    def refresh(self, settle_s: float = 0.0) -> ScanReport:
        """Recheck every entry against its files (see recheck); report what changed.

        An entry whose files changed less than settle_s ago is left alone and listed in
        `busy`: it may still be being written.
        """
        report = ScanReport()
        for entry in self.entries():
            if self.is_remote(entry):
                continue
            path = self.resolve(entry)
            if settle_s and path.exists() and time.time() - _mtime(path) / 1e9 < settle_s:
                report.busy.append(path)
                continue
            entry, change = self.recheck(entry["id"])
            if change == "damaged":
                report.damaged[entry["id"]] = entry["problem"]
            elif change is not None:
                getattr(report, change).append(entry["id"])
        return report

    # -- drop-ins that cannot be used ---------------------------------------------------
    def rejected_drop_ins(self, settle_s: float = 2.0) -> list[DropInProblem]:
        """Candidates in models/ that are not registered because they do not read as models.

        Hidden models read fine and are not listed here. A file changed less than
        settle_s ago may still be copying and is left out. Results are kept per file
        until its size or mtime changes.
        """
        registered = {self.resolve(e) for e in self.entries()}
        found: list[DropInProblem] = []
        for candidate in self.candidates():
            if candidate in registered:
                continue
            sig = signature(candidate)
            if sig is None or time.time() - sig[2] / 1e9 < settle_s:
                continue
            reason = self._problem_of(candidate, sig)
            if reason is not None:
                found.append(DropInProblem(self.relative(candidate) or str(candidate), reason))
        return found

    def _problem_of(self, candidate: Path, sig: tuple) -> str | None:
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
    ) -> dict[str, Any]:
        """Add the model at path, or refresh its entry if the path is registered already."""
        path = Path(os.path.abspath(path))
        info = info or inspect_model(path)
        stored = self._stored_path(path, external)
        backend_choice = backend
        backend = self.check_backend(info, backend)
        mtime = _mtime(path)
        with self.registry.transaction() as data:
            entry = data.find_by_path(stored) or _moved_entry(data, path, info, mtime)
            if entry is None:
                entry = {
                    "id": data.new_id(name or _default_name(path)),
                    "name": name or _default_name(path),
                    "added_at": now_iso(),
                    "defaults": sampling.defaults(),
                    "sha256": None,
                }
                data.models[entry["id"]] = entry
            elif name:
                entry["name"] = name
            changed = (entry.get("size_bytes"), entry.get("mtime")) != (info.size_bytes, mtime)
            user_arch = entry.get("architecture_source") == "user"
            kept = {"architecture": entry["architecture"]} if user_arch else {}
            kept |= {"architecture_source": "user"} if user_arch else {}
            if backend_choice is None and entry.get("backend") in COMPATIBLE[info.format]:
                backend = entry["backend"]
            entry.update(_entry_fields(info, stored, external, backend, mtime))
            entry.pop("problem", None)
            entry.update(kept)
            if architecture:
                entry.update(architecture=architecture, architecture_source="user")
            if sha256:
                entry["sha256"] = sha256
            elif changed:
                entry["sha256"] = None
            result = dict(entry)
        if result["sha256"] is None:
            self.hasher.submit(result["id"])
        return result

    def add_remote(self, base_url: str, model: str, name: str | None = None) -> dict[str, Any]:
        """Register a model served by an OpenAI-compatible server (base URL + model name).

        The API key is not stored here: the caller keeps it in the vault. Adding the same
        server and model again returns the existing entry (renamed if a name is given).
        """
        url = normalize_base_url(base_url)
        model = model.strip()
        if not 0 < len(model) <= 200:
            raise ImportRefused("A remote model name must have 1 to 200 characters.")
        label = (name or model).strip()
        with self.registry.transaction() as data:
            for entry in data.models.values():
                if entry["path"] == url and entry["metadata"].get("model_name") == model:
                    if name:
                        entry["name"] = label
                    return dict(entry)
            entry = {
                "id": data.new_id(label), "name": label, "path": url, "external": True,
                "format": "openai", "backend": "openai", "architecture": "remote",
                "architecture_source": "user", "size_bytes": 0, "mtime": None,
                "sha256": None, "added_at": now_iso(), "status": "present",
                "metadata": {"model_name": model, "notes": [f"served by {url}"]},
                "defaults": sampling.defaults(),
            }  # fmt: skip
            data.models[entry["id"]] = entry
            return dict(entry)

    def rename(self, model_id: str, name: str) -> dict[str, Any]:
        name = name.strip()
        if not 0 < len(name) <= 200:
            raise ImportRefused("A model name must have 1 to 200 characters.")
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            entry["name"] = name
            return dict(entry)

    def set_defaults(self, model_id: str, values: dict[str, Any]) -> dict[str, Any]:
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            try:
                entry["defaults"] = sampling.validate({**entry["defaults"], **values})
            except ValueError as exc:
                raise ImportRefused(f"Invalid setting: {exc}.") from None
            return dict(entry)

    def remove(self, model_id: str, delete_files: bool = False) -> dict[str, Any]:
        """Take the model out of the library.

        Weights are deleted only with delete_files, and only in models/. Without it the
        files stay and the entry is hidden: scans and the watcher do not add it again
        until `unhide`. A remote model has no files and is simply dropped.
        """
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            if delete_files and entry["external"]:
                raise ImportRefused(
                    f"{entry['path']} is outside models/ (registered in place); this app never "
                    "deletes files there. Remove the entry without --delete-files and delete "
                    "the files yourself if you mean to."
                )
            del data.models[model_id]
            hide = not delete_files and not self.is_remote(entry)
            if hide:
                data.hidden.append({"hidden_at": now_iso(), "entry": entry})
        if hide and entry["sha256"] is None:
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
            for entry in data.models.values():
                stored = entry["path"]
                inside = (
                    prefix is not None
                    and not entry["external"]
                    and (stored == prefix or stored.startswith(prefix + "/"))
                )
                gone = (inside or stored == str(path)) and not self.resolve(entry).exists()
                if gone and entry["status"] != "missing":
                    entry["status"] = "missing"
                    changed.append(entry["id"])
        return changed

    def mark_moved(self, src: Path, dst: Path) -> list[str]:
        """Follow a rename or move inside models/: update paths; return the ids moved."""
        old, new = self.relative(src), self.relative(dst)
        if old is None or new is None:
            return []
        moved: list[str] = []
        with self.registry.transaction() as data:
            for entry in data.models.values():
                if entry["external"]:
                    continue
                stored = entry["path"]
                if stored == old or stored.startswith(old + "/"):
                    entry["path"] = new + stored[len(old) :]
                    entry["status"] = "present" if self.resolve(entry).exists() else "missing"
                    moved.append(entry["id"])
        return moved

    # -- scanning --------------------------------------------------------------------
    def candidates(self, under: Path | None = None) -> list[Path]:
        """Model files (.gguf, .bin) and Hugging Face folders found under models/."""
        found: list[Path] = []
        start = under or self.paths.models
        if start.is_dir() and (start / "config.json").is_file() and start != self.paths.models:
            return [start]
        self._walk(start, 0, found)
        return found

    def _walk(self, folder: Path, depth: int, found: list[Path]) -> None:
        try:
            children = sorted(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for child in children:
            if is_ignored_name(child.name) or child.is_symlink():
                continue
            if child.is_dir():
                if (child / "config.json").is_file():
                    found.append(child)
                elif depth < MAX_DEPTH:
                    self._walk(child, depth + 1, found)
            elif child.suffix.lower() in DROP_IN_SUFFIXES:
                found.append(child)

    def scan(self, settle_s: float = 0.0) -> ScanReport:
        """Bring the registry in line with models/: register new, mark missing, restore,
        re-read changed files; hidden models are skipped."""
        self.registry.ensure()
        report = self.refresh(settle_s)
        registered = {self.resolve(e) for e in self.entries()}
        for candidate in self.candidates():
            if candidate in registered:
                continue
            if settle_s and time.time() - _mtime(candidate) / 1e9 < settle_s:
                report.busy.append(candidate)
                continue
            if self.hidden_match(candidate) is not None:
                report.hidden.append(self.relative(candidate) or str(candidate))
                continue
            self._scan_new(candidate, report)
        data = self.registry.load()
        for entry in [*data.models.values(), *(r["entry"] for r in data.hidden)]:
            if (
                entry["sha256"] is None
                and entry["status"] == "present"
                and not self.is_remote(entry)
            ):
                self.hasher.submit(entry["id"])
        return report

    def _scan_new(self, candidate: Path, report: ScanReport) -> None:
        rel = self.relative(candidate) or str(candidate)
        try:
            info = inspect_model(candidate)
        except Exception as exc:
            report.rejected[rel] = problem_text(candidate.name, str(exc))
            return
        missing = {e["id"] for e in self.entries() if e["status"] == "missing"}
        entry = self.register(candidate, info=info)
        (report.moved if entry["id"] in missing else report.added).append(entry["id"])

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
        allowed = COMPATIBLE[info.format]
        if not allowed:
            raise ImportRefused(
                f"{Path(info.path).name}: a single .safetensors file has no config.json or "
                "tokenizer. Import the whole Hugging Face folder instead."
            )
        if backend is None:
            return info.backend
        if backend not in BACKENDS:
            raise ImportRefused(
                f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}."
            )
        if backend not in allowed:
            raise ImportRefused(
                f"The {backend} backend cannot load {info.format} models; use "
                f"{' or '.join(allowed)}."
            )
        return backend

    def _hash_entry(self, model_id: str) -> None:
        """Fill in the sha256 of an entry, or of a hidden one (removed before its hash was
        done: the hash is what recognises its file when it is copied back)."""
        entry = _active_or_hidden(self.registry.load(), model_id)
        if entry is None:
            return
        path = self.resolve(entry)
        if entry["sha256"] or entry["status"] != "present" or not path.exists():
            return
        mtime = _mtime(path)
        if entry["mtime"] != mtime:
            return  # changed since it was read: recheck reads it again first
        digest = sha256_path(path)
        with self.registry.transaction() as data:
            now = _active_or_hidden(data, model_id)
            same_file = now is not None and now["path"] == entry["path"] and now["mtime"] == mtime
            if same_file and now["status"] == "present" and _mtime(path) == mtime:
                now["sha256"] = digest


def _active_or_hidden(data: RegistryData, model_id: str) -> dict[str, Any] | None:
    """The entry of model_id, in the library or hidden (None if neither)."""
    if model_id in data.models:
        return data.models[model_id]
    record = data.find_hidden(model_id)
    return record["entry"] if record else None


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


def _moved_entry(data, path: Path, info: ModelInfo, mtime: int) -> dict[str, Any] | None:
    """A missing entry that is this file moved or renamed: same size and mtime, or
    same file name and size (a move keeps both; a fresh copy gets a new mtime)."""
    for entry in data.models.values():
        if entry["status"] != "missing" or entry["size_bytes"] != info.size_bytes:
            continue
        if entry.get("mtime") == mtime or Path(entry["path"]).name == path.name:
            return entry
    return None


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _mtime(path: Path) -> int:
    """Newest modification time (ns) of a file, or of any file in a folder."""
    if path.is_dir():
        times = [p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()]
        return max(times, default=path.stat().st_mtime_ns)
    return path.stat().st_mtime_ns


def _entry_fields(
    info: ModelInfo, stored: str, external: bool, backend: str, mtime: int
) -> dict[str, Any]:
    return {
        "path": stored,
        "external": external,
        "format": info.format,
        "backend": backend,
        "architecture": info.architecture,
        "architecture_source": info.architecture_source,
        "size_bytes": info.size_bytes,
        "mtime": mtime,
        "status": "present",
        "metadata": {
            "model_name": info.name,
            "parameters": info.parameters,
            "quantization": info.quantization,
            "dtype": info.dtype,
            "context_length": info.context_length,
            "chat_template": info.chat_template,
            "tokenizer": info.tokenizer,
            "gguf_version": info.gguf_version,
            "ggml_variant": info.ggml_variant,
            "shards": info.shards,
            "tensor_count": info.tensor_count,
            "layers": info.layers,
            "embedding": info.embedding,
            "heads": info.heads,
            "kv_heads": info.kv_heads,
            "notes": info.notes,
        },
    }
