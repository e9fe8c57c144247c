"""Bring a model into the library: copy, hard link, in place, or a browser upload.

A copy is chunked, reports progress, computes sha256 on the fly, and is written under
a hidden temp name (which the watcher ignores) that is renamed into place only when
complete. Free space is checked first; a copy that still fills the disk removes its
temp file and registers nothing. Target names that would escape models/ are refused.

A model whose sha256 is already in the library (or belongs to a hidden model) is not
imported twice: `DuplicateModel` names the existing entry, and nothing is copied unless
the caller passes allow_duplicate=True. Only files of the same size are hashed for this,
so an import of a new model reads its source once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import DiskFull, ImportRefused, ModelFileError
from appliance.library.dropins import is_ignored_name
from appliance.library.hashing import sha256_path
from appliance.library.inspect import MODEL_SUFFIXES, inspect_model
from appliance.library.library import Library
from appliance.model_entry import ModelEntry

CHUNK = 8 << 20
SPACE_MARGIN = 64 << 20  # keep this much free after a copy
MODES = ("copy", "link", "in-place")
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class DuplicateModel(ImportRefused):
    """The model is in the library already (same sha256); nothing was imported.

    `existing` is that entry; `hidden` says it was removed with its files kept, so the
    way to use it is to un-hide it. `fact` is the message without the advice, for
    callers that offer their own (a button, a command).
    """

    def __init__(self, source_name: str, existing: ModelEntry, hidden: bool) -> None:
        self.existing = existing
        self.hidden = hidden
        ref = f"{existing.name} (id {existing.id})"
        if hidden:
            self.fact = (
                f"{source_name} has the same content (sha256) as {ref}, which was removed from "
                "the library and is hidden. Nothing was imported."
            )
            advice = "Un-hide it to use it again."
        else:
            self.fact = (
                f"{source_name} is already in the library as {ref}: same sha256 "
                f"{(existing.sha256 or '')[:16]}…. Nothing was imported."
            )
            advice = "Use the existing model."
        super().__init__(f"{self.fact} {advice}")


def find_duplicate(
    library: Library, source: Path, size: int, sha256: str | None = None
) -> DuplicateModel | None:
    """The library entry or hidden model with the same bytes as source, as an error.

    Only entries whose files are on disk count (re-importing a missing model is how it
    comes back). Entries of another size cannot match, so source is hashed (unless
    sha256 is given) only when one has the same size. The entry at source itself is not
    a duplicate of source.
    """
    data = library.registry.load()
    known = [(e, False) for e in data.models.values()] + [(r.entry, True) for r in data.hidden]
    same_size = [
        (entry, hidden)
        for entry, hidden in known
        if not entry.is_remote
        and entry.size_bytes == size
        and (hidden or library.resolve(entry) != source)
        and library.resolve(entry).exists()
    ]
    if not same_size:
        return None
    digest = sha256 or sha256_path(source)
    for entry, hidden in same_size:
        theirs = entry.sha256 or sha256_path(library.resolve(entry))
        if theirs == digest:
            return DuplicateModel(source.name, replace(entry, sha256=theirs), hidden)
    return None


def safe_target_name(library: Library, name: str) -> Path:
    """models/<name>, refusing names that are absolute, contain .., or hit a link."""
    if not name or name != os.path.basename(name) or name in (".", "..") or "\\" in name:
        raise ImportRefused(
            f"The name {name!r} would escape models/. Use a plain file name without '/', "
            "'\\' or '..'."
        )
    if is_ignored_name(name):
        raise ImportRefused(
            f"The name {name!r} is hidden or looks like a partial download; choose another."
        )
    target = library.paths.models / name
    if target.is_symlink():
        raise ImportRefused(f"models/{name} is a symbolic link; this app does not follow links.")
    return target


def free_name(target: Path) -> Path:
    """target, or target with -2, -3... before the suffix if the name is taken."""
    if not target.exists() and not target.is_symlink():
        return target
    stem, suffix = (target.name, "") if target.is_dir() else (target.stem, target.suffix)
    n = 2
    while True:
        candidate = target.with_name(f"{stem}-{n}{suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        n += 1


def import_path(
    library: Library,
    source: Path,
    mode: str = "copy",
    *,
    name: str | None = None,
    backend: str | None = None,
    architecture: str | None = None,
    progress: Progress | None = None,
    allow_duplicate: bool = False,
) -> ModelEntry:
    """Import a model file or Hugging Face folder from a server-side path.

    Raises DuplicateModel, before copying anything, when the library already holds the
    same bytes, unless allow_duplicate.
    """
    if mode not in MODES:
        raise ImportRefused(f"Unknown import mode {mode!r}; use copy, link or in-place.")
    source = Path(os.path.abspath(Path(source).expanduser()))
    info = inspect_model(source)  # refuses bad or unsafe files before any byte is copied
    library.check_backend(info, backend)
    if not allow_duplicate and (dup := find_duplicate(library, source, info.size_bytes)):
        raise dup
    options = {"name": name, "backend": backend, "architecture": architecture}
    if mode == "in-place":
        inside = library.relative(source) is not None
        return library.register(source, external=not inside, info=info, **options).entry
    if library.relative(source) is not None:
        raise ImportRefused(f"{source} is already inside models/; use in-place.")
    target = free_name(safe_target_name(library, source.name))
    if mode == "link":
        _link(source, target)
        return library.register(target, **options).entry
    sha = _copy(library, source, target, progress)
    return library.register(target, sha256=sha, **options).entry


def _link(source: Path, target: Path) -> None:
    tmp = _temp_beside(target)
    try:
        if source.is_dir():
            tmp.mkdir()
            for path in sorted(source.rglob("*")):
                dest = tmp / path.relative_to(source)
                if path.is_dir():
                    dest.mkdir()
                else:
                    os.link(path, dest)
        else:
            os.link(source, tmp)
        _commit(tmp, target)
    except OSError as exc:
        _discard(tmp)
        if exc.errno == errno.EXDEV:
            raise ImportRefused(
                f"{source} is on another filesystem than models/, so it cannot be hard-linked. "
                "Use copy, or in-place to use it where it is."
            ) from None
        raise


def _copy(library: Library, source: Path, target: Path, progress: Progress | None) -> str:
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    total = sum(p.stat().st_size for p in files)
    check_free_space(library.paths.models, total)
    tmp = _temp_beside(target)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    try:
        if source.is_dir():
            tmp.mkdir()
            lines = []
            for path in files:
                rel = path.relative_to(source)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                lines.append(f"{_copy_file(path, tmp / rel, step)}  {rel.as_posix()}\n")
            digest = hashlib.sha256("".join(lines).encode()).hexdigest()
        else:
            digest = _copy_file(source, tmp, step)
        _commit(tmp, target)
        return digest
    except OSError as exc:
        _discard(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"The disk holding models/ filled up while copying {source.name}. Nothing was "
                "registered and the partial copy was removed. Free some space and try again."
            ) from None
        raise
    except BaseException:
        _discard(tmp)
        raise


def _copy_file(source: Path, dest: Path, step: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, dest.open("xb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            step(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed + SPACE_MARGIN > free:
        raise DiskFull(
            f"Not enough free space in {folder}: the model needs {_gib(needed)} and only "
            f"{_gib(free)} is free (keeping {_gib(SPACE_MARGIN)} spare). Free some space, or "
            "register the model in place."
        )


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _temp_beside(target: Path) -> Path:
    """A hidden name (ignored by the watcher) that keeps the suffix for inspection."""
    stem, suffix = (target.name, "") if target.is_dir() else (target.stem, target.suffix)
    return target.with_name(f".{stem}.importing-{secrets.token_hex(4)}{suffix}")


def _commit(tmp: Path, target: Path) -> None:
    """Rename the finished temp into place without ever replacing an existing name."""
    if tmp.is_dir():
        if target.exists():
            raise ImportRefused(f"{target.name} appeared in models/ during the import.")
        os.rename(tmp, target)
    else:
        os.link(tmp, target)  # fails if target exists: no clobbering
        os.unlink(tmp)


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class Upload:
    """A browser upload streamed to disk in chunks, then checked and registered.

    with Upload(library, "model.gguf", size) as up:
        for chunk in chunks: up.write(chunk)
        entry = up.commit()
    Leaving the block without commit() removes the partial file.
    """

    def __init__(self, library: Library, filename: str, size: int | None = None) -> None:
        self.library = library
        self.target = safe_target_name(library, filename)
        if Path(filename).suffix.lower() not in MODEL_SUFFIXES:
            raise ImportRefused(
                f"{filename}: only .gguf, legacy GGML .bin and .safetensors files can be uploaded; "
                "import Hugging Face folders from a server-side path."
            )
        if size is not None:
            check_free_space(library.paths.models, size)
        self.tmp = _temp_beside(self.target)
        self._fh: BinaryIO | None = self.tmp.open("xb")
        self._digest = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._fh.write(chunk)
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull("The disk filled up during the upload; nothing was kept.") from None
            raise
        self._digest.update(chunk)
        self.received += len(chunk)

    def commit(self, allow_duplicate: bool = False, **options: Any) -> ModelEntry:
        """Check the received file and register it; a duplicate is removed and refused."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        try:
            info = inspect_model(self.tmp)
            self.library.check_backend(info, options.get("backend"))
        except ModelFileError as exc:
            self.abort()
            raise type(exc)(str(exc).replace(self.tmp.name, self.target.name)) from None
        except ImportRefused:
            self.abort()
            raise
        digest = self._digest.hexdigest()
        dup = None if allow_duplicate else find_duplicate(
            self.library, self.tmp, info.size_bytes, digest
        )  # fmt: skip
        if dup is not None:
            self.abort()
            raise DuplicateModel(self.target.name, dup.existing, dup.hidden)
        target = free_name(self.target)
        _commit(self.tmp, target)
        return self.library.register(target, sha256=digest, **options).entry

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        _discard(self.tmp)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tmp.exists():
            self.abort()
