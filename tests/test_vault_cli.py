"""`appliance vault ...` and `appliance history ...` as real subprocesses, real KDF."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.vault_helpers import OTHER, PASSWORD, snapshot


def run(*args: str, stdin: str = "", rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, timeout=120, input=stdin, env=os.environ.copy(),
    )  # fmt: skip
    if rc is not None:
        assert proc.returncode == rc, (proc.stdout, proc.stderr)
    return proc


def pw(*passwords: str) -> str:
    return "".join(p + "\n" for p in passwords)


def test_init_status_and_errors(appliance_home: Path) -> None:
    assert run("vault", "status").stdout.strip() == "not initialized: run `appliance vault init`"
    out = run("history", "list", stdin=pw(PASSWORD), rc=1)
    assert out.stderr == (
        "error: No master password is set yet. Open the app to set one, or run "
        "`appliance vault init`.\n"
    )
    out = run("vault", "init", stdin=pw(PASSWORD))
    assert out.stdout == "vault created (argon2id, 64 MiB, 3 iterations, 4 lanes)\n"
    assert "password strength 4/4" in out.stderr
    status = json.loads(run("vault", "status", "--json").stdout)
    assert status["version"] == 1 and status["initialized"] and status["locked"]
    assert status["kdf"] == {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4}
    settings = json.loads((appliance_home / "config" / "settings.json").read_text())
    text = run("vault", "status").stdout
    for secret in (settings["kdf"]["salt"], settings["verifier"], settings["wrapped_key"]):
        assert secret not in text and secret not in json.dumps(status)
    assert "kdf               argon2id, 64 MiB, 3 iterations, 4 lanes" in text
    assert "throttled         no" in text
    out = run("vault", "init", stdin=pw(OTHER), rc=1)
    assert "A master password is already set" in out.stderr


def test_password_never_from_argv_or_environment(appliance_home: Path) -> None:
    out = run("vault", "init", "--password", PASSWORD, rc=2)
    assert "unrecognized arguments: --password" in out.stderr
    env_run = subprocess.run(
        [sys.executable, "-m", "appliance", "vault", "init"], capture_output=True, text=True,
        input="", env={**os.environ, "APPLIANCE_PASSWORD": PASSWORD, "PASSWORD": PASSWORD},
    )  # fmt: skip
    assert env_run.returncode == 1
    assert "was expected on standard input" in env_run.stderr
    assert not (appliance_home / "config" / "settings.json").exists()
    run("vault", "init", stdin=pw("short"), rc=1)
    assert not (appliance_home / "config" / "settings.json").exists()


def test_history_import_list_export_delete(appliance_home: Path, tmp_path: Path) -> None:
    run("vault", "init", stdin=pw(PASSWORD))
    assert run("history", "list", stdin=pw(PASSWORD)).stdout == "no history yet\n"
    export = {
        "format": "offline-llm-switcher/conversation", "version": 1, "title": "Über chat",
        "messages": [
            {"role": "user", "content": "Bonjour ☕", "created_at": "2026-01-02T03:04:05+00:00"},
            {"role": "assistant", "content": "Salut !", "meta": {"stopped": True}},
        ],
    }  # fmt: skip
    src = tmp_path / "in.json"
    src.write_text(json.dumps(export, ensure_ascii=False))
    out = run("history", "import", "smollm2", str(src), stdin=pw(PASSWORD)).stdout
    conv_id = out.split()[2]
    assert out == f"imported conversation {conv_id} (2 messages) for smollm2\n"
    listing = run("history", "list", stdin=pw(PASSWORD)).stdout
    assert listing == "smollm2  (1 conversation(s))\n"
    lines = run("history", "list", "smollm2", stdin=pw(PASSWORD)).stdout.splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith(conv_id) and lines[0].endswith("2 msgs  Über chat")
    )
    doc = json.loads(run("history", "list", "smollm2", "--json", stdin=pw(PASSWORD)).stdout)
    assert doc["conversations"][0]["id"] == conv_id
    md = run("history", "export", "smollm2", stdin=pw(PASSWORD)).stdout  # latest by default
    assert md.startswith("# Über chat\n") and "## User · 2026-01-02 03:04 UTC\n\nBonjour ☕" in md
    exported = json.loads(run("history", "export", "smollm2", "-c", conv_id[:6], "--format",
                              "json", stdin=pw(PASSWORD)).stdout)  # fmt: skip
    assert [m["content"] for m in exported["messages"]] == ["Bonjour ☕", "Salut !"]
    assert exported["messages"][1]["meta"] == {"stopped": True}
    target = tmp_path / "out.md"
    run("history", "export", "smollm2", "--output", str(target), stdin=pw(PASSWORD))
    assert target.read_text() == md and (target.stat().st_mode & 0o777) == 0o600
    out = run("history", "export", "smollm2", "-c", "ffff", stdin=pw(PASSWORD), rc=1)
    assert "'ffff' matches no conversation of model 'smollm2'" in out.stderr
    out = run("history", "import", "smollm2", str(tmp_path / "missing.json"), rc=1)
    assert "missing.json" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "robot", "content": "x"}]')
    out = run("history", "import", "smollm2", str(bad), stdin=pw(PASSWORD), rc=1)
    assert "messages[0].role is 'robot'" in out.stderr
    out = run("history", "delete", "smollm2", "--all", stdin=pw(PASSWORD), rc=2)
    assert "--yes" in out.stderr
    out = run("history", "delete", "smollm2", "--all", "--yes", stdin=pw(PASSWORD))
    assert out.stdout == "deleted 1 conversation(s) of smollm2\n"
    assert run("history", "list", stdin=pw(PASSWORD)).stdout == "no history yet\n"


def test_wrong_password_throttle_and_change_password(appliance_home: Path, tmp_path) -> None:
    run("vault", "init", stdin=pw(PASSWORD))
    src = tmp_path / "c.json"
    src.write_text('[{"role": "user", "content": "keep me"}]')
    run("history", "import", "m", str(src), stdin=pw(PASSWORD))
    before = snapshot(appliance_home / "history")
    out = run("vault", "change-password", stdin=pw(OTHER, "new pass phrase"), rc=1)
    assert out.stderr == "error: Wrong password. 4 more attempts before a delay.\n"
    out = run("vault", "change-password", stdin=pw(PASSWORD, "new pass phrase"))
    assert out.stdout.startswith("password changed (argon2id")
    assert snapshot(appliance_home / "history") == before
    assert "Wrong password" in run("history", "list", stdin=pw(PASSWORD), rc=1).stderr
    assert "keep me" in run("history", "export", "m", stdin=pw("new pass phrase")).stdout
    for _ in range(5):
        run("history", "list", stdin=pw("nope nope nope"), rc=1)
    out = run("history", "list", stdin=pw("new pass phrase"), rc=1)
    assert out.stderr.startswith("error: Too many wrong passwords: wait ")
    assert "throttled         yes" in run("vault", "status").stdout


def test_password_from_a_terminal_prompt(appliance_home: Path) -> None:
    """On a TTY the password is asked twice with echo off (getpass)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "appliance", "vault", "init"],
                  os.environ.copy())  # fmt: skip
    transcript = b""

    def read_until(marker: bytes) -> None:
        nonlocal transcript
        while marker not in transcript:
            chunk = os.read(fd, 1024)
            assert chunk, transcript
            transcript += chunk

    read_until(b"New master password: ")
    os.write(fd, PASSWORD.encode() + b"\n")
    read_until(b"Repeat it: ")
    os.write(fd, PASSWORD.encode() + b"\n")
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        transcript += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, transcript
    assert b"vault created (argon2id" in transcript
    assert PASSWORD.encode() not in transcript  # never echoed
    assert "Wrong password" not in run("history", "list", stdin=pw(PASSWORD)).stderr


def test_unlock_notices_recovered_conversations_and_damaged_model_ids(
    appliance_home: Path,
) -> None:
    """Issue 9.4/9.2/9.6 through the CLI: the original app's history lands under the
    library's model id with its notice on stderr; a log without its header is listed
    and can be kept; a damaged model.id is reported instead of hiding the history."""
    from appliance.library.library import Library
    from tests.helpers import write_gguf
    from tests.vault_helpers import write_seed_vault

    write_gguf(appliance_home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", name="SmolLM2")
    Library().scan()
    (model_id,) = [e.id for e in Library().entries()]
    chat = [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello!"}]
    write_seed_vault(appliance_home, PASSWORD, {"SmolLM2-135M-Instruct.Q4_1": chat})
    out = run("history", "list", stdin=pw(PASSWORD))
    assert out.stdout == f"{model_id}  (1 conversation(s))\n"
    assert out.stderr.startswith(
        "Imported 2 messages of 'SmolLM2-135M-Instruct.Q4_1' from the original app into "
        f"model {model_id!r}. 1 with role 'bot' was imported as assistant. The original "
        "file is kept as history/SmolLM2-135M-Instruct.Q4_1.chat.imported"
    )
    assert (appliance_home / "history" / "SmolLM2-135M-Instruct.Q4_1.chat.imported").is_file()
    (header,) = (appliance_home / "history").glob("*/*.conv")
    header.unlink()
    (log,) = (appliance_home / "history").glob("*/*.log")
    out = run("history", "list", model_id, stdin=pw(PASSWORD))
    assert out.stdout.startswith(f"{log.stem}  ") and "2 msgs  Recovered conversation" in out.stdout
    assert f"appliance history recover {model_id} -c ID" in out.stderr
    assert log.is_file()
    out = run("history", "recover", model_id, "-c", log.stem, stdin=pw(PASSWORD))
    conv_id = log.stem.split("-")[0]
    assert out.stdout == (
        f"kept recovered conversation {log.stem} as conversation {conv_id} (2 messages) "
        f"of {model_id}\n"
    )
    (model_id_file,) = (appliance_home / "history").glob("*/model.id")
    model_id_file.write_bytes(b"damaged")
    out = run("history", "list", stdin=pw(PASSWORD))
    assert out.stdout == "no history yet\n"
    assert out.stderr == (
        f"warning: history/{model_id_file.parent.name}: the model id stored in its model.id "
        "cannot be read (the file was altered, damaged or is missing), so this model's "
        "conversations are listed under no model. They are kept: open them by model id "
        "(`appliance history list MODEL`), or restore "
        f"history/{model_id_file.parent.name}/model.id from a backup. The file is rewritten "
        "the next time a conversation of that model is started.\n"
    )
    assert "Hello!" in run("history", "export", model_id, stdin=pw(PASSWORD)).stdout
