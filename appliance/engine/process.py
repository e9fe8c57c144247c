"""One worker process at the operating-system level: spawn, move frames, watch it die, reap.

Each resident model lives in its own `python -m appliance.engine.worker` process, so a
segfault, an abort or an out-of-memory kill in native code ends that process only, and
stopping it gives all its memory back to the system. The frames are opaque bytes here:
what they say is protocol.py's business (its WorkerClient owns a WorkerProcess).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection

from appliance.offline import OFFLINE_ENV
from appliance.paths import APP_ROOT

_SIGNAL_HINTS = {
    signal.SIGKILL: "killed; the system may have run out of memory",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGABRT: "aborted by native code",
    signal.SIGBUS: "a bus error: the model file may have changed or shrunk while in use",
    signal.SIGFPE: "an arithmetic fault in native code",
    signal.SIGILL: "an illegal instruction: the library was built for another CPU",
}


def describe_returncode(code: int) -> str:
    """A process's exit status for the user: 'SIGKILL: killed; ...' or 'exit code 1'."""
    if code < 0:
        sig = signal.Signals(-code)
        return f"{sig.name}: {_SIGNAL_HINTS.get(sig, 'killed by a signal')}"
    return f"exit code {code}"


class WorkerDied(Exception):
    """The worker's connection closed: the process has exited or been killed."""


class WorkerProcess:
    """A started worker; `preload` names a backend target whose library it imports at once."""

    def __init__(self, preload: str | None = None) -> None:
        self.preload = preload
        parent, child = socket.socketpair()
        env = {**os.environ, **OFFLINE_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(APP_ROOT), env.get("PYTHONPATH"))))
        command = [sys.executable, "-m", "appliance.engine.worker", "--fd", str(child.fileno())]
        if preload:
            command += ["--preload", preload]
        try:
            self.proc = subprocess.Popen(
                command,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True, name="worker-stderr")
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
        self.proc.stderr.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, frame: bytes) -> None:
        try:
            self.conn.send_bytes(frame)
        except OSError as exc:
            raise WorkerDied(self.describe_exit()) from exc

    def recv(self) -> bytes:
        """The next frame (blocks); WorkerDied when the process is gone."""
        try:
            return self.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise WorkerDied(self.describe_exit()) from exc

    def describe_exit(self) -> str:
        """How the process ended, for the user: 'SIGKILL: killed; ...' or 'exit code 1'."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "its connection closed"
        self._drain.join(timeout=1)  # its last words may still be in the pipe
        text = describe_returncode(code)
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        return f"{text}; last output: {last[:300]}" if last else text

    def reap(self, grace_s: float) -> None:
        """Wait up to grace_s for the process to exit (after it was asked), then kill it."""
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
