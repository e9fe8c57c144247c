"""The Streamlit app through its router (AppTest): set-up, unlock, throttle, bad files.

The real server in a loopback-only namespace is tested in test_offline_proof.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.paths import APP_ROOT
from appliance.ui.services import services
from tests.vault_helpers import PASSWORD

APP = str(APP_ROOT / "streamlit_app.py")


@pytest.fixture
def app(appliance_home: Path) -> Iterator[AppTest]:
    st.cache_resource.clear()
    yield AppTest.from_file(APP, default_timeout=60)
    svc = services()
    svc.watcher.stop()
    svc.host.shutdown()
    st.cache_resource.clear()


def _set_up(app: AppTest, password: str = PASSWORD, confirm: str | None = None) -> AppTest:
    app.run()
    app.text_input(key="setup-pw").input(password)
    app.text_input(key="setup-confirm").input(confirm if confirm is not None else password)
    return app.button(key="setup-go").click().run()


def _unlock(app: AppTest, password: str) -> AppTest:
    app.text_input(key="unlock-pw").input(password)
    return app.button[0].click().run()


def test_first_run_asks_for_a_new_password(app: AppTest) -> None:
    app.run()
    assert not app.exception
    assert app.title[0].value == "Welcome"
    assert [s.label for s in app.sidebar.markdown] == []  # nothing but the unlock page
    app.text_input(key="setup-pw").input("abc").run()
    assert app.get("progress")[0].proto.text.startswith("Too short: use at least 8 characters")
    _set_up(app)
    assert not app.exception and not app.error
    assert "vault" in app.session_state
    assert "Active model" in app.sidebar.markdown[0].value


def test_mismatched_and_weak_passwords(app: AppTest) -> None:
    _set_up(app, PASSWORD, "something else entirely")
    assert app.error[0].value == "The two passwords differ. Type the same password twice."
    _set_up(app, "short", "short")
    assert "8 characters" in app.error[0].value
    assert "vault" not in app.session_state


def test_wrong_password_then_throttled(app: AppTest) -> None:
    _set_up(app)
    app.session_state["vault"].lock()
    app.run()
    assert app.title[0].value == "Unlock"
    for _ in range(5):
        _unlock(app, "not the password")
        assert "wrong" in app.error[0].value.lower()
    _unlock(app, "not the password")
    assert app.warning[0].value.startswith("Too many wrong passwords. Try again in ")
    assert app.button[0].disabled
    assert "vault" not in app.session_state or app.session_state["vault"].locked


def test_corrupted_settings_file_is_explained(app: AppTest, appliance_home: Path) -> None:
    _set_up(app)
    (appliance_home / "config" / "settings.json").write_text("{ broken")
    app.session_state["vault"].lock()
    app.run()
    _unlock(app, PASSWORD)
    assert "settings" in app.error[0].value.lower()
    assert "Traceback" not in app.error[0].value
