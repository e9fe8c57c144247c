"""Set-up, unlock, settings.json: KDFs, NFC, wrong password vs damage, upgrades, seed format."""

from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import pytest

from appliance.vault import (
    KdfParamsRefused,
    OrphanedHistory,
    SettingsCorrupt,
    Vault,
    VaultAlreadyInitialized,
    VaultNotInitialized,
    WeakPassword,
    WrongPassword,
    password_strength,
    vault_settings,
)
from appliance.vault import kdf as kdf_mod
from tests.vault_helpers import OTHER, PASSWORD, fast_vault, snapshot, write_seed_vault


def settings_doc(home: Path) -> dict:
    return json.loads((home / "config" / "settings.json").read_text())


def write_doc(home: Path, doc: dict, *, fix_checksum: bool = True) -> None:
    if fix_checksum:
        doc["checksum"] = vault_settings.checksum(doc)
    (home / "config" / "settings.json").write_text(json.dumps(doc))


@pytest.fixture
def spy_derive(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record every key derivation the vault runs."""
    calls: list = []
    real = kdf_mod.derive

    def spy(password: bytes, params: kdf_mod.KdfParams) -> bytes:
        calls.append(params)
        return real(password, params)

    for module in ("appliance.vault.vault", "appliance.vault.seed"):
        monkeypatch.setattr(f"{module}.derive", spy)
    return calls


def test_real_defaults_argon2id_64mib(appliance_home: Path) -> None:
    vault = Vault()  # the real parameters, once
    unlocked = vault.init(PASSWORD)
    conv = unlocked.history.create("m", "t")
    unlocked.history.append("m", conv.id, "user", "hello")
    kdf = settings_doc(appliance_home)["kdf"]
    assert kdf["name"] == "argon2id"
    assert kdf["memory_kib"] >= 64 * 1024 and kdf["iterations"] >= 3
    assert len(base64.b64decode(kdf["salt"])) == 16
    again = Vault().unlock(PASSWORD)
    assert [m.content for m in again.history.messages("m", conv.id).messages] == ["hello"]
    with pytest.raises(WrongPassword):
        Vault().unlock(OTHER)
    assert Vault().status()["kdf_upgrade_pending"] is False


def test_pbkdf2_600k_supported(appliance_home: Path) -> None:
    vault = Vault()
    vault.init(PASSWORD, kdf="pbkdf2-sha256")
    kdf = settings_doc(appliance_home)["kdf"]
    assert (kdf["name"], kdf["iterations"]) == ("pbkdf2-sha256", 600_000)
    Vault().unlock(PASSWORD)
    assert settings_doc(appliance_home)["kdf"]["name"] == "pbkdf2-sha256"  # no silent switch


def test_salts_are_random(tmp_path: Path) -> None:
    from appliance.paths import Paths

    docs = []
    for name in ("a", "b"):
        paths = Paths(tmp_path / name).ensure()
        fast_vault(paths).init(PASSWORD)
        docs.append(json.loads((paths.config / "settings.json").read_text()))
    assert docs[0]["kdf"]["salt"] != docs[1]["kdf"]["salt"]
    assert docs[0]["wrapped_key"] != docs[1]["wrapped_key"]


def test_nfc_and_nfd_spellings_open_the_same_vault() -> None:
    nfc = unicodedata.normalize("NFC", "Crème brûlée à Noël, señor")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    fast_vault().init(nfd)
    fast_vault().unlock(nfc)
    fast_vault().unlock(nfd)
    fast_vault().change_password(nfc, "Ångström " * 2)
    fast_vault().unlock(unicodedata.normalize("NFD", "Ångström " * 2))


def test_wrong_password_is_told_apart_from_damage(appliance_home: Path) -> None:
    fast_vault().init(PASSWORD)
    with pytest.raises(WrongPassword, match="Wrong password. 4 more attempts"):
        fast_vault().unlock(OTHER)
    doc = settings_doc(appliance_home)
    doc["auto_lock_s"] = 60  # hand edit without fixing the checksum
    write_doc(appliance_home, doc, fix_checksum=False)
    with pytest.raises(SettingsCorrupt, match="does not match its checksum"):
        fast_vault().unlock(PASSWORD)
    (appliance_home / "config" / "settings.json").write_text('{"schema": ')
    with pytest.raises(SettingsCorrupt, match="not valid JSON"):
        fast_vault().unlock(PASSWORD)
    (appliance_home / "config" / "settings.json").write_bytes(b"")
    with pytest.raises(SettingsCorrupt):
        fast_vault().unlock(PASSWORD)


def test_every_byte_flip_of_the_file_is_refused(appliance_home: Path) -> None:
    fast_vault().init(PASSWORD)
    path = appliance_home / "config" / "settings.json"
    original = path.read_bytes()
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(SettingsCorrupt):
            fast_vault().unlock(PASSWORD)
        assert path.read_bytes() == bytes(damaged)  # never overwritten
    path.write_bytes(original)
    fast_vault().unlock(PASSWORD)


def test_every_byte_flip_of_the_wrapped_key_fails_authentication(appliance_home: Path) -> None:
    """Even a tamperer who fixes the checksum gets an authentication error, never a key."""
    fast_vault().init(PASSWORD)
    doc = settings_doc(appliance_home)
    wrapped = base64.b64decode(doc["wrapped_key"])
    for i in range(len(wrapped)):
        damaged = bytearray(wrapped)
        damaged[i] ^= 0x80
        write_doc(appliance_home, {**doc, "wrapped_key": base64.b64encode(damaged).decode()})
        with pytest.raises(SettingsCorrupt, match="wrapped key .* fails authentication"):
            fast_vault().unlock(PASSWORD)
    write_doc(appliance_home, doc)
    fast_vault().unlock(PASSWORD)


def kdf_changed() -> str:
    return (
        "config/settings.json holds key-derivation parameters (function, cost or salt) other "
        "than those this vault was last unlocked with, and with them the password does not "
        "open it: the file was edited or replaced. This attempt was not counted as a wrong "
        "password. Restore config/settings.json from a backup; if you restored an older copy "
        "on purpose, use the password that was current when that copy was made."
    )


@pytest.mark.parametrize(
    "edit",
    [
        {"salt": "flip"},
        {"iterations": 2},
        {"memory_kib": 128},
        {"name": "pbkdf2-sha256", "iterations": 1000, "memory_kib": None, "lanes": None},
    ],
)
def test_edited_kdf_params_are_damaged_settings_not_a_wrong_password(
    appliance_home: Path, edit: dict
) -> None:
    """Issue 9.6: edited (in-range) KDF parameters read as "Wrong password" and used up
    the throttle's free attempts."""
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m")
    unlocked.history.append("m", conv.id, "user", "kept")
    doc = settings_doc(appliance_home)
    kdf = dict(doc["kdf"])
    for key, value in edit.items():
        if value == "flip":
            salt = bytearray(base64.b64decode(kdf["salt"]))
            salt[0] ^= 1
            kdf["salt"] = base64.b64encode(salt).decode()
        elif value is None:
            del kdf[key]
        else:
            kdf[key] = value
    write_doc(appliance_home, {**doc, "kdf": kdf})
    edited = (appliance_home / "config" / "settings.json").read_bytes()
    history_before = snapshot(appliance_home / "history")
    for _ in range(8):  # more than the free attempts
        with pytest.raises(SettingsCorrupt) as err:
            fast_vault().unlock(PASSWORD)
        assert str(err.value) == kdf_changed()
    status = fast_vault().status()
    assert (status["failed_attempts"], status["throttled"]) == (0, False)
    assert (appliance_home / "config" / "settings.json").read_bytes() == edited
    assert snapshot(appliance_home / "history") == history_before
    write_doc(appliance_home, doc)  # the file restored: the same password opens it
    log = fast_vault().unlock(PASSWORD).history.messages("m", conv.id)
    assert [m.content for m in log.messages] == ["kept"]
    with pytest.raises(WrongPassword, match="Wrong password. 4 more attempts"):
        fast_vault().unlock(OTHER)  # an unedited file still tells a wrong password


def test_altered_verifier_with_the_right_password_opens_with_a_warning(
    appliance_home: Path,
) -> None:
    fast_vault().init(PASSWORD)
    doc = settings_doc(appliance_home)
    verifier = bytearray(base64.b64decode(doc["verifier"]))
    verifier[0] ^= 1
    write_doc(appliance_home, {**doc, "verifier": base64.b64encode(verifier).decode()})
    with pytest.raises(WrongPassword):
        fast_vault().unlock(OTHER)  # a wrong password cannot be told from this edit
    assert fast_vault().status()["failed_attempts"] == 1
    unlocked = fast_vault().unlock(PASSWORD)  # the wrapped key proves the password
    assert unlocked.warnings == [settings_altered()]
    assert settings_doc(appliance_home)["verifier"] == doc["verifier"]  # re-sealed
    assert fast_vault().unlock(PASSWORD).warnings == []
    assert fast_vault().status()["failed_attempts"] == 0


def settings_altered() -> str:
    return (
        "config/settings.json was changed outside the app: it no longer matches its "
        "authentication code. Safe values are used and saved: auto-lock after 15 minutes, "
        "creation and password-change dates unknown. Your password, your key and your "
        "history are not affected; check the auto-lock time in Settings."
    )


def write_v1_settings(home: Path, password: str, **fields) -> dict:
    """Rewrite settings.json as release 1 wrote it: no MAC, the key wrapped for v1."""
    doc = settings_doc(home)
    params = kdf_mod.params_from_json(doc["kdf"])
    master = kdf_mod.derive(kdf_mod.normalize_password(password), params)
    loaded = vault_settings.load(home / "config" / "settings.json")
    data_key, _ = vault_settings.unwrap(master, loaded)
    from appliance.vault import keys

    wrapped = keys.seal(keys.hkdf(master, "wrap"), data_key, vault_settings.wrap_aad(params, 1))
    old = {k: v for k, v in doc.items() if k not in ("mac", "checksum")}
    old.update(version=1, wrapped_key=base64.b64encode(wrapped).decode(), **fields)
    write_doc(home, old)
    return old


@pytest.mark.parametrize(
    ("field", "value", "safe"),
    [
        ("auto_lock_s", 10**12, 900),
        ("auto_lock_s", -1, 900),
        ("auto_lock_s", 0, 900),
        ("auto_lock_s", "60", 900),
        ("auto_lock_s", 60, 900),  # in range, but not what the app saved
        ("created_at", "2001-01-01T00:00:00+00:00", None),
        ("created_at", "yesterday", None),
        ("password_changed_at", "2999-01-01T00:00:00+00:00", None),
    ],
)
def test_edited_settings_fall_back_to_safe_values(
    appliance_home: Path, field: str, value, safe
) -> None:
    """Issue 9.5: settings.json had only a plain checksum; auto_lock_s = 10^12 turned
    auto-lock off, -1 locked at once, and dates could be forged. The document is now
    authenticated with a MAC keyed from the data key, checked at unlock."""
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m")
    unlocked.history.append("m", conv.id, "user", "kept")
    doc = settings_doc(appliance_home)
    write_doc(appliance_home, {**doc, field: value})  # the public checksum is easy to fix
    history_before = snapshot(appliance_home / "history")
    status = fast_vault().status()  # read before unlocking: range-checked, not trusted
    assert 60 <= status["auto_lock_s"] <= 86_400
    again = fast_vault().unlock(PASSWORD)
    assert again.warnings == [settings_altered()]
    assert again.idle_timeout_s == 900
    assert [m.content for m in again.history.messages("m", conv.id).messages] == ["kept"]
    stored = settings_doc(appliance_home)
    assert stored[field] == safe and stored["auto_lock_s"] == 900
    assert (stored["kdf"], stored["wrapped_key"] != "") == (doc["kdf"], True)
    assert fast_vault().unlock(PASSWORD).warnings == []  # re-sealed: said once
    assert snapshot(appliance_home / "history") == history_before


def test_settings_without_a_mac_open_and_get_one(appliance_home: Path) -> None:
    """A release 1 file (no MAC) opens with the same password; the MAC is added then.
    Its fields are range-checked all the same."""
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m")
    unlocked.history.append("m", conv.id, "user", "kept")
    old = write_v1_settings(appliance_home, PASSWORD)
    assert fast_vault().status()["format"] == "envelope-v1"
    again = fast_vault().unlock(PASSWORD)
    assert again.warnings == []
    assert [m.content for m in again.history.messages("m", conv.id).messages] == ["kept"]
    doc = settings_doc(appliance_home)
    assert doc["version"] == 2 and len(base64.b64decode(doc["mac"])) == 32
    assert (doc["created_at"], doc["kdf"]) == (old["created_at"], old["kdf"])
    write_v1_settings(appliance_home, PASSWORD, auto_lock_s=10**12)
    again = fast_vault().unlock(PASSWORD)
    assert again.warnings == [
        "config/settings.json holds auto_lock_s = 1000000000000, outside 60 to 86,400 "
        "seconds; the default (15 minutes) is used instead."
    ]
    assert again.idle_timeout_s == 900 and settings_doc(appliance_home)["auto_lock_s"] == 900


def test_stripping_the_mac_is_noticed(appliance_home: Path) -> None:
    """Passing a version 2 file off as version 1 (no MAC to check) does not work: its
    wrapped key is bound to version 2."""
    fast_vault().init(PASSWORD)
    doc = settings_doc(appliance_home)
    stripped = {k: v for k, v in doc.items() if k not in ("mac", "checksum")}
    write_doc(appliance_home, {**stripped, "version": 1, "auto_lock_s": 86_400})
    unlocked = fast_vault().unlock(PASSWORD)
    assert unlocked.warnings == [settings_altered()]
    assert unlocked.idle_timeout_s == 900
    assert settings_doc(appliance_home)["version"] == 2


@pytest.mark.parametrize(
    ("kdf", "message"),
    [
        ({"memory_kib": 2**40}, "memory_kib = 1,099,511,627,776"),
        ({"memory_kib": 4 * 1024 * 1024}, "memory_kib = 4,194,304"),
        ({"iterations": 10**9}, "iterations = 1,000,000,000"),
        ({"iterations": 0}, "iterations = 0"),
        ({"iterations": -3}, "iterations = -3"),
        ({"iterations": "3"}, "iterations = '3'"),
        ({"iterations": True}, "iterations = True"),
        ({"lanes": 100_000}, "lanes = 100,000"),
        ({"lanes": 0}, "lanes = 0"),
        ({"name": "scrypt"}, "unknown key-derivation function 'scrypt'"),
        ({"salt": ""}, "0-byte salt"),
        ({"salt": "!!"}, "invalid base64"),
        ({"extra": 1}, "has `kdf` fields"),
    ],
)
def test_absurd_kdf_params_refused_before_any_derivation(
    appliance_home: Path, spy_derive: list, kdf: dict, message: str
) -> None:
    fast_vault().init(PASSWORD)
    doc = settings_doc(appliance_home)
    write_doc(appliance_home, {**doc, "kdf": {**doc["kdf"], **kdf}})
    spy_derive.clear()
    with pytest.raises(KdfParamsRefused, match=message) as err:
        fast_vault().unlock(PASSWORD)
    assert "no key derivation was run" in str(err.value)
    assert spy_derive == []
    assert fast_vault().throttle.state().failures == 0  # refused before counting an attempt


def test_absurd_pbkdf2_iterations_refused(appliance_home: Path, spy_derive: list) -> None:
    fast_vault().init(PASSWORD, kdf="pbkdf2-sha256")
    doc = settings_doc(appliance_home)
    write_doc(appliance_home, {**doc, "kdf": {**doc["kdf"], "iterations": 2**62}})
    spy_derive.clear()
    with pytest.raises(KdfParamsRefused, match="iterations = 4,611,686,018,427,387,904"):
        fast_vault().unlock(PASSWORD)
    assert spy_derive == []


def test_seed_format_absurd_iterations_refused(appliance_home: Path, spy_derive: list) -> None:
    write_seed_vault(appliance_home, PASSWORD, {})
    doc = settings_doc(appliance_home)
    doc["iterations"] = 10**12
    (appliance_home / "config" / "settings.json").write_text(json.dumps(doc))
    with pytest.raises(KdfParamsRefused):
        Vault().unlock(PASSWORD)
    assert spy_derive == []


def test_not_initialized_and_init_twice(appliance_home: Path) -> None:
    vault = fast_vault()
    assert not vault.initialized
    with pytest.raises(VaultNotInitialized, match="appliance vault init"):
        vault.unlock(PASSWORD)
    vault.init(PASSWORD)
    with pytest.raises(VaultAlreadyInitialized, match="change-password"):
        vault.init(OTHER)
    (appliance_home / "config" / "settings.json").write_text("garbage")
    with pytest.raises(VaultAlreadyInitialized, match="never overwritten"):
        fast_vault().init(OTHER)
    assert (appliance_home / "config" / "settings.json").read_text() == "garbage"


def test_init_refuses_when_history_exists_without_settings(appliance_home: Path) -> None:
    unlocked = fast_vault().init(PASSWORD)
    unlocked.history.create("m")
    (appliance_home / "config" / "settings.json").unlink()
    before = snapshot(appliance_home / "history")
    with pytest.raises(OrphanedHistory, match="Restore that file from a backup"):
        fast_vault().init(OTHER)
    assert snapshot(appliance_home / "history") == before


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_weak_passwords_refused(password: str) -> None:
    with pytest.raises(WeakPassword):
        fast_vault().init(password)
    assert not fast_vault().initialized
    fast_vault().init(PASSWORD)
    with pytest.raises(WeakPassword):
        fast_vault().change_password(PASSWORD, password)
    fast_vault().unlock(PASSWORD)


def test_password_strength_hints() -> None:
    assert password_strength("abc")[0] == 0
    assert "at least 8" in password_strength("abc")[1]
    assert password_strength("password123")[0] == 0
    assert password_strength("aaaaaaaaaaaa")[0] == 0
    assert password_strength("Tr0ub4dor&3")[0] >= 3  # zxcvbn: about 10^11 guesses
    assert password_strength("correct horse battery staple")[0] == 4
    scores = [password_strength(p)[0] for p in ("abcdefgh", "abcdefgh12", "Xk9#mQ2!vL7@pR4$")]
    assert scores == sorted(scores) and scores[-1] == 4


def test_seed_vault_opens_and_is_upgraded(appliance_home: Path) -> None:
    """The seed's PBKDF2-480k settings open with the real defaults and are re-wrapped
    with Argon2id; the seed's .chat history is re-encrypted as conversations."""
    chats = {
        "SmolLM2-135M-Instruct_Q4_1": [
            {"role": "user", "content": "Bonjour, ça va ?"},
            {"role": "assistant", "content": "Très bien, merci."},
        ],
        "other_model": [{"role": "user", "content": "second"}],
    }
    seed_key = write_seed_vault(appliance_home, PASSWORD, chats)
    assert Vault().status()["format"] == "seed"
    with pytest.raises(WrongPassword):
        Vault().unlock(OTHER)
    unlocked = Vault().unlock(PASSWORD)
    doc = settings_doc(appliance_home)
    assert doc["schema"] == "offline-llm-switcher/vault"
    assert (doc["kdf"]["name"], doc["kdf"]["memory_kib"]) == ("argon2id", 65536)
    assert doc["seed_import"] is None
    assert "password_hash" not in doc
    assert not list((appliance_home / "history").glob("*.chat"))
    history = unlocked.history
    assert history.model_ids() == ["SmolLM2-135M-Instruct_Q4_1", "other_model"]
    conv = history.latest("SmolLM2-135M-Instruct_Q4_1")
    log = history.messages("SmolLM2-135M-Instruct_Q4_1", conv.id)
    assert [(m.role, m.content) for m in log.messages] == [
        ("user", "Bonjour, ça va ?"), ("assistant", "Très bien, merci."),
    ]  # fmt: skip
    assert any("Imported 2 messages" in n for n in unlocked.notices)
    # The seed's key no longer opens anything, and no file holds it.
    for path in appliance_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert seed_key not in data and base64.urlsafe_b64encode(seed_key) not in data
    Vault().unlock(PASSWORD)
    assert Vault().status()["kdf_upgrade_pending"] is False


def test_seed_import_resumes_after_a_crash(appliance_home: Path, monkeypatch) -> None:
    write_seed_vault(appliance_home, PASSWORD, {"a": [{"role": "user", "content": "x"}],
                                                "b": [{"role": "user", "content": "y"}]})  # fmt: skip
    from appliance.vault import seed

    real = seed.HistoryStore.import_messages
    calls = []

    def crash_on_second(self, model_id, *args, **kwargs):
        calls.append(model_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies mid-import
        return real(self, model_id, *args, **kwargs)

    monkeypatch.setattr(seed.HistoryStore, "import_messages", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        fast_vault().unlock(PASSWORD)
    assert settings_doc(appliance_home)["seed_import"] is not None
    assert [p.name for p in (appliance_home / "history").glob("*.chat")] == ["b.chat"]
    monkeypatch.setattr(seed.HistoryStore, "import_messages", real)
    unlocked = fast_vault().unlock(PASSWORD)
    assert unlocked.history.model_ids() == ["a", "b"]
    assert [unlocked.history.count(m) for m in ("a", "b")] == [1, 1]
    assert settings_doc(appliance_home)["seed_import"] is None


def test_seed_password_typed_in_nfd_still_opens(appliance_home: Path, spy_derive: list) -> None:
    """The seed did not normalise: a vault set with an NFD password must still open, its
    history must come over, and from then on either spelling opens it."""
    nfd = unicodedata.normalize("NFD", "mot de passe élève")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    write_seed_vault(appliance_home, nfd, {"m": [{"role": "user", "content": "salut"}]})
    with pytest.raises(WrongPassword):
        fast_vault().unlock("mot de passe eleve")
    unlocked = fast_vault().unlock(nfd)
    seed_tries = [p for p in spy_derive if p.name == "pbkdf2-sha256"]
    assert len(seed_tries) == 1 + 2  # an ASCII wrong password, then NFD: as NFC, as typed
    assert settings_doc(appliance_home)["schema"] == "offline-llm-switcher/vault"
    assert fast_vault().status()["format"] == "envelope-v2"
    conv = unlocked.history.latest("m")
    assert [m.content for m in unlocked.history.messages("m", conv.id).messages] == ["salut"]
    for spelling in (nfc, nfd):  # normalised from now on
        assert fast_vault().unlock(spelling).history.count("m") == 1


def test_weak_envelope_params_upgraded_on_unlock(appliance_home: Path) -> None:
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m")
    unlocked.history.append("m", conv.id, "user", "kept")
    history_before = snapshot(appliance_home / "history")
    assert Vault().status()["kdf_upgrade_pending"] is True
    Vault().unlock(PASSWORD)
    kdf = settings_doc(appliance_home)["kdf"]
    assert (kdf["memory_kib"], kdf["iterations"], kdf["lanes"]) == (65536, 3, 4)
    assert snapshot(appliance_home / "history") == history_before
    assert Vault().status()["kdf_upgrade_pending"] is False
    log = fast_vault().unlock(PASSWORD).history.messages("m", conv.id)
    assert [m.content for m in log.messages] == ["kept"]


def test_change_password_rewraps_only(appliance_home: Path) -> None:
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create("m", "title")
    unlocked.history.append("m", conv.id, "user", "hello")
    unlocked.set_secret("server", "sk-1")
    before = snapshot(appliance_home / "history")
    old_doc = settings_doc(appliance_home)
    with pytest.raises(WrongPassword):
        fast_vault().change_password(OTHER, "whatever new pass")
    fast_vault().change_password(PASSWORD, OTHER)
    assert snapshot(appliance_home / "history") == before
    new_doc = settings_doc(appliance_home)
    assert new_doc["kdf"]["salt"] != old_doc["kdf"]["salt"]
    assert new_doc["created_at"] == old_doc["created_at"]
    with pytest.raises(WrongPassword):
        fast_vault().unlock(PASSWORD)
    again = fast_vault().unlock(OTHER)
    assert again.history.messages("m", conv.id).messages[0].content == "hello"
    assert again.get_secret("server") == "sk-1"
    # The live session opened before the change keeps working: same data key.
    unlocked.history.append("m", conv.id, "assistant", "still here")
    fast_vault().change_password(OTHER, PASSWORD, kdf="pbkdf2-sha256")
    assert settings_doc(appliance_home)["kdf"]["name"] == "pbkdf2-sha256"
    assert len(fast_vault().unlock(PASSWORD).history.messages("m", conv.id).messages) == 2


def test_status_has_no_secrets(appliance_home: Path) -> None:
    fast_vault().init(PASSWORD)
    status = fast_vault().status()
    text = json.dumps(status)
    doc = settings_doc(appliance_home)
    for secret in (doc["kdf"]["salt"], doc["verifier"], doc["wrapped_key"], PASSWORD):
        assert secret not in text
    assert status["kdf"] == {"name": "argon2id", "memory_kib": 64, "iterations": 1, "lanes": 1}
    (appliance_home / "config" / "settings.json").write_text("{}")
    broken = fast_vault().status()
    assert broken["initialized"] and "config/settings.json" in broken["error"]


def test_auto_lock_setting_persists(appliance_home: Path) -> None:
    vault = fast_vault()
    unlocked = vault.init(PASSWORD)
    assert vault.auto_lock_s == 900
    unlocked.set_auto_lock_s(300)
    assert fast_vault().unlock(PASSWORD).idle_timeout_s == 300
    assert fast_vault().unlock(PASSWORD, idle_timeout_s=60).idle_timeout_s == 60
    vault.set_auto_lock_s(600)  # the session this vault object unlocked holds the key
    assert fast_vault().unlock(PASSWORD).warnings == []
    assert fast_vault().auto_lock_s == 600
    from appliance.vault import VaultError, VaultLocked

    with pytest.raises(VaultError, match="between 1 minute and 24 hours"):
        vault.set_auto_lock_s(5)
    unlocked.lock()
    with pytest.raises(VaultLocked, match="must be unlocked to change its settings"):
        vault.set_auto_lock_s(120)
    assert fast_vault().auto_lock_s == 600
