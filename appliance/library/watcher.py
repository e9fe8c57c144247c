"""The drop-in watcher: weights copied into models/ register themselves once complete.

watchdog's inotify `Observer` by default; `APPLIANCE_WATCHER=polling` selects
`PollingObserver` for bind mounts where inotify sees nothing (Docker Desktop, network
shares). Events only mark a candidate (a model file or a Hugging Face folder) as
pending; a checker thread registers it once its size and mtime have not changed for
`settle_s` seconds and its header proves it complete (a half-copied GGUF or
safetensors file fails the bounds check and stays pending). Partial and hidden names
are ignored; a deletion marks the entry missing; a move updates its path. A registered
file that changed is read again (and marked damaged if it no longer reads); a file the
user removed from the library (hidden) is not added again. Each outcome is reported
once per version of the file: events on other files do not repeat it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from appliance.errors import ApplianceError, TruncatedModelFile
from appliance.library.library import (
    DROP_IN_SUFFIXES,
    Library,
    is_ignored_name,
    problem_text,
    signature,
)

log = logging.getLogger(__name__)
DEFAULT_SETTLE_S = 1.5
CHECK_INTERVAL_S = 0.25


@dataclass(frozen=True)
class WatchEvent:
    """One thing the watcher did, for the UI's live list and `appliance models watch`."""

    at: float
    action: str  # registered, rejected, waiting, hidden, updated, damaged, restored,
    # missing, moved, error
    path: str
    detail: str = ""

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at))
        return f"{stamp} {self.action:<10} {self.path}" + (
            f": {self.detail}" if self.detail else ""
        )


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DropInWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        src = Path(os.fsdecode(event.src_path))
        try:
            if event.event_type == "deleted":
                self.watcher.on_deleted(src)
            elif event.event_type == "moved":
                self.watcher.on_moved(src, Path(os.fsdecode(event.dest_path)))
            else:
                self.watcher.touch(src)
        except ApplianceError as exc:  # a corrupt registry, say: report it, keep watching
            self.watcher.report_error(src, exc)
        except Exception:
            log.exception("watcher failed on %s", event)


class DropInWatcher:
    """Watches models/ and keeps the registry in step with it."""

    def __init__(
        self,
        library: Library,
        settle_s: float | None = None,
        polling: bool | None = None,
        on_event: Callable[[WatchEvent], None] | None = None,
    ) -> None:
        self.library = library
        self.root = library.paths.models
        env_settle = os.environ.get("APPLIANCE_WATCH_SETTLE_S")
        self.settle_s = settle_s if settle_s is not None else float(env_settle or DEFAULT_SETTLE_S)
        if polling is None:
            polling = os.environ.get("APPLIANCE_WATCHER", "").lower() == "polling"
        self.polling = polling
        self.events: deque[WatchEvent] = deque(maxlen=200)
        self._on_event = on_event
        self._pending: dict[Path, tuple[tuple, float]] = {}
        # The signature each candidate had when its outcome was last decided and reported.
        self._decided: dict[Path, tuple | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = None
        self._checker: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> DropInWatcher:
        """Scan once for what changed while the app was down, then watch."""
        observer = PollingObserver(timeout=0.5) if self.polling else Observer()
        observer.schedule(_Handler(self), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._checker = threading.Thread(target=self._check_loop, name="watcher", daemon=True)
        self._checker.start()
        self._initial_scan()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._checker is not None:
            self._checker.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    # -- events ------------------------------------------------------------------------
    def touch(self, path: Path) -> None:
        """Something under path changed: mark its candidate pending."""
        candidate = self._candidate(path)
        if candidate is None:
            if path.is_dir() and not self._ignored(path):
                for found in self.library.candidates(under=path):
                    self._mark(found)
            return
        self._mark(candidate)

    def on_deleted(self, path: Path) -> None:
        self._forget(path)
        folder = self._folder_candidate(path)
        if folder is not None and folder != path and folder.exists():
            self._mark(folder)
            return
        for model_id in self.library.mark_missing(path):
            self._record("missing", path, f"id {model_id}")

    def on_moved(self, src: Path, dst: Path) -> None:
        self._forget(src)
        moved = self.library.mark_moved(src, dst) if not self._ignored(dst) else []
        for model_id in moved:
            self._record("moved", dst, f"id {model_id}, was {self._rel(src)}")
        if not moved:
            self.on_deleted(src)
            if self.root in dst.parents:
                self.touch(dst)

    # -- internals -----------------------------------------------------------------------
    def _ignored(self, path: Path) -> bool:
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return True
        return any(is_ignored_name(part) for part in parts)

    def _folder_candidate(self, path: Path) -> Path | None:
        """The Hugging Face folder (one with config.json) that holds path, if any."""
        for parent in [path, *path.parents]:
            if parent == self.root or self.root not in parent.parents:
                return None
            if (parent / "config.json").is_file():
                return parent
        return None

    def _candidate(self, path: Path) -> Path | None:
        if self._ignored(path) or path.is_symlink():
            return None
        folder = self._folder_candidate(path)
        if folder is not None:
            return folder
        if path.suffix.lower() in DROP_IN_SUFFIXES and not path.is_dir():
            return path
        return None

    def _forget(self, path: Path) -> None:
        """Drop what is pending or decided about path and everything under it."""
        with self._lock:
            for known in (self._pending, self._decided):
                for old in [p for p in known if p == path or path in p.parents]:
                    del known[old]

    def _mark(self, candidate: Path) -> None:
        """Queue candidate for a check, unless it is unchanged since its last outcome."""
        sig = signature(candidate)
        with self._lock:
            if candidate in self._decided and self._decided[candidate] == sig:
                return
            self._pending[candidate] = (sig, time.monotonic())

    def _check_loop(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            with self._lock:
                pending = list(self._pending.items())
            for candidate, (sig, since) in pending:
                try:
                    self._check(candidate, sig, since)
                except ApplianceError as exc:
                    self.report_error(candidate, exc)
                    with self._lock:
                        self._pending.pop(candidate, None)
                except Exception:
                    log.exception("watcher check of %s failed", candidate)
                    with self._lock:
                        self._pending.pop(candidate, None)

    def _check(self, candidate: Path, sig: tuple, since: float) -> None:
        now_sig = signature(candidate)
        if now_sig is None:
            with self._lock:
                self._pending.pop(candidate, None)
            return
        if now_sig != sig:
            with self._lock:
                self._pending[candidate] = (now_sig, time.monotonic())
            return
        if time.monotonic() - since < self.settle_s:
            return
        with self._lock:
            if self._pending.get(candidate, (None, None))[0] != sig:
                return
            self._pending.pop(candidate, None)
        self._decide(candidate)
        with self._lock:
            self._decided[candidate] = sig

    def _decide(self, candidate: Path) -> None:
        """Register, re-read, skip (hidden) or reject a candidate whose copy has settled."""
        entry = self.library.entry_at(candidate)
        if entry is not None:
            self._recheck(candidate, entry["id"])
            return
        hidden = self.library.hidden_match(candidate)
        if hidden is not None:
            self._record("hidden", candidate, _hidden_detail(hidden["id"]))
            return
        try:
            missing = {e["id"] for e in self.library.entries() if e["status"] == "missing"}
            entry = self.library.register(candidate)
        except TruncatedModelFile as exc:
            why = problem_text(candidate.name, str(exc))
            self._record("waiting", candidate, f"incomplete, not registered yet ({why})")
        except ApplianceError as exc:
            self._record("rejected", candidate, problem_text(candidate.name, str(exc)))
        else:
            action = "moved" if entry["id"] in missing else "registered"
            self._record(action, candidate, f"id {entry['id']}, {entry['backend']}")

    def _recheck(self, candidate: Path, model_id: str) -> None:
        """A registered candidate changed (or was restored): read it again and say so."""
        entry, change = self.library.recheck(model_id)
        if change == "damaged":
            self._record("damaged", candidate, f"id {model_id}: {entry['problem']}")
        elif change is not None:
            self._record(change, candidate, f"id {model_id}")

    def report_error(self, path: Path, exc: Exception) -> None:
        self._record("error", path, str(exc))

    def _initial_scan(self) -> None:
        try:
            report = self.library.scan(settle_s=self.settle_s)
        except ApplianceError as exc:
            self.report_error(self.root, exc)
            return
        for action in ("added", "missing", "moved", "restored", "updated"):
            for model_id in getattr(report, action):
                entry = self.library.get(model_id)
                label = "registered" if action == "added" else action
                self._record(label, self.library.resolve(entry), f"id {model_id}")
        for model_id, why in report.damaged.items():
            entry = self.library.get(model_id)
            self._record("damaged", self.library.resolve(entry), f"id {model_id}: {why}")
        for rel in report.hidden:
            entry = self.library.hidden_match(self.root / rel)
            self._decided_now(self.root / rel)
            self._record("hidden", self.root / rel, _hidden_detail(entry["id"] if entry else "?"))
        for rel, why in report.rejected.items():
            self._decided_now(self.root / rel)
            self._record("rejected", self.root / rel, why)
        for busy in report.busy:
            self._mark(busy)

    def _decided_now(self, candidate: Path) -> None:
        with self._lock:
            self._decided[candidate] = signature(candidate)

    def _rel(self, path: Path) -> str:
        return self.library.relative(path) or str(path)

    def _record(self, action: str, path: Path, detail: str = "") -> None:
        event = WatchEvent(time.time(), action, self._rel(path), detail)
        self.events.append(event)
        log.info("%s", event.line())
        if self._on_event:
            self._on_event(event)


def _hidden_detail(model_id: str) -> str:
    return (
        f"id {model_id} was removed from the library and stays hidden; unhide it to add it "
        f"again (`appliance models unhide {model_id}`)"
    )
