"""The library: registry + inspection + hashing, the one API the CLI, watcher and UI use.

It knows what is on disk and never loads a model. Every change goes through a registry
transaction, so the CLI, the app and the watcher can work on the same folder at once.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance import sampling
from appliance.errors import ImportRefused, UnknownModel
from appliance.fsutil import sweep_stale_temps
from appliance.library.hashing import Hasher, sha256_path
from appliance.library.inspect import inspect_model
from appliance.library.model_info import BACKENDS, ModelInfo
from appliance.library.registry import Registry, now_iso
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


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    busy: list[Path] = field(default_factory=list)


class Library:
    """Models on disk and their registry, under one APPLIANCE_HOME."""

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = (paths or current()).ensure()
        self.registry = Registry(self.paths.registry)
        self.hasher = Hasher(self._hash_entry)
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

    def is_current(self, path: Path) -> bool:
        """Whether path is registered, present, and unchanged since (same size and mtime)."""
        rel = self.relative(path)
        entry = self.registry.load().find_by_path(rel if rel is not None else str(path))
        if entry is None or entry["status"] != "present" or not path.exists():
            return False
        return entry.get("mtime") == _mtime(path)

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
        """Drop the entry. Weights are deleted only with delete_files, and only in models/."""
        with self.registry.transaction() as data:
            entry = data.get(model_id)
            if delete_files and entry["external"]:
                raise ImportRefused(
                    f"{entry['path']} is outside models/ (registered in place); this app never "
                    "deletes files there. Remove the entry without --delete-files and delete "
                    "the files yourself if you mean to."
                )
            del data.models[model_id]
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
        """Bring the registry in line with models/: register new, mark missing, restore."""
        report = ScanReport()
        self._refresh_statuses(report)
        registered = {self.resolve(e) for e in self.entries()}
        for candidate in self.candidates():
            if candidate in registered:
                continue
            if settle_s and time.time() - _mtime(candidate) / 1e9 < settle_s:
                report.busy.append(candidate)
                continue
            self._scan_new(candidate, report)
        for entry in self.entries():
            if (
                entry["sha256"] is None
                and entry["status"] == "present"
                and not self.is_remote(entry)
            ):
                self.hasher.submit(entry["id"])
        return report

    def _refresh_statuses(self, report: ScanReport) -> None:
        with self.registry.transaction() as data:
            for entry in data.models.values():
                if self.is_remote(entry):
                    continue
                exists = self.resolve(entry).exists()
                if entry["status"] == "present" and not exists:
                    entry["status"] = "missing"
                    report.missing.append(entry["id"])
                elif entry["status"] == "missing" and exists:
                    entry["status"] = "present"
                    report.restored.append(entry["id"])

    def _scan_new(self, candidate: Path, report: ScanReport) -> None:
        rel = self.relative(candidate) or str(candidate)
        try:
            info = inspect_model(candidate)
        except Exception as exc:
            report.rejected[rel] = str(exc)
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
        try:
            entry = self.get(model_id)
        except UnknownModel:
            return
        path = self.resolve(entry)
        if entry["sha256"] or not path.exists():
            return
        mtime = _mtime(path)
        digest = sha256_path(path)
        with self.registry.transaction() as data:
            current_entry = data.models.get(model_id)
            if current_entry and current_entry["path"] == entry["path"] and _mtime(path) == mtime:
                current_entry["sha256"] = digest


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
