"""The `appliance` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import write_gguf


def run(
    *args: str, check_rc: int | None = 0, stdin: str | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, timeout=120, input=stdin, env=os.environ.copy(),
    )  # fmt: skip
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_inspect_demo_model_json(demo_model: Path) -> None:
    info = json.loads(run("models", "inspect", str(demo_model), "--json").stdout)
    assert info["architecture"] == "llama"
    assert info["parameters"] == 134_515_008
    assert info["quantization"] == "Q4_1"
    assert info["context_length"] == 8192
    assert info["chat_template"] is True
    assert info["backend"] == "llama.cpp"


def test_console_script_is_installed(demo_model: Path) -> None:
    script = Path(sys.executable).parent / "appliance"
    out = subprocess.run([str(script), "models", "inspect", str(demo_model)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "parameters           134,515,008" in out


def test_add_list_rename_remove(appliance_home: Path, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "tiny.gguf", name="Tiny")
    added = json.loads(run("models", "add", str(src), "--name", "My Tiny", "--json").stdout)
    assert (added["id"], added["name"], added["path"]) == ("my-tiny", "My Tiny", "tiny.gguf")
    assert added["sha256"] is not None  # the CLI waits for the hash before it exits
    listing = json.loads(run("models", "list", "--json").stdout)
    assert listing["version"] == 1
    assert [m["id"] for m in listing["models"]] == ["my-tiny"]
    assert "my-tiny" in run("models", "list").stdout
    run("models", "rename", "my-tiny", "Renamed")
    assert json.loads(run("models", "list", "--json").stdout)["models"][0]["name"] == "Renamed"
    out = run("models", "remove", "my-tiny").stdout
    assert "its files stay at tiny.gguf" in out
    assert (appliance_home / "models" / "tiny.gguf").exists()


def test_add_in_place_and_link(appliance_home: Path, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "ext.gguf")
    entry = json.loads(run("models", "add", str(src), "--in-place", "--json").stdout)
    assert (entry["external"], entry["path"]) == (True, str(src))
    linked = json.loads(
        run(
            "models", "add", str(src), "--link", "--name", "L", "--allow-duplicate", "--json"
        ).stdout
    )
    assert (linked["external"], linked["path"]) == (False, "ext.gguf")


def test_remove_hides_and_unhide_restores(appliance_home: Path, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "tiny.gguf")
    run("models", "add", str(src))
    model = appliance_home / "models" / "tiny.gguf"
    assert run("models", "remove", "tiny").stdout == (
        "removed tiny; its files stay at tiny.gguf and it is hidden: scans and the drop-in "
        "watcher will not add it again. Its chat history is kept. `appliance models unhide "
        "tiny` brings it back.\n"
    )
    assert run("models", "scan").stdout == (
        "hidden    tiny.gguf (removed earlier; `appliance models hidden` lists it)\n"
    )
    assert run("models", "list").stdout == (
        "No models registered. Copy weights into models/ or run `appliance models add`.\n\n"
        "1 removed model(s) are hidden: `appliance models hidden` lists them.\n"
    )
    hidden = run("models", "hidden").stdout.splitlines()
    assert hidden[0].split() == ["ID", "NAME", "PATH", "SIZE", "HIDDEN", "SINCE", "FILES"]
    assert hidden[1].split()[:3] == ["tiny", "tiny", "tiny.gguf"]
    assert hidden[1].split()[-1] == "unchanged"
    (record,) = json.loads(run("models", "hidden", "--json").stdout)["hidden"]
    assert (record["entry"]["id"], record["on_disk"]) == ("tiny", "unchanged")
    assert run("models", "unhide", "tiny").stdout == (
        "unhid tiny (tiny); it is back in the library, present, at tiny.gguf.\n"
    )
    assert run("models", "hidden").stdout.startswith("No hidden models.")
    assert model.read_bytes() == src.read_bytes()
    proc = run("models", "unhide", "tiny", check_rc=1)
    assert proc.stderr == (
        "error: No hidden model with id 'tiny'. Run `appliance models hidden` to see the "
        "hidden ones.\n"
    )


def test_list_and_show_report_a_damaged_model(appliance_home: Path, tmp_path: Path) -> None:
    run("models", "add", str(write_gguf(tmp_path / "tiny.gguf")))
    model = appliance_home / "models" / "tiny.gguf"
    cut = model.read_bytes()[:-100]
    model.write_bytes(cut)
    problem = (
        "Tensor 'output.weight' ends at byte 2,688 but the file has only 2,588 bytes: the file "
        "is truncated or still being copied. Copy it again from the original."
    )
    advice = (
        "To fix it, put a good copy at models/tiny.gguf, or remove the model "
        "(`appliance models remove tiny`)."
    )
    lines = run("models", "list").stdout.splitlines()
    assert lines[1].split()[-3:] == ["KiB", "-", "damaged"]  # size, sha256, status
    assert lines[2:] == ["", f"tiny is damaged: {problem}", advice]
    shown = run("models", "show", "tiny").stdout.splitlines()
    assert "status               damaged" in shown
    assert f"problem              {problem}" in shown
    assert "sha256               -" in shown
    assert shown[-1] == advice
    entry = json.loads(run("models", "show", "tiny", "--json").stdout)
    assert (entry["status"], entry["problem"], entry["size_bytes"]) == ("damaged", problem, 2588)
    assert model.read_bytes() == cut


def test_add_duplicate_says_so(appliance_home: Path, tmp_path: Path) -> None:
    first = json.loads(
        run("models", "add", str(write_gguf(tmp_path / "tiny.gguf")), "--json").stdout
    )
    (tmp_path / "b").mkdir()
    same = tmp_path / "b" / "same.gguf"
    same.write_bytes((tmp_path / "tiny.gguf").read_bytes())
    proc = run("models", "add", str(same), check_rc=1)
    assert proc.stderr == (
        f"error: same.gguf is already in the library as tiny (id tiny): same sha256 "
        f"{first['sha256'][:16]}…. Nothing was imported. Use the id tiny (for example "
        "`appliance chat tiny ...`), or add --allow-duplicate to import a second copy.\n"
    )
    assert sorted(p.name for p in (appliance_home / "models").iterdir()) == [
        ".registry.lock", "registry.json", "tiny.gguf"]  # fmt: skip
    second = json.loads(run("models", "add", str(same), "--allow-duplicate", "--json").stdout)
    assert (second["id"], second["sha256"]) == ("same", first["sha256"])


def test_scan_and_missing(appliance_home: Path) -> None:
    write_gguf(appliance_home / "models" / "dropped.gguf")
    assert run("models", "scan").stdout.strip() == "added     dropped"
    (appliance_home / "models" / "dropped.gguf").unlink()
    report = json.loads(run("models", "scan", "--json").stdout)
    assert report["missing"] == ["dropped"]
    assert run("models", "scan").stdout.strip() == "registry is up to date"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "inspect", "/nonexistent.gguf"),
         "error: /nonexistent.gguf does not exist. Check the path and try again."),
        (("models", "remove", "ghost"),
         "error: No model with id 'ghost'. Run `appliance models list` to see the ids."),
        (("models", "rename", "ghost", "x"),
         "error: No model with id 'ghost'. Run `appliance models list` to see the ids."),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(args: tuple[str, ...], message: str) -> None:
    proc = run(*args, check_rc=1)
    assert proc.stderr.strip() == message
    assert "Traceback" not in proc.stderr


def test_bad_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"\0" * 100)
    proc = run("models", "add", str(bad), check_rc=1)
    assert proc.stderr == "error: junk.gguf: This file does not start with the GGUF magic number.\n"


def test_corrupt_registry_then_repair(appliance_home: Path, tmp_path: Path) -> None:
    run("models", "add", str(write_gguf(tmp_path / "a.gguf")))
    registry = appliance_home / "models" / "registry.json"
    registry.write_text(registry.read_text()[:-20])
    proc = run("models", "list", check_rc=1)
    assert proc.stderr.startswith(f"error: {registry} is not valid JSON (line ")
    assert len(proc.stderr.splitlines()) == 1
    out = run("models", "repair").stdout
    assert "registry rebuilt with 0 entries" in out
    assert "dropped   the whole file (not JSON; kept as registry.json.corrupt-" in out
    assert "added     a" in out


def test_usage_error_exits_2() -> None:
    proc = run("models", "frobnicate", check_rc=2)
    assert "invalid choice" in proc.stderr


def test_watch_registers_in_the_foreground(appliance_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "models", "watch"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "watching" in proc.stdout.readline()
        write_gguf(appliance_home / "models" / "live.gguf")
        line = proc.stdout.readline()
        assert "registered live.gguf: id live, llama.cpp" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    time.sleep(0.1)
    assert json.loads(run("models", "list", "--json").stdout)["models"][0]["id"] == "live"


def test_adding_a_file_already_in_the_library_says_so(appliance_home: Path) -> None:
    models = appliance_home / "models"
    models.mkdir(parents=True, exist_ok=True)
    src = write_gguf(models / "here.gguf")
    first = run("models", "add", str(src)).stdout
    assert first.startswith("added here (")
    again = run("models", "add", str(src)).stdout
    assert (
        again
        == "here is already in the library (here, llama.cpp) at here.gguf; nothing was added\n"
    )
    assert [m["id"] for m in json.loads(run("models", "list", "--json").stdout)["models"]] == [
        "here"
    ]
