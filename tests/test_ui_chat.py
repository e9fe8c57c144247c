"""AppTest for the chat and settings pages with a real model and a real vault."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.library.library import Library
from appliance.model_entry import ModelEntry
from appliance.ui.services import services
from tests.vault_helpers import PASSWORD, fast_vault

DEMO_ID = "smollm2-135m-instruct.q4_1"


@pytest.fixture
def unlocked(appliance_home: Path):
    return fast_vault().init(PASSWORD)


@pytest.fixture
def run_page(appliance_home: Path, unlocked) -> Iterator:
    """AppTest of one page's render(), unlocked, with fresh shared services."""
    st.cache_resource.clear()

    def make(name: str, run: bool = True) -> AppTest:
        script = f"from appliance.ui import {name}_page as page\npage.render()\n"
        app = AppTest.from_string(script, default_timeout=120)
        app.session_state["vault"] = unlocked
        return app.run() if run else app

    yield make
    svc = services()
    svc.watcher.stop()
    svc.host.shutdown()
    st.cache_resource.clear()


@pytest.fixture
def demo(appliance_home: Path, demo_model: Path) -> ModelEntry:
    (appliance_home / "models" / demo_model.name).hardlink_to(demo_model)
    library = Library()
    entry = library.register(appliance_home / "models" / demo_model.name).entry
    library.set_defaults(
        entry.id,
        {
            "temperature": 0.0,
            "seed": 42,
            "max_tokens": 48,
            "system_prompt": "You are a helpful assistant.",
        },
    )
    return entry


def _send(app: AppTest, text: str) -> AppTest:
    return app.chat_input(key="chat-input").set_value(text).run()


def test_chat_streams_stores_and_resumes(run_page, demo: ModelEntry, unlocked) -> None:
    app = run_page("chat")
    assert not app.exception
    assert "A new conversation starts with your first message." in app.caption[0].value
    _send(app, "What is the capital of France?")
    assert not app.exception and not app.error
    roles = [m.name for m in app.chat_message]
    assert roles == ["user", "assistant"]
    assert "Paris" in app.chat_message[1].markdown[0].value
    (conv,) = unlocked.history.conversations(demo.id)
    assert conv.title == "What is the capital of France?"
    log = unlocked.history.messages(demo.id, conv.id)
    assert [m.role for m in log.messages] == ["user", "assistant"]
    assert log.messages[1].meta["context_length"] > 0
    assert any("Context:" in p.proto.text for p in app.get("progress"))
    # A new browser session resumes the latest conversation by itself.
    again = run_page("chat")
    assert [m.name for m in again.chat_message] == ["user", "assistant"]


def test_regenerate_replaces_the_last_reply(run_page, demo: ModelEntry, unlocked) -> None:
    app = run_page("chat")
    _send(app, "Name a colour.")
    next(b for b in app.button if b.label == "Regenerate the last reply").click().run()
    assert not app.exception
    (conv,) = unlocked.history.conversations(demo.id)
    assert [m.role for m in unlocked.history.messages(demo.id, conv.id).messages] == [
        "user",
        "assistant",
    ]


def test_no_model_available(run_page) -> None:
    app = run_page("chat")
    assert app.info[0].value.startswith("No model is available.")


def test_corrupted_model_gives_a_readable_error(
    run_page, demo: ModelEntry, appliance_home: Path
) -> None:
    path = appliance_home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    data = path.read_bytes()
    path.unlink()  # break the hard link: the test's copy only
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, (time.time() - 60, time.time() - 60))
    # The library reads the changed file again: the model is damaged, and every page
    # says so in a sentence that names the file and what to do.
    app = run_page("chat")
    assert not app.exception
    assert app.info[0].value == (
        "No model is available. Add one on the Import page or copy it into models/. "
        "1 model(s) in the library are missing or damaged: the Library page says why."
    )
    library = run_page("library")
    assert not library.exception
    (damaged,) = [e.value for e in library.error]
    assert "is damaged: Tensor 'blk." in damaged and "the file is truncated" in damaged
    assert "put a good copy at models/SmolLM2-135M-Instruct.Q4_1.gguf" in damaged
    assert library.warning[0].value.startswith("This model's file is damaged")
    assert not [b for b in library.button if b.label in ("Load", "Switch to this model")]


def test_busy_queue_is_a_warning(run_page, demo: ModelEntry) -> None:
    app = run_page("chat", run=False)
    services().host.queue_size = 0
    app.run()
    _send(app, "Hello")
    assert app.warning[0].value.startswith("The engine is busy")


def test_library_load_and_unload(run_page, demo: ModelEntry) -> None:
    app = run_page("library")
    next(b for b in app.button if b.label == "Load").click().run()
    assert not app.exception and not app.error
    status = services().host.status()
    assert (status.model_id, status.phase, status.backend) == (demo.id, "ready", "llama.cpp")
    # Issue 12: llama-server with the settings' parallel slots (4 by default), and the
    # hardware panel names the CPU kernels it picked.
    assert (status.runs_in, status.capacity) == ("server", 4)
    assert status.cpu_variant
    app.run()
    assert (
        f"llama.cpp CPU kernels: **{status.cpu_variant}**, picked for this CPU when "
        f"{demo.name} was loaded."
    ) in [c.value for c in app.caption]
    next(b for b in app.button if b.label == "Unload").click().run()
    assert services().host.status().phase == "idle"


def test_settings_page_saves_and_changes_password(run_page, unlocked) -> None:
    app = run_page("settings")
    assert not app.exception
    app.number_input(key="set-auto-lock").set_value(5)
    app.number_input(key="set-keep_alive_minutes").set_value(0)
    next(b for b in app.button if b.label == "Save settings").click().run()
    assert not app.error
    assert services().host.keep_alive_s == 0
    assert unlocked.idle_timeout_s == 300
    inputs = [t for t in app.text_input if t.type == "text_input"]
    inputs[0].input("wrong password")
    inputs[1].input("a brand new passphrase")
    inputs[2].input("a brand new passphrase")
    next(b for b in app.button if b.label == "Change password").click().run()
    assert "wrong" in app.error[0].value.lower()


def test_missing_model_is_explained(run_page, demo: ModelEntry, appliance_home: Path) -> None:
    (appliance_home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    Library().scan()
    app = run_page("library")
    assert not app.exception
    assert app.warning[0].value == (
        "The files of this model are missing. Put them back or remove the entry."
    )
    assert not [b for b in app.button if b.label == "Load"]
    chat = run_page("chat")
    assert chat.info[0].value.startswith("No model is available.")


def test_model_output_is_markdown_without_html(run_page, demo: ModelEntry, unlocked) -> None:
    conv = unlocked.history.create(demo.id, title="html")
    unlocked.history.append(demo.id, conv.id, "user", "hi")
    unlocked.history.append(demo.id, conv.id, "assistant", "**bold** <script>alert(1)</script>")
    app = run_page("chat")
    body = app.chat_message[1].markdown[0]
    assert body.value == "**bold** <script>alert(1)</script>"
    assert body.proto.allow_html is False
