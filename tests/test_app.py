"""The Streamlit app through its router (AppTest): set-up, unlock, throttle, bad files,
links while locked, page-level errors.

The real server in a loopback-only namespace is tested in test_offline_proof.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from appliance.paths import APP_ROOT
from appliance.ui.guard import unexpected_message
from appliance.ui.services import services
from appliance.vault import PASSWORD_RULE
from appliance.vault.strength import weakness
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
    """Fill the set-up form and submit it (the values travel together with the click)."""
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
    assert PASSWORD_RULE in [c.value for c in app.caption]
    _set_up(app, "abc")
    assert app.get("progress")[0].proto.text.startswith("Too short: use at least 8 characters")
    assert app.error[0].value == f"The password is too short. {PASSWORD_RULE}"
    _set_up(app)
    assert not app.exception and not app.error
    assert "vault" in app.session_state
    assert "Active model" in app.sidebar.markdown[0].value


def test_set_up_fields_are_one_form(app: AppTest) -> None:
    """Issue 10.2: both passwords are committed by the Create click, never one by one on
    blur (Tab to the eye button committed the first and the rerun lost the second)."""
    app.run()
    first, second = app.text_input(key="setup-pw"), app.text_input(key="setup-confirm")
    assert first.proto.form_id and first.proto.form_id == second.proto.form_id
    assert app.button(key="setup-go").proto.form_id == first.proto.form_id


def test_mismatched_and_weak_passwords(app: AppTest, appliance_home: Path) -> None:
    _set_up(app, PASSWORD, "something else entirely")
    assert app.error[0].value == "The two passwords differ. Type the same password twice."
    _set_up(app, "short", "short")
    assert "8 characters" in app.error[0].value
    # Issue 10.3: a common password is refused, with the rule (the CLI says the same).
    _set_up(app, "password", "password")
    assert app.error[0].value == weakness("password")
    assert "This is a top-10 common password." in app.get("progress")[0].proto.text
    assert "vault" not in app.session_state
    assert not (appliance_home / "config" / "settings.json").exists()


def test_wrong_password_then_throttled(app: AppTest) -> None:
    _set_up(app)
    app.session_state["vault"].lock()
    app.run()
    assert app.title[0].value == "Unlock"
    for _ in range(5):  # five free attempts; after the fifth failure, a wait
        assert not app.warning and not app.button[0].disabled
        _unlock(app, "not the password")
        assert "wrong" in app.error[0].value.lower()
    assert app.warning[0].value.startswith("Too many wrong passwords. Try again in ")
    assert app.button[0].disabled  # at once, not after one more click
    assert "vault" not in app.session_state or app.session_state["vault"].locked
    # The countdown ticks in a fragment (run_every=1) that reruns the page when the wait
    # is over; AppTest runs no timers, so tests/test_e2e_pages.py waits for it in Chromium.
    # Here: once the wait is over, the page offers Unlock again and it works.
    throttle = services().vault.throttle
    state = json.loads(throttle.path.read_text())
    state["last_failure_at"] -= 3600
    throttle.path.write_text(json.dumps(state))
    app.run()
    assert not app.warning and not app.button[0].disabled
    _unlock(app, PASSWORD)
    assert app.session_state["vault"] is not None and not app.session_state["vault"].locked


def test_corrupted_settings_file_is_explained(app: AppTest, appliance_home: Path) -> None:
    _set_up(app)
    (appliance_home / "config" / "settings.json").write_text("{ broken")
    app.session_state["vault"].lock()
    app.run()
    _unlock(app, PASSWORD)
    assert "settings" in app.error[0].value.lower()
    assert "Traceback" not in app.error[0].value


def test_a_link_opens_its_page_after_unlocking(app: AppTest) -> None:
    """Issue 10.7: a reload or a link to /library while locked shows the unlock page (and
    says why), then the Library, not the Chat. The URL path selects the page hash."""
    _set_up(app)
    app.session_state["vault"].lock()
    app._page_hash = calc_hash("library")  # what the browser asks for at /library
    app.run()
    assert not app.exception
    assert app.title[0].value == "Unlock"
    note = app.caption[0].value
    assert note.startswith("Unlock to open Library. ") and "reloading the page" in note
    _unlock(app, PASSWORD)
    assert not app.exception
    assert app.title[0].value == "Model library"


def test_unlock_without_a_link_opens_the_chat(app: AppTest) -> None:
    _set_up(app)
    fresh = AppTest.from_file(APP, default_timeout=60).run()  # a new tab, at /
    assert fresh.caption[0].value.startswith("Each browser tab unlocks on its own")
    _unlock(fresh, PASSWORD)
    assert fresh.info[0].value.startswith("No model is available.")  # the chat page


def test_no_remote_icons() -> None:
    """Issue 9.1: a Material icon (":material/name:") makes the browser fetch the page
    icon from fonts.gstatic.com. None in the router or the pages; the browser journeys
    record every request (tests/browser.py) and fail on any off-origin one."""
    sources = [APP_ROOT / "streamlit_app.py", *sorted((APP_ROOT / "appliance").rglob("*.py"))]
    used = [
        f"{path.relative_to(APP_ROOT)}: {match}"
        for path in sources
        for match in re.findall(r":material/[a-z0-9_]+:", path.read_text("utf-8"))
    ]
    assert used == []


def test_an_unexpected_error_is_a_message(app: AppTest, monkeypatch) -> None:
    """Issue 10.10: no error reaches Streamlit's exception box (its traceback, its "Ask
    Google" link); the page says what to do and the server's log gets the traceback."""
    _set_up(app)

    def broken() -> None:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr("appliance.hardware.snapshot", broken)
    app._page_hash = calc_hash("library")
    app.run()
    assert not app.exception
    assert app.error[0].value == unexpected_message(RuntimeError("the disk went away"))
    assert app.error[0].value.startswith(
        "Something went wrong on this page (RuntimeError: the disk went away). "
        "What was already saved is safe."
    )
