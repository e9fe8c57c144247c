"""The unlocked session: lock, auto-lock with an injected clock, secrets, nothing on disk."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from appliance.vault import SettingsCorrupt, VaultLocked
from tests.vault_helpers import PASSWORD, FakeClock, all_files, fast_vault


def test_lock_drops_the_keys_and_blocks_every_use() -> None:
    unlocked = fast_vault().init(PASSWORD)
    history = unlocked.history
    conv = history.create("m")
    assert not unlocked.locked
    unlocked.lock()
    assert unlocked.locked
    assert unlocked._ring is None
    for use in (
        lambda: unlocked.history,
        lambda: history.conversations("m"),
        lambda: history.append("m", conv.id, "user", "x"),
        lambda: history.messages("m", conv.id),
        lambda: history.model_ids(),
        lambda: unlocked.get_secret("s"),
        lambda: unlocked.set_secret("s", "v"),
    ):
        with pytest.raises(VaultLocked, match="Unlock it again"):
            use()


def test_lock_wipes_the_key_buffers() -> None:
    unlocked = fast_vault().init(PASSWORD)
    ring = unlocked._ring
    buffers = list(ring._keys.values())
    assert all(any(b) for b in buffers)
    unlocked.lock()
    assert all(not any(b) for b in buffers) and ring.wiped


def test_auto_lock_after_idle_with_injected_clock() -> None:
    clock = FakeClock()
    vault = fast_vault(clock=clock)
    unlocked = vault.init(PASSWORD)
    assert unlocked.idle_timeout_s == 900  # default 15 minutes
    clock.advance(899)
    assert unlocked.check_idle() is False
    unlocked.touch()
    clock.advance(899)
    conv = unlocked.history.create("m")  # use without touch() does not extend the timer
    clock.advance(1)
    assert unlocked.idle_remaining_s() == 0
    with pytest.raises(VaultLocked, match="no activity for 15 min"):
        unlocked.history.conversations("m")
    assert unlocked.locked and unlocked.check_idle() is True
    unlocked.touch()  # too late: stays locked
    assert unlocked.locked
    again = vault.unlock(PASSWORD, idle_timeout_s=60)
    clock.advance(61)
    assert again.check_idle() is True
    with pytest.raises(VaultLocked):
        again.history.messages("m", conv.id)


def test_sessions_are_independent() -> None:
    clock = FakeClock()
    vault = fast_vault(clock=clock)
    first = vault.init(PASSWORD)
    second = vault.unlock(PASSWORD)
    assert vault.status()["locked"] is False
    first.lock()
    assert not second.locked
    second.history.create("m")
    second.lock()
    assert vault.status()["locked"] is True


def test_secrets_round_trip_encrypted(appliance_home: Path) -> None:
    unlocked = fast_vault().init(PASSWORD)
    assert unlocked.get_secret("lan-server") is None
    unlocked.set_secret("lan-server", "sk-CANARY-api-key-0123")
    unlocked.set_secret("other", "ключ")
    assert fast_vault().unlock(PASSWORD).get_secret("lan-server") == "sk-CANARY-api-key-0123"
    assert unlocked.secret_names() == ["lan-server", "other"]
    assert unlocked.delete_secret("lan-server") is True
    assert unlocked.delete_secret("lan-server") is False
    assert unlocked.get_secret("lan-server") is None
    blob = (appliance_home / "config" / "secrets.bin").read_bytes()
    assert b"CANARY" not in blob and b"lan-server" not in blob and b"other" not in blob
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    (appliance_home / "config" / "secrets.bin").write_bytes(bytes(damaged))
    with pytest.raises(SettingsCorrupt, match="secrets.bin"):
        unlocked.get_secret("other")


def test_canary_never_reaches_disk(appliance_home: Path) -> None:
    """Plaintext, password and keys written through the API are found in no file."""
    canary = "CANARY-7f3a9e-ünïcödé-机密"
    password = "canary password PW-5521"
    unlocked = fast_vault().init(password)
    history = unlocked.history
    model = f"model-{canary}"
    conv = history.create(model, f"title {canary}")
    history.append(model, conv.id, "user", f"question {canary}", {"note": canary})
    history.append(model, conv.id, "assistant", f"answer {canary}")
    history.replace_last(model, conv.id, f"regenerated {canary}", {"stopped": canary})
    history.rename(model, conv.id, f"renamed {canary}")
    history.import_json(model, history.export(model, conv.id, "json"))
    unlocked.set_secret(f"name {canary}", f"value {canary}")
    fast_vault().change_password(password, "canary password two PW-7788")
    fast_vault().unlock("canary password two PW-7788")
    ring = unlocked._ring
    needles = []
    for value in (canary, "CANARY-7f3a9e", "PW-5521", "PW-7788"):
        needles += [value.encode("utf-8"), value.encode("utf-16-le"),
                    value.encode("utf-8").hex().encode(), base64.b64encode(value.encode())]  # fmt: skip
    for purpose in ring.PURPOSES:
        key = ring[purpose]
        needles += [key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)]
    files = all_files(appliance_home)
    assert len(files) >= 8
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path}"
    names = " ".join(str(p) for p in appliance_home.rglob("*"))
    assert "CANARY" not in names and "model-" not in names


def test_files_are_private(appliance_home: Path) -> None:
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m")
    unlocked.history.append("m", conv.id, "user", "x")
    unlocked.set_secret("s", "v")
    for path in all_files(appliance_home):
        if not path.name.endswith(".lock"):
            assert (path.stat().st_mode & 0o077) == 0, path
    for folder in (appliance_home / "history").iterdir():
        if folder.is_dir():
            assert (folder.stat().st_mode & 0o077) == 0
    assert os.environ.get("APPLIANCE_HOME") == str(appliance_home)


def test_vault_folders_are_private(tmp_path: Path) -> None:
    """Issue 9.6: config/ and history/ were created 0755; they are 0700, and folders an
    earlier release made 0755 are tightened when the vault opens."""
    from appliance.paths import Paths

    fresh = Paths(tmp_path / "fresh").ensure()
    for folder in (fresh.history, fresh.config):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    old = Paths(tmp_path / "old")
    for folder in (old.models, old.history, old.config):
        folder.mkdir(parents=True)
        folder.chmod(0o755)
    unlocked = fast_vault(old).init(PASSWORD)
    unlocked.history.create("m")
    for folder in (old.history, old.config, *old.history.iterdir()):
        if folder.is_dir():
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(old.models.stat().st_mode) == 0o755  # people copy weights in
