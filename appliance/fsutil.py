"""Atomic writes and cross-process locks for every small file the app writes.

The rule for every file the app writes: a temp file in the same directory, write, fsync,
os.replace, fsync the directory, so that a crash at any moment leaves the old file or
the new one, never a torn mix. Temp names start with a dot and contain ".tmp-", so
the model watcher ignores them and `sweep_stale_temps` can remove those a crash left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG
from typing import Any

TEMP_MARK = ".tmp-"


def temp_name(target: Path) -> Path:
    """A hidden temp path beside target, unique to this process."""
    token = secrets.token_hex(4)
    return target.parent / f".{target.name}{TEMP_MARK}{os.getpid()}-{token}"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace target with data so a reader sees the old or the new file, never a mix."""
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_json(target: Path, value: Any, mode: int = 0o600) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"), mode)


def sweep_stale_temps(folder: Path, older_than_s: float = 60.0) -> list[Path]:
    """Remove temp files left by a crashed writer; return what was removed.

    Only our own temp names are touched, and only when the writing process is gone or
    the file is older than `older_than_s`.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if not (path.name.startswith(".") and TEMP_MARK in path.name):
            continue
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue  # another writer finished (renamed it) meanwhile
        if not S_ISREG(stat.st_mode):
            continue
        pid_part = path.name.rsplit(TEMP_MARK, 1)[1].split("-", 1)[0]
        alive = pid_part.isdigit() and _pid_alive(int(pid_part))
        age = time.time() - stat.st_mtime
        if not alive or age > older_than_s:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive lock held across threads (a mutex) and processes (flock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None
