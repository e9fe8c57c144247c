"""The container's entrypoint: `python -m appliance.entrypoint`.

1. Checks that models/, history/ and config/ are writable by the container's user, and
   says how to fix the ownership on the host when they are not.
2. Seeds the demo model into an empty models/ folder (a fresh volume). A folder holding
   anything at all is left alone: a user's file is never overwritten or added to.
3. Runs the web server (appliance_server.py: the UI and the /v1 API on one port). The
   server starts the library, its drop-in watcher (which first registers what was
   copied while the container was down) and the engine when it starts, so weights
   dragged into the models volume register themselves, and the API answers, even while
   no browser is open: one watcher, in one process. HTTPS for both the UI and the API
   is one setting: APPLIANCE_TLS_CERT and APPLIANCE_TLS_KEY, the operator's PEM
   certificate and key (Streamlit serves TLS itself). The entrypoint forwards
   SIGTERM/SIGINT, reaps every child (it runs as PID 1), and exits when the server
   stops, so the container's restart policy applies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.paths import APP_ROOT, Paths, current

DEMO_MODEL = Path(
    os.environ.get("APPLIANCE_DEMO_MODEL", "/opt/appliance/demo/SmolLM2-135M-Instruct.Q4_1.gguf")
)
STOP_GRACE_S = 10.0


class DataFolderNotWritable(ApplianceError):
    """A mounted data folder the container's user cannot write to."""


def check_writable(paths: Paths) -> None:
    """Create the data folders if needed; raise DataFolderNotWritable, with the fix, for
    one the container's user cannot write to."""
    uid, gid = os.getuid(), os.getgid()
    for folder in (paths.models, paths.history, paths.config):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK | os.X_OK)
        except PermissionError:
            writable = False
        if not writable:
            raise DataFolderNotWritable(
                f"{folder} is not writable by the container's user (uid {uid}, gid {gid}). "
                f"On the host, give the mounted folder to that user: "
                f"`sudo chown -R {uid}:{gid} FOLDER` (rootless podman: "
                f"`podman unshare chown -R {uid}:{gid} FOLDER`), or run the container as the "
                "folder's owner with APPLIANCE_UID and APPLIANCE_GID (see the README)."
            )


def is_empty(folder: Path) -> bool:
    """True when folder holds nothing at all (a fresh volume)."""
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def seed_demo(paths: Paths, demo: Path = DEMO_MODEL) -> str | None:
    """Copy the demo model into an empty models/ and register it; return its id.

    Returns None, touching nothing, when models/ holds anything, when seeding is
    switched off (APPLIANCE_SEED_DEMO=0) or when the image has no demo model.
    """
    if os.environ.get("APPLIANCE_SEED_DEMO", "1") == "0" or not demo.is_file():
        return None
    if not is_empty(paths.models):
        return None
    from appliance.library.importer import import_path
    from appliance.library.library import Library

    library = Library(paths)
    # A copy, written under a hidden temp name and renamed into place when complete.
    return import_path(library, demo, "copy").id


class TlsFileError(ApplianceError):
    """APPLIANCE_TLS_CERT / APPLIANCE_TLS_KEY set wrongly."""


def tls_args(env: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """Streamlit's HTTPS options from APPLIANCE_TLS_CERT and APPLIANCE_TLS_KEY (both or
    neither; each a readable PEM file); [] when neither is set."""
    cert, key = env.get("APPLIANCE_TLS_CERT", ""), env.get("APPLIANCE_TLS_KEY", "")
    if not cert and not key:
        return []
    if not cert or not key:
        raise TlsFileError(
            "HTTPS needs both APPLIANCE_TLS_CERT (the certificate) and APPLIANCE_TLS_KEY "
            "(its private key), as PEM files; set both, or neither for plain HTTP."
        )
    for name, path, marker in (("APPLIANCE_TLS_CERT", cert, b"CERTIFICATE"),
                               ("APPLIANCE_TLS_KEY", key, b"PRIVATE KEY")):  # fmt: skip
        try:
            head = Path(path).read_bytes()[:4096]
        except OSError as exc:
            raise TlsFileError(
                f"{name}={path} cannot be read ({exc.strerror}). Mount the file into the "
                "container and make it readable by the container's user."
            ) from None
        if b"-----BEGIN" not in head or marker not in head:
            raise TlsFileError(f"{name}={path} is not a PEM file with a {marker.decode()}.")
    return ["--server.sslCertFile", cert, "--server.sslKeyFile", key]


def commands(env: dict[str, str] | os._Environ[str] = os.environ) -> list[list[str]]:
    """The web server (address and port come from STREAMLIT_*; HTTPS from tls_args)."""
    server = str(APP_ROOT / "appliance_server.py")
    return [[sys.executable, "-m", "streamlit", "run", server, *tls_args(env)]]


def supervise(cmds: Sequence[Sequence[str]], cwd: Path) -> int:
    """Run cmds together; stop all when one exits or on SIGTERM; return its exit code."""
    children: dict[int, list[str]] = {}
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        _signal_all(children, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for cmd in cmds:
        children[subprocess.Popen(list(cmd), cwd=cwd).pid] = list(cmd)
    if stopping:  # a signal that came while starting
        _signal_all(children, signal.SIGTERM)
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue  # an orphan re-parented to PID 1: reaped
        cmd = children.pop(pid)
        if not stopping:
            exit_code = os.waitstatus_to_exitcode(status)
            print(f"{' '.join(cmd[2:])} exited ({exit_code}); stopping", file=sys.stderr)
            stopping.append(0)
            code = exit_code or 1
            _stop_all(children)
    return code


def _signal_all(children: dict[int, list[str]], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _stop_all(children: dict[int, list[str]]) -> None:
    _signal_all(children, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.1)
    _signal_all(children, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    paths = current()
    try:
        check_writable(paths)
        seeded = seed_demo(paths)
        if seeded:
            print(f"seeded the demo model into {paths.models} ({seeded})", flush=True)
        cmds = commands()
    except (ApplianceError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return supervise(cmds, APP_ROOT)


if __name__ == "__main__":
    sys.exit(main())
