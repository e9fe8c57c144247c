"""What in models/ is a model, and when a copy into it has finished.

One walker and one rule, shared by the library's scan and the drop-in watcher:

- A candidate is a .gguf or .bin file, or a Hugging Face folder (one holding config.json,
  taken whole), at most MAX_DEPTH folders below models/. Hidden names, partial-download
  names (.part, .crdownload…), kept copies of a corrupt registry and symbolic links are
  never candidates, and nothing under them is.
- A copy has finished when the candidate's signature (file count, total size, newest
  mtime) has not changed for `settle_s` seconds: known from watching it (the watcher),
  or, for a path seen once (a scan), from its newest mtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".aria2", "~")
DROP_IN_SUFFIXES = (".gguf", ".bin")
MAX_DEPTH = 3  # folders below models/ that are searched


def is_ignored_name(name: str) -> bool:
    """Hidden files and partial-download names are never models."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES) or ".corrupt-" in lower


def is_ignored(root: Path, path: Path) -> bool:
    """Whether path is outside models/ (root) or under an ignored name."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return True
    return any(is_ignored_name(part) for part in parts)


@dataclass(frozen=True)
class Signature:
    """What changes while a file or folder is being written."""

    files: int
    size: int  # bytes, of every file in a folder
    mtime_ns: int  # the newest modification time of any file (an empty folder: its own)


def signature(path: Path) -> Signature | None:
    """The signature of a file or folder; None if it is gone."""
    try:
        if path.is_dir():
            stats = [p.stat() for p in path.rglob("*") if p.is_file()]
            newest = max((s.st_mtime_ns for s in stats), default=None)
            return Signature(
                len(stats),
                sum(s.st_size for s in stats),
                path.stat().st_mtime_ns if newest is None else newest,
            )
        stat = path.stat()
        return Signature(1, stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:
        return None


def copy_finished(sig: Signature, settle_s: float, quiet_for: float | None = None) -> bool:
    """Whether nothing has been written to a candidate for settle_s seconds.

    quiet_for: how long a watcher has seen sig unchanged; without it, the age of the
    newest mtime. settle_s 0 takes every copy as finished.
    """
    if quiet_for is None:
        quiet_for = time.time() - sig.mtime_ns / 1e9
    return settle_s <= 0 or quiet_for >= settle_s


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def find_candidates(root: Path, under: Path | None = None) -> list[Path]:
    """The candidates in models/ (root), or in its folder `under`, sorted by path."""
    start = under or root
    try:
        depth = len(start.relative_to(root).parts)
    except ValueError:
        return []
    if start != root and _is_hf_folder(start):
        return [start]
    found: list[Path] = []
    _walk(start, depth, found)
    return found


def _walk(folder: Path, depth: int, found: list[Path]) -> None:
    """Add the candidates among folder's children (which are at `depth` below models/)."""
    try:
        children = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for child in children:
        if is_ignored_name(child.name) or child.is_symlink():
            continue
        if child.is_dir():
            if _is_hf_folder(child):
                found.append(child)
            elif depth < MAX_DEPTH:
                _walk(child, depth + 1, found)
        elif child.suffix.lower() in DROP_IN_SUFFIXES:
            found.append(child)


def candidate_of(root: Path, path: Path) -> Path | None:
    """The candidate that path (a file or folder that changed) belongs to: the Hugging
    Face folder holding it, or path itself; None when it is no part of one."""
    if path == root or is_ignored(root, path):
        return None
    parts = path.relative_to(root).parts
    for depth in range(len(parts)):
        folder = root.joinpath(*parts[: depth + 1])
        if depth > MAX_DEPTH or folder.is_symlink():
            return None
        if _is_hf_folder(folder):
            return folder
    if path.suffix.lower() in DROP_IN_SUFFIXES and not path.is_dir():
        return path
    return None
