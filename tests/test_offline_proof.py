"""Offline for real: the app, traced with strace, runs a full browser journey inside a
network namespace that has only loopback, and connects to nothing but loopback. strace
sees only the app, so the journey also records every request Chromium makes (the guard
in tests/browser.py): the browser asks nothing of any host but the app's own origin."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from appliance.paths import APP_ROOT
from tests.browser import with_demo

SCRIPT = textwrap.dedent(
    """
    set -eu
    ip link set lo up
    strace -f -qq --seccomp-bpf -e trace=connect,bind,sendto,sendmsg -o "$TRACE" \\
        "$PY" -m streamlit run "$APP" --server.port 8766 --server.address 127.0.0.1 \\
        > "$LOG" 2>&1 &
    pid=$!
    for i in $(seq 1 240); do
        if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8766/_stcore/health', timeout=1)" 2>/dev/null; then
            break
        fi
        sleep 0.25
    done
    # Nothing but loopback exists here: any attempt to reach out fails at once.
    "$PY" -c "import socket; socket.create_connection(('1.1.1.1', 443), timeout=2)" 2>/dev/null \\
        && echo "network reachable" || echo "network unreachable"
    "$PY" tests/offline_journey.py http://127.0.0.1:8766
    kill -TERM $(pgrep -P $pid) 2>/dev/null || true
    wait $pid || true
    """
)
INET = re.compile(r"sa_family=AF_INET6?, ")
LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"')


def test_full_journey_connects_only_to_loopback(
    appliance_home: Path, demo_model: Path, tmp_path: Path
) -> None:
    with_demo(appliance_home, demo_model)
    trace, log = tmp_path / "connect.trace", tmp_path / "streamlit.log"
    env = {"PY": sys.executable, "APP": str(APP_ROOT / "appliance_server.py"), "LOG": str(log),
           "TRACE": str(trace), "PATH": "/usr/sbin:/usr/bin:/bin", "HOME": str(tmp_path),
           "APPLIANCE_HOME": str(appliance_home), "PYTHONPATH": str(APP_ROOT)}  # fmt: skip
    proc = subprocess.Popen(
        ["unshare", "--net", "--map-root-user", "bash", "-c", SCRIPT], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=APP_ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    finally:  # a hung journey must not leave the app running in the namespace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out + err + log.read_text()
    lines = out.splitlines()
    assert lines[0] == "network unreachable", out
    assert re.fullmatch(r"journey done \(\d+ requests, all to 127\.0\.0\.1:8766\)", lines[1]), out
    assert lines[2].startswith("api done (") and "Paris" in lines[2], out
    calls = [line for line in trace.read_text().splitlines() if INET.search(line)]
    # The trace works: it saw the server bind its loopback port.
    assert any("bind(" in c and "htons(8766)" in c for c in calls), trace.read_text()[:2000]
    outside = [line for line in calls if not LOOPBACK.search(line)]
    assert outside == [], "network calls beyond loopback:\n" + "\n".join(outside)
