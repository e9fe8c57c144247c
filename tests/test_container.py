"""The container's pieces that run without a container: the wheels manifest check
(scripts/check-wheels), and the entrypoint's folder check, demo seeding and supervisor.
scripts/container-smoke runs the real image end to end."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.entrypoint import seed_demo
from appliance.library.library import Library
from appliance.paths import APP_ROOT, current

DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def load_script(name: str):
    path = APP_ROOT / "scripts" / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


check_wheels = load_script("check-wheels")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    (folder / "demo").mkdir(parents=True)
    (folder / "a-1.0-py3-none-any.whl").write_bytes(b"PK wheel a")
    (folder / "b-2.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"PK wheel b" * 1000)
    (folder / "requirements.txt").write_text("a==1.0\n")
    (folder / "demo" / "model.gguf").write_bytes(b"GGUF demo")
    check_wheels.write_manifest(folder)
    return folder


def verify_error(folder: Path) -> str:
    with pytest.raises(SystemExit) as caught:
        check_wheels.verify(folder)
    return str(caught.value)


def test_manifest_lists_every_file_and_verifies(wheels: Path) -> None:
    lines = (wheels / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "a-1.0-py3-none-any.whl", "b-2.0-cp311-cp311-linux_x86_64.whl", "demo/model.gguf",
        "requirements.txt",
    ]  # fmt: skip
    assert check_wheels.verify(wheels) == 4


def test_altered_wheel_is_refused(wheels: Path) -> None:
    target = wheels / "b-2.0-cp311-cp311-linux_x86_64.whl"
    data = bytearray(target.read_bytes())
    data[500] ^= 1
    target.write_bytes(bytes(data))
    message = verify_error(wheels)
    assert "does not match SHA256SUMS; run scripts/fetch-wheels again" in message
    assert "sha256 mismatch: b-2.0-cp311-cp311-linux_x86_64.whl" in message


def test_missing_and_unlisted_files_are_refused(wheels: Path) -> None:
    (wheels / "a-1.0-py3-none-any.whl").unlink()
    (wheels / "evil-6.6-py3-none-any.whl").write_bytes(b"PK")
    message = verify_error(wheels)
    assert "missing: a-1.0-py3-none-any.whl" in message
    assert "not in the manifest: evil-6.6-py3-none-any.whl" in message


def test_no_manifest_or_a_malformed_one(wheels: Path) -> None:
    manifest = wheels / "SHA256SUMS"
    manifest.write_text(f"{'0' * 64}  ../outside.whl\n")
    assert "malformed line" in verify_error(wheels)
    manifest.unlink()
    assert "SHA256SUMS is missing: run scripts/fetch-wheels first" in verify_error(wheels)


def test_check_wheels_command_line(wheels: Path) -> None:
    script = str(APP_ROOT / "scripts" / "check-wheels")
    ok = subprocess.run([sys.executable, script, str(wheels)], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "4 files match SHA256SUMS\n")
    (wheels / "requirements.txt").write_text("a==6.6\n")
    bad = subprocess.run([sys.executable, script, str(wheels)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "sha256 mismatch: requirements.txt" in bad.stderr


def test_fetch_wheels_reads_the_pins_from_pyproject() -> None:
    fetch = load_script("fetch-wheels")
    base = [*fetch.requirements(), *(r for e in fetch.BASE_EXTRAS for r in fetch.requirements(e))]
    names = {fetch.requirement_name(r) for r in base}
    assert {"streamlit", "ctransformers"} <= names
    assert "llama-cpp-python" not in names  # GGUF models run in llama-server, shipped apart
    assert "torch" not in names
    assert "torch==2.13.0" in fetch.requirements("transformers")
    args = fetch.target_args()
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    assert "manylinux_2_36_x86_64" in args and "manylinux_2_37_x86_64" not in args


# -- entrypoint ------------------------------------------------------------------------
def test_demo_is_seeded_into_an_empty_models_folder(appliance_home: Path, demo_model: Path) -> None:
    paths = current()
    assert seed_demo(paths, demo_model) == "smollm2-135m-instruct.q4_1"
    copied = paths.models / demo_model.name
    assert copied.read_bytes() == demo_model.read_bytes()
    Library(paths).hasher.join()
    entry = Library(paths).get("smollm2-135m-instruct.q4_1")
    assert (entry.path, entry.backend, entry.sha256) == (
        demo_model.name, "llama.cpp", DEMO_SHA256,
    )  # fmt: skip
    visible = sorted(p.name for p in paths.models.iterdir() if not p.name.startswith("."))
    assert visible == [demo_model.name, "registry.json"]


def test_a_folder_holding_anything_is_never_seeded(appliance_home: Path, demo_model: Path) -> None:
    paths = current()
    mine = paths.models / demo_model.name
    mine.write_bytes(b"the user's own file with the demo's name")
    os.utime(mine, (1_000_000, 1_000_000))
    assert seed_demo(paths, demo_model) is None
    assert mine.read_bytes() == b"the user's own file with the demo's name"
    assert mine.stat().st_mtime == 1_000_000
    assert sorted(p.name for p in paths.models.iterdir()) == [demo_model.name]


def test_a_models_folder_with_only_a_registry_is_not_seeded(
    appliance_home: Path, demo_model: Path
) -> None:
    paths = current()
    registry = paths.models / "registry.json"
    registry.write_text(json.dumps({"schema": "offline-llm-switcher/registry", "version": 1,
                                    "models": []}))  # fmt: skip
    before = registry.read_bytes()
    assert seed_demo(paths, demo_model) is None
    assert registry.read_bytes() == before
    assert sorted(p.name for p in paths.models.iterdir()) == ["registry.json"]


def test_seeding_can_be_switched_off(
    appliance_home: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_SEED_DEMO", "0")
    assert seed_demo(current(), demo_model) is None
    monkeypatch.delenv("APPLIANCE_SEED_DEMO")
    assert seed_demo(current(), appliance_home / "no-such-demo.gguf") is None
    assert list(current().models.iterdir()) == []


def run_as_nobody(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run code as an unprivileged user (root would pass every permission check)."""
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=APP_ROOT, timeout=60)


def test_an_unwritable_data_folder_stops_start_with_the_fix() -> None:
    home = Path(tempfile.mkdtemp(prefix="olls-ro-"))
    try:
        for name in ("models", "history", "config"):
            (home / name).mkdir()
        os.chmod(home / "history", 0o555)
        os.chmod(home, 0o755)
        env = {"APPLIANCE_HOME": str(home), "PATH": os.environ["PATH"],
               "PYTHONPATH": str(APP_ROOT), "APPLIANCE_SEED_DEMO": "0"}  # fmt: skip
        os.chmod(home / "models", 0o777)
        os.chmod(home / "config", 0o777)
        proc = run_as_nobody("import sys, appliance.entrypoint as e; sys.exit(e.main())", env)
        assert proc.returncode == 1, proc.stderr
        uid = 65534 if os.geteuid() == 0 else os.geteuid()
        assert proc.stderr.startswith(
            f"error: {home / 'history'} is not writable by the container's user (uid {uid}"
        ), proc.stderr
        assert f"sudo chown -R {uid}:" in proc.stderr
        assert "podman unshare chown" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=True)


SUPERVISOR = """
import sys
from pathlib import Path
from appliance.entrypoint import supervise
ready = "import sys, time; print('ready', flush=True); time.sleep(60)"
cmds = [[sys.executable, "-c", ready], [sys.executable, "-c", ready]]
if sys.argv[1] == "crash":
    cmds.append([sys.executable, "-c", "import sys; sys.exit(3)"])
sys.exit(supervise(cmds, Path.cwd()))
"""


def start_supervisor(mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, mode], cwd=APP_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(APP_ROOT)),
    )  # fmt: skip


def test_supervisor_stops_everything_when_one_child_exits() -> None:
    proc = start_supervisor("crash")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "import sys; sys.exit(3) exited (3); stopping" in err


def test_supervisor_forwards_sigterm_and_exits_cleanly() -> None:
    proc = start_supervisor("term")
    both = proc.stdout.read(len("ready\n") * 2)  # the two children's writes may interleave
    assert both.count("ready") == 2 and both.count("\n") == 2
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == ""


def test_tls_is_one_setting_for_the_ui_and_the_api(tmp_path: Path) -> None:
    """APPLIANCE_TLS_CERT/KEY turn on Streamlit's HTTPS, which serves both on one port."""
    from appliance.entrypoint import TlsFileError, commands, tls_args

    assert tls_args({}) == []
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    env = {"APPLIANCE_TLS_CERT": str(cert), "APPLIANCE_TLS_KEY": str(key)}
    assert tls_args(env) == ["--server.sslCertFile", str(cert), "--server.sslKeyFile", str(key)]
    [server] = commands(env)
    assert server[-5].endswith("appliance_server.py") and server[-4:] == tls_args(env)
    with pytest.raises(TlsFileError, match="needs both APPLIANCE_TLS_CERT"):
        tls_args({"APPLIANCE_TLS_CERT": str(cert)})
    with pytest.raises(TlsFileError, match=r"APPLIANCE_TLS_KEY=.*missing.pem cannot be read"):
        tls_args({**env, "APPLIANCE_TLS_KEY": str(tmp_path / "missing.pem")})
    with pytest.raises(TlsFileError, match="is not a PEM file with a PRIVATE KEY"):
        tls_args({**env, "APPLIANCE_TLS_KEY": str(cert)})
