"""sha256 of model files and folders, computed in a background thread.

Listing never waits for a hash: a new entry has sha256 null ("hashing…") until the
hasher fills it in. A folder's digest is the sha256 of its `sha256sum`-style manifest
(one "<sha256>  <relative path>" line per file, sorted by path).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
CHUNK = 4 << 20


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def sha256_folder(folder: Path, progress: Callable[[int], None] | None = None) -> str:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        lines.append(f"{sha256_file(path, progress)}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_path(path: Path, progress: Callable[[int], None] | None = None) -> str:
    return sha256_folder(path, progress) if path.is_dir() else sha256_file(path, progress)


class Hasher:
    """One daemon thread hashing queued model ids, one at a time."""

    def __init__(self, compute: Callable[[str], None]) -> None:
        self._compute = compute
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, model_id: str) -> None:
        with self._lock:
            if model_id in self._queued:
                return
            self._queued.add(model_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hasher", daemon=True)
                self._thread.start()
        self._queue.put(model_id)

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._queued)

    def join(self) -> None:
        """Wait until every queued hash is done."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            model_id = self._queue.get()
            try:
                self._compute(model_id)
            except Exception:
                log.exception("hashing %s failed", model_id)
            finally:
                with self._lock:
                    self._queued.discard(model_id)
                self._queue.task_done()
