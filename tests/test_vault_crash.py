"""Processes killed (SIGKILL) at random moments during appends and password changes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.vault import WrongPassword
from tests.vault_helpers import OTHER, PASSWORD, fast_vault, snapshot

WORKER = Path(__file__).with_name("vault_worker.py")
KILLS = 50
sys.path.insert(0, str(WORKER.parent))
from vault_worker import message  # noqa: E402


def start(*args: str, stdin: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdin.write(stdin)
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line == "ready\n", proc.stderr.read()
    return proc


def kill_after(proc: subprocess.Popen, delay: float) -> list[int]:
    """SIGKILL after delay; the indices the worker reported as done."""
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = proc.stdout.read()  # not communicate(): it would skip what readline() buffered
    proc.stdout.close()
    proc.stdin.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return [int(line) for line in out.split()]


def test_killed_during_appends(appliance_home: Path) -> None:
    rng = random.Random(1234)
    history = fast_vault().init(PASSWORD).history
    conv = history.create("m", "crash test").id
    torn = in_flight = 0
    for _ in range(KILLS):
        before = history.info("m", conv).message_count
        done = kill_after(start("append", "m", conv, stdin=PASSWORD + "\n"), rng.uniform(0, 0.04))
        log = history.messages("m", conv)  # never fatal
        count = len(log.messages)
        assert done == list(range(before, before + len(done)))
        # Every acknowledged message is there; at most the one in flight got in too.
        assert before + len(done) <= count <= before + len(done) + 1
        assert [m.content for m in log.messages] == [message(i) for i in range(count)]
        assert [m.seq for m in log.messages] == list(range(count))
        torn += bool(log.warnings)
        in_flight += count > before + len(done)
        # The next append cuts off any torn record and continues the sequence.
        history.append("m", conv, "user" if count % 2 == 0 else "assistant", message(count))
        after = history.messages("m", conv)
        assert after.warnings == [] and len(after.messages) == count + 1
    print(f"{KILLS} kills during appends: {torn} left a torn last record, {in_flight} a "
          "complete but unacknowledged one")  # fmt: skip
    fast_vault()  # a new start sweeps temp files left by killed writers
    history = fast_vault().unlock(PASSWORD).history
    assert not [p for p in (appliance_home / "history").rglob("*") if ".tmp-" in p.name]
    assert history.conversations("m")[0].problem is None


def opens(password: str) -> bool:
    try:
        fast_vault().unlock(password)
    except WrongPassword:
        return False
    return True


@pytest.mark.parametrize("kdf", ["argon2id", "pbkdf2-sha256"])
def test_killed_during_password_changes(appliance_home: Path, kdf: str) -> None:
    rng = random.Random(99)
    unlocked = fast_vault().init(PASSWORD, kdf=kdf)
    conv = unlocked.history.create("m", "kept")
    for i in range(3):
        unlocked.history.append("m", conv.id, "user", f"message {i}")
    history_before = snapshot(appliance_home / "history")
    current, other = PASSWORD, OTHER
    changes = 0
    for _ in range(KILLS):
        proc = start("passwd", stdin=f"{current}\n{other}\n")
        done = kill_after(proc, rng.uniform(0, 0.1))
        changes += len(done)
        valid = [p for p in (current, other) if opens(p)]
        assert len(valid) == 1, f"valid passwords after a kill: {valid}"
        current, other = valid[0], (other if valid[0] == current else current)
        assert snapshot(appliance_home / "history") == history_before
        log = fast_vault().unlock(current).history.messages("m", conv.id)
        assert [m.content for m in log.messages] == ["message 0", "message 1", "message 2"]
    print(f"{KILLS} kills during {changes} completed password changes")
    assert not [p for p in (appliance_home / "config").iterdir() if ".tmp-" in p.name]
