"""The drop-in watcher: weights copied into models/ register themselves once complete.

watchdog's inotify `Observer` by default; `APPLIANCE_WATCHER=polling` selects
`PollingObserver` for bind mounts where inotify sees nothing (Docker Desktop, network
shares). Events only mark a candidate (a model file or a Hugging Face folder, as
appliance.library.dropins defines them for the scan too) as pending; a checker thread
takes it into the library (Library.take_in) once the copy has finished by the same
rule as the scan's (dropins.copy_finished: its signature unchanged for `settle_s`
seconds) and its header proves it complete (a half-copied GGUF or safetensors file
fails the bounds check and stays pending). A deletion marks the entry missing; a move
updates its path. A registered file that changed is read again (and marked damaged if
it no longer reads); a file the user removed from the library (hidden) is not added
again. Each outcome is reported once per version of the file: events on other files do
not repeat it.
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
from appliance.library.dropins import (
    Signature,
    candidate_of,
    copy_finished,
    is_ignored,
    signature,
)
from appliance.library.library import Change, Library, Outcome, problem_text

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
        self._pending: dict[Path, tuple[Signature | None, float]] = {}
        # The signature each candidate had when its outcome was last decided and reported.
        self._decided: dict[Path, Signature | None] = {}
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
        candidate = candidate_of(self.root, path)
        if candidate is None:
            if path.is_dir() and not is_ignored(self.root, path):
                for found in self.library.candidates(under=path):
                    self._mark(found)
            return
        self._mark(candidate)

    def on_deleted(self, path: Path) -> None:
        self._forget(path)
        holder = candidate_of(self.root, path)
        if holder is not None and holder != path and holder.exists():
            self._mark(holder)  # a file of a Hugging Face folder
            return
        for model_id in self.library.mark_missing(path):
            self._record("missing", path, f"id {model_id}")

    def on_moved(self, src: Path, dst: Path) -> None:
        self._forget(src)
        moved = self.library.mark_moved(src, dst) if not is_ignored(self.root, dst) else []
        for model_id in moved:
            self._record("moved", dst, f"id {model_id}, was {self._rel(src)}")
        if not moved:
            self.on_deleted(src)
            if self.root in dst.parents:
                self.touch(dst)

    # -- internals -----------------------------------------------------------------------
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

    def _check(self, candidate: Path, sig: Signature | None, since: float) -> None:
        now_sig = signature(candidate)
        if now_sig is None:
            with self._lock:
                self._pending.pop(candidate, None)
            return
        if now_sig != sig:
            with self._lock:
                self._pending[candidate] = (now_sig, time.monotonic())
            return
        if not copy_finished(now_sig, self.settle_s, quiet_for=time.monotonic() - since):
            return
        with self._lock:
            if self._pending.get(candidate, (None, None))[0] != sig:
                return
            self._pending.pop(candidate, None)
            if candidate in self._decided and self._decided[candidate] == sig:
                return  # the startup scan decided this version already
            # Decided before the outcome is known: an event that arrives while take_in
            # reads the file (the copy's last close or chmod, say) must not queue the same
            # version again, or its outcome is reported a second time a settle later.
            self._decided[candidate] = sig
        try:
            self._decide(candidate)
        except BaseException:
            with self._lock:
                if self._decided.get(candidate) == sig:
                    del self._decided[candidate]  # not decided after all: a later event retries
            raise

    def _decide(self, candidate: Path) -> None:
        """Take in a candidate whose copy has finished, and say what happened."""
        try:
            outcome = self.library.take_in(candidate)
        except TruncatedModelFile as exc:
            why = problem_text(candidate.name, str(exc))
            self._record("waiting", candidate, f"incomplete, not registered yet ({why})")
        except ApplianceError as exc:
            self._record("rejected", candidate, problem_text(candidate.name, str(exc)))
        else:
            self._report(candidate, outcome)

    def _report(self, candidate: Path, outcome: Outcome) -> None:
        change, entry = outcome.change, outcome.entry
        if change is Change.UNCHANGED:
            return
        if change is Change.HIDDEN:
            self._record("hidden", candidate, _hidden_detail(entry.id))
        elif change is Change.DAMAGED:
            self._record("damaged", candidate, f"id {entry.id}: {entry.problem}")
        elif change in (Change.ADDED, Change.MOVED):
            action = "registered" if change is Change.ADDED else "moved"
            self._record(action, candidate, f"id {entry.id}, {entry.backend}")
        else:
            self._record(change.value, candidate, f"id {entry.id}")

    def report_error(self, path: Path, exc: Exception) -> None:
        self._record("error", path, str(exc))

    def _initial_scan(self) -> None:
        try:
            report = self.library.scan(settle_s=self.settle_s, on_outcome=self._scanned)
        except ApplianceError as exc:
            self.report_error(self.root, exc)
            return
        for rel, why in report.rejected.items():
            self._decided_now(self.root / rel)
            self._record("rejected", self.root / rel, why)
        for busy in report.busy:
            self._mark(busy)

    def _scanned(self, path: Path, outcome: Outcome) -> None:
        """A registered model the scan re-read, or a new candidate it took in."""
        if outcome.change is Change.HIDDEN:
            self._decided_now(path)
        self._report(path, outcome)

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
