"""The vault in the app (AppTest): what an unlock did is shown; recovered conversations open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.library.library import Library
from appliance.paths import APP_ROOT
from appliance.ui.services import services
from tests.helpers import write_gguf
from tests.vault_helpers import PASSWORD, fast_vault, write_seed_vault

APP = str(APP_ROOT / "streamlit_app.py")
STEM = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def app(appliance_home: Path) -> Iterator[AppTest]:
    st.cache_resource.clear()
    yield AppTest.from_file(APP, default_timeout=60)
    svc = services()
    svc.watcher.stop()
    svc.host.shutdown()
    st.cache_resource.clear()


@pytest.fixture
def model_id(appliance_home: Path) -> str:
    write_gguf(appliance_home / "models" / f"{STEM}.gguf", name="SmolLM2")
    Library().scan()
    (entry,) = Library().entries()
    return entry.id


def unlock(app: AppTest, password: str = PASSWORD) -> AppTest:
    app.run()
    assert app.title[0].value == "Unlock"
    app.text_input(key="unlock-pw").input(password)
    return app.button[0].click().run()


def shown_messages(app: AppTest) -> list[str]:
    return [m.markdown[0].value for m in app.chat_message]


def test_unlock_notices_are_shown_once(app: AppTest, appliance_home: Path, model_id) -> None:
    """Issue 9.4: nothing in the UI showed what the unlock imported or could not read,
    and the imported conversation was filed where the chat page never looks."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello!"}]
    write_seed_vault(appliance_home, PASSWORD, {STEM: chat})
    (appliance_home / "history" / "broken.chat").write_bytes(b"not a fernet token")
    unlock(app)
    assert not app.exception
    assert [w.value for w in app.warning] == [
        "broken.chat from the original app could not be decrypted with this password; it is "
        "kept as it is in history/."
    ]
    (info,) = [i.value for i in app.info]
    assert info.startswith(
        f"Imported 2 messages of {STEM!r} from the original app into model {model_id!r}. "
        "1 with role 'bot' was imported as assistant."
    )
    assert shown_messages(app) == ["Hi", "Hello!"]  # under the library's id: it opens
    app.run()
    assert not app.info and not app.warning  # said once
    assert (appliance_home / "history" / f"{STEM}.chat.imported").is_file()


def test_a_recovered_conversation_opens_in_the_chat_page(
    app: AppTest, appliance_home: Path, model_id
) -> None:
    unlocked = fast_vault().init(PASSWORD)
    conv = unlocked.history.create(model_id, "lost title")
    unlocked.history.append(model_id, conv.id, "user", "found again")
    (header,) = (appliance_home / "history").glob("*/*.conv")
    header.unlink()
    (log,) = (appliance_home / "history").glob("*/*.log")
    unlock(app)
    assert not app.exception
    app.selectbox(key=f"conv-{model_id}").select(log.stem).run()
    assert shown_messages(app) == ["found again"]
    assert app.warning[0].value.startswith(f"Conversation {log.stem} was recovered: ")
    assert log.is_file()  # showing it wrote and deleted nothing
