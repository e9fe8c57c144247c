"""The Streamlit app: the library page headless (AppTest), and a real server started in a
network namespace that has only loopback, which proves it runs with no network at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.paths import APP_ROOT
from appliance.ui.services import services
from tests.helpers import write_gguf

APP = str(APP_ROOT / "streamlit_app.py")


@pytest.fixture
def app(appliance_home: Path) -> Iterator[AppTest]:
    st.cache_resource.clear()
    yield AppTest.from_file(APP, default_timeout=30)
    services().watcher.stop()
    st.cache_resource.clear()


def test_library_page_shows_models(app: AppTest, appliance_home: Path, demo_model: Path) -> None:
    (appliance_home / "models" / demo_model.name).symlink_to(demo_model)  # links are skipped
    tiny = write_gguf(appliance_home / "models" / "tiny.gguf", "qwen2", name="T", context=4096)
    os.utime(tiny, (time.time() - 60, time.time() - 60))  # copied while the app was down
    app.run()
    assert not app.exception
    assert app.title[0].value == "Model library"
    table = app.dataframe[0].value
    assert list(table["Name"]) == ["tiny"]
    row = table.iloc[0]
    assert (row["Format"], row["Backend"], row["Architecture"]) == ("gguf", "llama.cpp", "qwen2")
    assert (row["Quantisation"], row["Context"]) == ("Q4_1", 4096)
    assert row["sha256"] == "hashing…" or len(row["sha256"]) == 17


def test_library_page_empty(app: AppTest) -> None:
    app.run()
    assert not app.exception
    assert "No models yet" in app.info[0].value


def test_corrupt_registry_is_shown_not_raised(app: AppTest, appliance_home: Path) -> None:
    (appliance_home / "models" / "registry.json").write_text("{oops")
    app.run()
    assert not app.exception
    assert "is not valid JSON" in app.error[0].value


OFFLINE = textwrap.dedent(
    """
    set -eu
    ip link set lo up
    "$PY" -m streamlit run "$APP" --server.port 8765 --server.address 127.0.0.1 \\
        > "$LOG" 2>&1 &
    pid=$!
    for i in $(seq 1 120); do
        if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8765/_stcore/health', timeout=1)" 2>/dev/null; then
            break
        fi
        sleep 0.25
    done
    "$PY" -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8765/', timeout=5).status)"
    # Nothing but loopback exists here: any attempt to reach out fails at once.
    "$PY" -c "import socket; socket.create_connection(('1.1.1.1', 443), timeout=2)" 2>/dev/null \\
        && echo "network reachable" || echo "network unreachable"
    sleep 2
    kill $pid; wait $pid || true
    """
)


def test_app_serves_in_a_loopback_only_namespace(appliance_home: Path, tmp_path: Path) -> None:
    log = tmp_path / "streamlit.log"
    env = {"PY": sys.executable, "APP": APP, "LOG": str(log), "PATH": "/usr/sbin:/usr/bin:/bin",
           "APPLIANCE_HOME": str(appliance_home), "HOME": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(
        ["unshare", "--net", "--map-root-user", "bash", "-c", OFFLINE],
        capture_output=True, text=True, timeout=120, env=env, cwd=APP_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + log.read_text()
    assert proc.stdout.split() == ["200", "network", "unreachable"]
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "URL: http://localhost:8765" in text or "localhost:8765" in text, text
