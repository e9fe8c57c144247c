"""API keys (issue 13.3): the key store, `appliance api-keys`, and the Settings section."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.api.keys import (
    LAST_USED_WRITE_S,
    ApiKey,
    ApiKeysFileError,
    BadKeyName,
    KeyNotFound,
    KeyStore,
)
from appliance.cli import main
from appliance.engine import Host
from appliance.ui.services import services
from tests.vault_helpers import PASSWORD, FakeClock, fast_vault


def keys_file(home: Path) -> Path:
    return home / "config" / "api-keys.json"


def stored(home: Path) -> list[dict]:
    return json.loads(keys_file(home).read_text())["keys"]


# ---- the store ----------------------------------------------------------------------------


def test_create_list_verify_revoke(appliance_home: Path) -> None:
    clock = FakeClock()
    store = KeyStore(clock=clock)
    assert not store.any() and store.list() == []
    assert not keys_file(appliance_home).exists()
    editor, editor_secret = store.create("  Laptop editor ")
    clock.advance(5)
    script, script_secret = store.create("nightly script")
    assert re.fullmatch(r"ols_[A-Za-z0-9_-]{43}", editor_secret)  # 32 bytes = 256 bits
    assert re.fullmatch(r"k_[0-9a-f]{8}", editor.id) and editor.id != script.id
    assert editor == ApiKey(editor.id, "Laptop editor", editor_secret[:12], clock.now - 5, None)
    assert store.any()
    assert [k.name for k in store.list()] == ["Laptop editor", "nightly script"]  # oldest first

    assert store.verify(editor_secret) == ApiKey(
        editor.id, "Laptop editor", editor.prefix, editor.created, clock.now
    )
    assert store.verify(script_secret).id == script.id
    for wrong in ("", "ols_", editor_secret + "x", editor_secret[:-1], script.prefix,
                  editor_secret.upper(), "Bearer " + editor_secret):  # fmt: skip
        assert store.verify(wrong) is None

    assert store.revoke("LAPTOP EDITOR").id == editor.id  # by name, ignoring case
    assert store.verify(editor_secret) is None
    assert [k.id for k in store.list()] == [script.id]
    with pytest.raises(KeyNotFound, match="No API key has the id or name 'Laptop editor'"):
        store.revoke("Laptop editor")
    assert store.revoke(script.id).name == "nightly script"  # by id
    assert not store.any() and store.verify(script_secret) is None
    assert stored(appliance_home) == []  # revoked keys are removed from the file
    again, _ = store.create("Laptop editor")  # a revoked key's name is free again
    assert again.id != editor.id


def test_the_file_holds_no_secret_and_is_private(appliance_home: Path) -> None:
    store = KeyStore()
    secrets = [store.create(f"key {n}")[1] for n in range(3)]
    path = keys_file(appliance_home)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    for secret in secrets:
        assert secret not in text
        assert secret[12:] not in text and secret[12:30] not in text  # beyond the prefix
        assert secret[:12] in text  # the prefix, shown in lists
    digests = [k["sha256"] for k in stored(appliance_home)]
    assert digests == [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    assert [p.name for p in path.parent.iterdir() if "api-keys" in p.name and p != path] == [
        ".api-keys.lock"
    ]  # no temp file left behind
    store.verify(secrets[0])
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Give the key a name"),
        ("   ", "Give the key a name"),
        ("x" * 65, "at most 64 characters; this one has 65"),
        ("two\nlines", "cannot contain control characters"),
        ("tab\there", "cannot contain control characters"),
        ("nul\x00", "cannot contain control characters"),
        ("bidi\u202eevil", "cannot contain control characters"),
        ("k_0123abcd", "looks like a key id"),
    ],
)
def test_bad_names_are_refused(appliance_home: Path, name: str, message: str) -> None:
    with pytest.raises(BadKeyName, match=re.escape(message)):
        KeyStore().create(name)
    assert not keys_file(appliance_home).exists()


def test_names_are_unique_ignoring_case(appliance_home: Path) -> None:
    store = KeyStore()
    first, _ = store.create("x" * 64)  # the longest allowed
    assert store.create("Café ☕")[0].name == "Café ☕"
    with pytest.raises(BadKeyName, match="A key named 'Café ☕' already exists"):
        store.create("CAFÉ ☕")
    with pytest.raises(BadKeyName, match="choose another name, or revoke that key first"):
        store.create("X" * 64)
    assert len(store.list()) == 2 and store.list()[0] == first


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{]", "not valid JSON"),
        ("[]", "it is not a version-1 key list"),
        ('{"version": 2, "keys": []}', "it is not a version-1 key list"),
        ('{"version": 1, "keys": {}}', '"keys" is not a list'),
        ('{"version": 1, "keys": [1]}', "keys[0] is not an object"),
        ('{"version": 1, "keys": [{"id": "k_1"}]}', "keys[0].name is missing"),
        (
            '{"version": 1, "keys": [{"id": "k_1", "name": "a", "prefix": "ols_", '
            '"sha256": "ab", "created": 1}]}',
            "keys[0].sha256 is not a SHA-256 hex digest",
        ),
    ],
)
def test_a_damaged_file_is_named_and_never_overwritten(
    appliance_home: Path, content: str, why: str
) -> None:
    path = keys_file(appliance_home)
    path.write_text(content)
    store = KeyStore()
    expected = re.escape(f"{path} cannot be read ({why}") + r".*move it aside.*not changed"
    for action in (store.any, store.list, lambda: store.create("new"),
                   lambda: store.revoke("a"), lambda: store.verify("ols_x")):  # fmt: skip
        with pytest.raises(ApiKeysFileError, match=expected):
            action()
    assert path.read_text() == content
    path.unlink()  # moved aside: the store works again, with no keys
    assert not store.any()


def test_not_utf8_is_named(appliance_home: Path) -> None:
    keys_file(appliance_home).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ApiKeysFileError, match="not UTF-8 text"):
        KeyStore().list()


def test_last_used_is_kept_at_once_and_written_once_a_minute(appliance_home: Path) -> None:
    clock = FakeClock()
    store = KeyStore(clock=clock)
    key, secret = store.create("busy client")
    start = clock.now
    assert store.verify(secret).last_used == start
    assert stored(appliance_home)[0]["last_used"] == start  # the first use is written
    mtime = keys_file(appliance_home).stat().st_mtime_ns
    for _ in range(30):  # a busy client: 30 requests in 30 s
        clock.advance(1)
        assert store.verify(secret).last_used == clock.now
    assert store.list()[0].last_used == clock.now  # this process knows at once
    assert stored(appliance_home)[0]["last_used"] == start  # the file was not rewritten
    assert keys_file(appliance_home).stat().st_mtime_ns == mtime
    assert KeyStore().list()[0].last_used == start  # another process sees the file's
    clock.now = start + LAST_USED_WRITE_S
    store.verify(secret)
    assert stored(appliance_home)[0]["last_used"] == start + LAST_USED_WRITE_S
    clock.advance(10)
    store.verify(secret)
    store.flush()  # at shutdown: what is pending is written
    assert stored(appliance_home)[0]["last_used"] == clock.now
    assert store.list()[0].created == key.created


def test_another_process_creates_and_revokes(appliance_home: Path) -> None:
    """The server's store sees the CLI's changes without a restart, and its own
    last-used writes never undo them."""
    clock = FakeClock()
    server = KeyStore(clock=clock)
    assert not server.any()  # the API is off
    first, first_secret = KeyStore(clock=clock).create("first")  # `appliance api-keys create`
    assert server.any() and server.verify(first_secret).id == first.id
    clock.advance(1)
    second, second_secret = KeyStore(clock=clock).create("second")
    assert server.verify(second_secret).id == second.id
    assert [k.name for k in server.list()] == ["first", "second"]
    KeyStore(clock=clock).revoke("first")
    assert server.verify(first_secret) is None  # refused at the next request
    clock.advance(LAST_USED_WRITE_S)
    third, third_secret = KeyStore(clock=clock).create("third")
    assert server.verify(second_secret) is not None  # writes its last use...
    assert [k["name"] for k in stored(appliance_home)] == ["second", "third"]  # ...and keeps third
    assert server.verify(third_secret).id == third.id
    KeyStore().revoke("second")
    server.flush()  # a pending last use of a revoked key does not bring it back
    assert [k["name"] for k in stored(appliance_home)] == ["third"]


def test_verify_from_many_threads(appliance_home: Path) -> None:
    store = KeyStore()
    pairs = [store.create(f"client {n}") for n in range(4)]
    errors: list[BaseException] = []

    def hammer(key: ApiKey, secret: str) -> None:
        try:
            for _ in range(200):
                assert store.verify(secret).id == key.id
                assert store.verify(secret[:-2] + "xx") is None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(k.last_used for k in KeyStore().list())


# ---- appliance api-keys -------------------------------------------------------------------


@pytest.fixture
def vault(appliance_home: Path) -> None:
    fast_vault().init(PASSWORD).lock()


def cli(monkeypatch, capsys, *args: str, stdin: str = PASSWORD + "\n") -> tuple[int, str, str]:
    """appliance.cli.main with the password piped on stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main(["api-keys", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_create_list_revoke(vault, monkeypatch, capsys, appliance_home: Path) -> None:
    rc, out, err = cli(monkeypatch, capsys, "list")
    assert (rc, err) == (0, "")
    assert (
        out == "no API keys: the API is off until one exists (`appliance api-keys create NAME`)\n"
    )

    rc, out, err = cli(monkeypatch, capsys, "create", "vim plugin")
    assert rc == 0
    secret = out.strip()  # stdout is the secret alone: KEY=$(appliance api-keys create x)
    assert out == secret + "\n" and re.fullmatch(r"ols_[A-Za-z0-9_-]{43}", secret)
    (key,) = KeyStore().list()
    assert err.startswith(f"created API key {key.id} 'vim plugin'\n")
    assert "This is the only time the key is shown: only its hash is stored." in err
    assert f"`Authorization: Bearer {secret[:12]}…`" in err and "/v1" in err
    assert secret not in keys_file(appliance_home).read_text()
    assert KeyStore().verify(secret).id == key.id

    rc, out, _ = cli(monkeypatch, capsys, "list")
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "KEY", "CREATED", "(UTC)", "LAST", "USED", "(UTC)"]
    assert row.startswith(f"{key.id}  vim plugin  {secret[:12]}…  ")
    assert not row.endswith("never")  # the verify above
    rc, out, _ = cli(monkeypatch, capsys, "list", "--json")
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["keys"][0]["id"] == key.id
    assert doc["keys"][0]["last_used"] is not None and secret not in out
    assert set(doc["keys"][0]) == {"id", "name", "prefix", "created", "last_used"}

    rc, out, err = cli(monkeypatch, capsys, "create", "VIM plugin")
    assert rc == 1 and out == ""
    assert err == (f"error: A key named 'vim plugin' already exists ({key.id}); choose "
                   "another name, or revoke that key first.\n")  # fmt: skip
    rc, out, err = cli(monkeypatch, capsys, "revoke", "vim plugin")
    assert (rc, err) == (0, "")
    assert out == f"revoked API key {key.id} 'vim plugin': clients using it get 401 from now on\n"
    assert KeyStore().verify(secret) is None
    rc, out, err = cli(monkeypatch, capsys, "revoke", key.id)
    assert rc == 1 and err == (
        f"error: No API key has the id or name '{key.id}'. `appliance api-keys list` shows them.\n"
    )


def test_cli_needs_the_master_password(
    appliance_home: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    rc, out, err = cli(monkeypatch, capsys, "create", "x")
    assert rc == 1 and out == ""
    assert err.startswith("error: No master password is set yet.")
    fast_vault().init(PASSWORD).lock()
    rc, out, err = cli(monkeypatch, capsys, "create", "x", stdin="not the password\n")
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert re.match(r"error: Wrong password", err, re.I)
    rc, _, err = cli(monkeypatch, capsys, "list", stdin="")
    assert rc == 1 and "was expected on standard input" in err
    assert not keys_file(appliance_home).exists()
    # A bad name is refused before the password is asked for.
    rc, _, err = cli(monkeypatch, capsys, "create", "a\tb", stdin="")
    assert rc == 1 and err.startswith("error: A key's name cannot contain control characters")
    rc, _, err = cli(monkeypatch, capsys, "revoke")
    assert rc == 2 and "ID_OR_NAME" in err


# ---- the Settings page --------------------------------------------------------------------


@pytest.fixture
def settings_app(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setattr("appliance.ui.services.Host", functools.partial(Host, spare_worker=False))
    st.cache_resource.clear()
    app = AppTest.from_string(
        "from appliance.ui import settings_page\nsettings_page.render()\n", default_timeout=60
    )
    app.session_state["vault"] = fast_vault().init(PASSWORD)
    yield app.run()
    svc = services()
    svc.watcher.stop()
    svc.host.shutdown()
    st.cache_resource.clear()


def test_settings_creates_shows_once_and_revokes(settings_app: AppTest) -> None:
    app = settings_app
    assert not app.exception
    assert "API keys" in [h.value for h in app.subheader]
    (caption,) = [c.value for c in app.caption if "OpenAI-compatible API" in c.value]
    assert "The API is off until the first key exists" in caption
    assert "every model in the library, never to the chat history or the vault" in caption
    assert "No API keys yet: the API is off." in [i.value for i in app.info]

    app.text_input(key="api-key-name").input("")
    next(b for b in app.button if b.label == "Create key").click().run()
    assert app.error[0].value.startswith("Give the key a name")

    app.text_input(key="api-key-name").input("notebook *lab*")
    next(b for b in app.button if b.label == "Create key").click().run()
    assert not app.exception and not app.error
    assert app.success[0].value.startswith(r"Key “notebook \*lab\*” created. Copy it now")
    (code,) = app.code
    secret = code.value
    assert KeyStore().verify(secret).name == "notebook *lab*"
    assert secret not in repr(app.session_state)  # never kept in the session
    (table,) = app.dataframe
    assert table.value["Name"].tolist() == ["notebook *lab*"]
    assert table.value["Key"].tolist() == [secret[:12] + "…"]

    app.run()  # any next run: the secret is gone from the page
    assert not app.code and not app.success
    assert app.dataframe[0].value["Last used (UTC)"].tolist() != ["never"]  # the verify
    (key,) = KeyStore().list()
    confirm = app.text_input(key=f"api-revoke-confirm-{key.id}")
    assert confirm.label == r"Type the name “notebook \*lab\*” to confirm"
    confirm.input("notebook")
    app.button(key=f"api-revoke-{key.id}").click().run()
    assert app.error[0].value.startswith("Type the name")
    assert KeyStore().any()
    app.text_input(key=f"api-revoke-confirm-{key.id}").input("notebook *lab*")
    app.button(key=f"api-revoke-{key.id}").click().run()
    assert not app.exception and not app.error
    assert not KeyStore().any() and KeyStore().verify(secret) is None
    assert "No API keys yet: the API is off." in [i.value for i in app.info]


def test_settings_shows_a_damaged_key_file(settings_app: AppTest, appliance_home: Path) -> None:
    keys_file(appliance_home).write_text("{]")
    app = settings_app.run()
    assert not app.exception
    assert any("api-keys.json cannot be read" in e.value for e in app.error)
    assert "Change password" in [b.label for b in app.button]  # the rest of the page works
