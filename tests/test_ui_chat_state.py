"""AppTest for what the chat page shows against what is stored (issue 10, items 1, 5, 6, 9).

The engine runs real worker processes with the scripted fake backend
(tests/engine_fakes.py), so these tests need no model and check the page, not the text.
A Stop is what Streamlit does when the Stop button is pressed: the script run ends with
StopException at its next element. These tests raise it from inside st.write_stream, and
the tree AppTest returns is then what the browser shows at the moment of the Stop.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest

from appliance.engine import Host
from appliance.library.library import Library
from appliance.library.model_info import ModelInfo
from appliance.model_entry import ModelMetadata
from appliance.paths import APP_ROOT
from appliance.ui import chat_page, session
from appliance.ui.services import services
from appliance.vault import PASSWORD_RULE
from appliance.vault.strength import weakness
from tests.engine_fakes import FAKE, add_fake_model
from tests.vault_helpers import PASSWORD, fast_vault

# Shows the chat page, or the settings page while session_state["elsewhere"] is set:
# a visit to another page, as far as widget state is concerned.
SCRIPT = """
import streamlit as st
from appliance.ui import chat_page, settings_page
settings_page.render() if st.session_state.get("elsewhere") else chat_page.render()
"""


@pytest.fixture
def unlocked(appliance_home: Path):
    return fast_vault().init(PASSWORD)


@pytest.fixture
def fake_engine(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """services() builds its host with the scripted backend in place of llama.cpp."""
    fake_host = functools.partial(Host, backends={"llama.cpp": FAKE}, spare_worker=False)
    monkeypatch.setattr("appliance.ui.services.Host", fake_host)
    st.cache_resource.clear()
    yield
    svc = services()
    svc.watcher.stop()
    svc.host.shutdown()
    st.cache_resource.clear()


@pytest.fixture
def model(fake_engine) -> str:
    """A fake model whose reply echoes the request's system prompt and settings."""
    return add_fake_model(Library(), "echo", reply="{settings}")


def _app(unlocked, script: str = SCRIPT) -> AppTest:
    app = AppTest.from_string(script, default_timeout=60)
    app.session_state["vault"] = unlocked
    return app.run()


def _send(app: AppTest, text: str) -> AppTest:
    return app.chat_input(key="chat-input").set_value(text).run()


def _bar(app: AppTest, model_id: str):
    return app.selectbox(key=f"conv-{model_id}")


def _stop_after(monkeypatch: pytest.MonkeyPatch, chunks: int) -> None:
    """Make st.write_stream end the run like the Stop button, after `chunks` chunks."""

    def write_stream(stream):
        for index, _ in enumerate(stream):
            if index + 1 >= chunks:
                break
        get_script_run_ctx().script_requests.request_stop()  # what the button sends
        raise StopException()

    monkeypatch.setattr(st, "write_stream", write_stream)


def test_new_conversation_is_a_draft_until_its_first_message(model: str, unlocked) -> None:
    """Issue 10.1: New crashed (StreamlitWidgetAlreadyInstantiatedError) and each click
    left an empty "Untitled" conversation behind."""
    history = unlocked.history
    first = history.create(model, title="First")
    history.append(model, first.id, "user", "hi")
    history.append(model, first.id, "assistant", "hello")
    app = _app(unlocked)
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    app.button(key=f"new-{model}").click().run()
    assert not app.exception
    assert _bar(app, model).value == chat_page.NEW
    assert app.chat_message.len == 0
    app.button(key=f"new-{model}").click().run()  # a second click changes nothing
    assert not app.exception
    assert [c.id for c in history.conversations(model)] == [first.id]
    _send(app, "Say hello.")
    assert not app.exception and not app.error
    convs = history.conversations(model)
    assert len(convs) == 2 and convs[0].title == "Say hello."
    assert _bar(app, model).value == convs[0].id
    assert _bar(app, model).format_func(convs[0].id) == "Say hello. · 2 messages"
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    # The first conversation is still there, whole.
    _bar(app, model).set_value(first.id).run()
    assert [m.markdown[0].value for m in app.chat_message] == ["hi", "hello"]


def test_chat_settings_stay_with_the_conversation(model: str, unlocked) -> None:
    """Issue 10.5: the system prompt and sampling reset on a visit to another page."""
    app = _app(unlocked)
    key = chat_page._settings_key(model, None)
    app.text_area(key=f"{key}-system_prompt").input("Answer in French.")
    app.number_input(key=f"{key}-max_tokens").set_value(7)
    app.run()
    app.session_state["elsewhere"] = True
    app.run()
    assert app.title[0].value == "Settings"
    app.session_state["elsewhere"] = False
    app.run()
    assert app.text_area(key=f"{key}-system_prompt").value == "Answer in French."
    assert app.number_input(key=f"{key}-max_tokens").value == 7
    # The draft's settings go with it when its first message makes it a conversation,
    # and the request uses them.
    _send(app, "Bonjour")
    (conv,) = unlocked.history.conversations(model)
    sent = json.loads(unlocked.history.messages(model, conv.id).messages[1].content)
    assert sent["system"] == "Answer in French." and sent["settings"]["max_tokens"] == 7
    kept = chat_page._settings_key(model, conv.id)
    assert app.text_area(key=f"{kept}-system_prompt").value == "Answer in French."
    # A new conversation starts from the model's defaults; the first one keeps its own.
    app.button(key=f"new-{model}").click().run()
    assert app.text_area(key=f"{key}-system_prompt").value == ""
    _bar(app, model).set_value(conv.id).run()
    assert app.number_input(key=f"{kept}-max_tokens").value == 7
    # Saved as the model's defaults, they start every new conversation.
    app.button(key=f"{kept}-save").click().run()
    assert Library().get(model).defaults["system_prompt"] == "Answer in French."
    captions = [c.value for c in app.sidebar.caption]
    assert any(c.startswith("These belong to this conversation") for c in captions)


def test_counts_and_regenerate_match_what_is_stored(model: str, unlocked) -> None:
    """Issue 10.6: the bar's count is the number of messages on screen; Regenerate
    replaces the reply in place."""
    app = _app(unlocked)
    _send(app, "One")
    (conv,) = unlocked.history.conversations(model)
    assert _bar(app, model).format_func(conv.id) == "One · 2 messages"
    _send(app, "Two")
    assert app.chat_message.len == 4
    assert _bar(app, model).format_func(conv.id) == "One · 4 messages"
    app.button(key=f"regen-{conv.id}").click().run()
    assert not app.exception
    assert app.chat_message.len == 4
    assert _bar(app, model).format_func(conv.id) == "One · 4 messages"
    assert len(unlocked.history.messages(model, conv.id).messages) == 4


def _sent_label(app: AppTest, model_id: str) -> str | None:
    """The label the browser is told to show, if this run set the selector's value."""
    proto = _bar(app, model_id).proto
    return proto.raw_value if proto.set_value else None


def test_the_bar_sends_a_new_label_for_the_open_conversation(model: str, unlocked) -> None:
    """Issue 10.6: the browser keeps the label it was sent while the options are the same
    ids, so after Rename, Clear or a new reply the bar showed the old title or count (and
    sent that stale label back, which opened the latest conversation instead)."""
    app = _app(unlocked)
    _send(app, "One")
    (conv,) = unlocked.history.conversations(model)
    assert _sent_label(app, model) == "One · 2 messages"
    _send(app, "Two")
    assert _sent_label(app, model) == "One · 4 messages"
    app.run()
    assert _sent_label(app, model) is None  # nothing changed: nothing is sent again
    app.text_input(key=f"title-{conv.id}").input("Capitals")
    app.button(key=f"rename-{conv.id}").click().run()
    assert unlocked.history.conversations(model)[0].title == "Capitals"
    assert _sent_label(app, model) == "Capitals · 4 messages"
    app.checkbox(key=f"sure-{conv.id}").check().run()
    app.button(key=f"clear-{conv.id}").click().run()
    assert _sent_label(app, model) == "Capitals · 0 messages"
    assert _bar(app, model).value == conv.id


def test_regenerate_takes_the_old_reply_off_the_screen(
    model: str, unlocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10.6: while the new reply streams, the one it replaces is not shown."""
    app = _app(unlocked)
    _send(app, "Hello")
    (conv,) = unlocked.history.conversations(model)
    old = unlocked.history.messages(model, conv.id).messages[1].content
    _stop_after(monkeypatch, 1)
    app.button(key=f"regen-{conv.id}").click().run()  # stopped while streaming
    shown = [m.markdown[0].value for m in app.chat_message if m.markdown]
    assert old not in shown
    assert shown[0] == "Hello"


def test_stop_stores_the_partial_reply_and_asks_for_a_refresh(
    fake_engine, unlocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10.6: after Stop, the reply is kept and marked, and the page redraws itself
    (session.refresh_watch reruns it: the Stop ended the run where it was)."""
    model = add_fake_model(Library(), "slow", reply="one two three four five six", delay_s=0.05)
    app = _app(unlocked)
    session.REFRESH_WANTED.clear()
    _stop_after(monkeypatch, 2)
    _send(app, "Count")
    assert session.REFRESH_WANTED  # this session's id: the refresh comes
    (conv,) = unlocked.history.conversations(model)
    reply = unlocked.history.messages(model, conv.id).messages[-1]
    assert reply.role == "assistant" and reply.meta["stopped"] is True
    assert reply.content.startswith("one two")
    monkeypatch.undo()
    # What the rerun that refresh_watch starts shows (a fresh session here: AppTest keeps
    # the stopped run's widgets, whose draft keys the new conversation took over).
    again = _app(unlocked)
    assert [c.value for c in again.chat_message[1].caption] == ["Stopped: the reply was cut short."]
    assert [b.key for b in again.button if b.label == "Regenerate the last reply"] == [
        f"regen-{conv.id}"
    ]


def test_the_sidebar_follows_a_streaming_reply(
    fake_engine, unlocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10.6: the active-model panel says Generating while a reply streams (fragments
    wait while a script runs, so the page redraws the panel itself)."""
    add_fake_model(Library(), "slow", reply="one two three four five six", delay_s=0.05)
    app = AppTest.from_file(str(APP_ROOT / "streamlit_app.py"), default_timeout=60)
    app.session_state["vault"] = unlocked
    app.run()
    assert "No model loaded" in [c.value for c in app.sidebar.caption]
    _stop_after(monkeypatch, 2)
    _send(app, "Count")
    assert any(c.value.startswith("Generating…") for c in app.sidebar.caption)


def test_template_less_model_says_so_next_to_the_model(fake_engine, unlocked) -> None:
    """Issue 10.9: the chat says when the plain-transcript fallback is in use, and offers
    completion mode; a model with a template gets neither."""
    library = Library()
    plain = add_fake_model(library, "plain")
    templated = _fake_with_template(library, "templated")
    app = _app(unlocked)
    notice = "This model has no chat template: chat uses a plain transcript"
    assert app.selectbox(key="chat-model").value == plain
    assert [c.value for c in app.caption if c.value.startswith(notice)]
    assert app.toggle(key=f"completion-mode-{plain}").label.startswith("Completion mode")
    app.selectbox(key="chat-model").set_value(templated).run()
    assert not [c.value for c in app.caption if c.value.startswith(notice)]
    assert not [t for t in app.toggle if t.key.startswith("completion-mode-")]


def _fake_with_template(library: Library, name: str) -> str:
    path = library.paths.models / f"{name}.gguf"
    path.write_text(json.dumps({"reply": "hi"}))
    info = ModelInfo(path=str(path), format="gguf", backend="llama.cpp", architecture="fake",
                     architecture_source="metadata", size_bytes=path.stat().st_size,
                     metadata=ModelMetadata(chat_template=True))  # fmt: skip
    return library.register(path, info=info).entry.id


def test_settings_refuses_a_weak_new_password(fake_engine, unlocked) -> None:
    """Issue 10.3: the same rule and message as at set-up and in the CLI."""
    app = _app(unlocked, "from appliance.ui import settings_page\nsettings_page.render()\n")
    assert PASSWORD_RULE in [c.value for c in app.caption]
    labels = ("Current password", "New password", "Confirm the new password")
    current, new, confirm = (t for t in app.text_input if t.label in labels)
    current.input(PASSWORD)
    new.input("password")
    confirm.input("password")
    next(b for b in app.button if b.label == "Change password").click().run()
    assert app.error[0].value == weakness("password")
    fast_vault().unlock(PASSWORD).lock()  # unchanged


def test_completion_mode_continues_the_text_as_it_is(fake_engine, unlocked) -> None:
    """Issue 10.9: the base model's completion mode; nothing goes into the history."""
    plain = add_fake_model(Library(), "plain", reply="Paris.")
    app = _app(unlocked)
    app.toggle(key=f"completion-mode-{plain}").set_value(True).run()
    assert any(c.value.startswith("Completion mode: what you send goes to the model exactly")
               for c in app.caption)  # fmt: skip
    assert app.chat_input(key="chat-input").proto.placeholder == "Text for plain to continue"
    _send(app, "The capital of France is")
    assert not app.exception and not app.error
    shown = [m.markdown[0].value for m in app.chat_message]
    assert shown == ["The capital of France is", "(continuing 5 words)Paris."]
    assert unlocked.history.conversations(plain) == []
    # Back to chat mode: the chat, unchanged. The completions stay in the session until
    # it locks (session.lock drops every key with a private prefix).
    app.toggle(key=f"completion-mode-{plain}").set_value(False).run()
    assert app.chat_message.len == 0
    assert len(app.session_state[f"completions-{plain}"]) == 1
    assert f"completions-{plain}".startswith(session.PRIVATE_PREFIXES)


SETTINGS_SCRIPT = "from appliance.ui import settings_page\nsettings_page.render()\n"


def test_settings_parallel_slots_and_switch_rule(fake_engine, unlocked) -> None:
    """Issue 12.3: both are saved, the switch rule reaches the running host at once, the
    slots the next load's options, and the page says what changed and when it applies."""
    from appliance import app_settings

    app = _app(unlocked, SETTINGS_SCRIPT)
    rule = app.radio(key="set-switch_rule")
    assert rule.value == "wait" and rule.options == [
        "Wait for the running replies to finish",
        "Stop the running replies at once",
    ]
    assert "Wait" in rule.help and "the text they had so far is kept" in rule.help
    slots = app.number_input(key="set-parallel_slots")
    assert (slots.value, slots.min, slots.max) == (4, 1, 16)
    assert slots.label.startswith("Replies generated at once for a GGUF model")
    slots.set_value(2)
    rule.set_value("cancel")
    next(b for b in app.button if b.label == "Save settings").click().run()
    assert not app.error
    assert app.success[0].value == (
        "Saved: switch rule wait → stop at once (now); replies at once 4 → 2 (from the next load)."
    )
    saved = app_settings.load()
    assert (saved["parallel_slots"], saved["switch_rule"]) == (2, "cancel")
    host = services().host
    assert host.switch_rule == "cancel"
    assert host.default_options() == {"parallel": 2}  # what a reload after the keep-alive uses
    next(b for b in app.button if b.label == "Save settings").click().run()
    assert app.success[0].value == "Saved. Nothing changed."


def test_a_bad_switch_rule_in_app_json_is_explained(fake_engine, unlocked, appliance_home) -> None:
    (appliance_home / "config" / "app.json").write_text('{"switch_rule": "sometimes"}')
    app = _app(unlocked, SETTINGS_SCRIPT)
    assert not app.exception
    assert "app.json.switch_rule must be one of wait, cancel, not 'sometimes'" in app.error[0].value
    assert services().host.switch_rule == "wait"  # the app runs on, with the defaults


def test_the_sidebar_says_a_worker_backend_serves_one_reply_at_a_time(model: str, unlocked) -> None:
    """Issue 12.5: the fake backend runs in a worker, like transformers and ctransformers."""
    from appliance.ui.engine_controls import ONE_AT_A_TIME

    services().host.load(model)
    app = AppTest.from_file(str(APP_ROOT / "streamlit_app.py"), default_timeout=60)
    app.session_state["vault"] = unlocked
    app.run()
    captions = [c.value for c in app.sidebar.caption]
    assert ONE_AT_A_TIME in captions
    assert not [c for c in captions if "replies generating" in c]


def test_occupancy_and_queue_messages() -> None:
    """Issue 12.5: llama-server's slots in use and the queue; a worker's one at a time."""
    from appliance.engine import HostStatus
    from appliance.ui.engine_controls import ONE_AT_A_TIME, occupancy

    server = HostStatus(model_id="m", name="M", phase="generating", runs_in="server",
                        capacity=4, running=2, waiting=1)  # fmt: skip
    assert occupancy(server) == "2 of 4 replies generating · 1 waiting"
    from_api = HostStatus(model_id="m", phase="generating", runs_in="server", capacity=4,
                          running=3, api_running=2)  # fmt: skip
    assert occupancy(from_api) == "3 of 4 replies generating · 2 from the API"
    assert occupancy(HostStatus(model_id="m", phase="ready", runs_in="server", capacity=4)) == (
        "0 of 4 replies generating"
    )
    worker = HostStatus(model_id="m", phase="generating", runs_in="worker", running=1, waiting=2)
    assert occupancy(worker) == f"{ONE_AT_A_TIME} 2 waiting."
    assert occupancy(HostStatus()) == ""
    assert occupancy(HostStatus(model_id="m", phase="loading", runs_in="server")) == ""

    entry = type("Entry", (), {"id": "m", "name": "M"})()
    other = type("Entry", (), {"id": "o", "name": "Other"})()
    full = chat_page.queue_message(server, entry, 1)
    assert full == "All 4 reply slots of this model are busy. You are number 1 in the queue."
    assert chat_page.queue_message(worker, entry, 2) == (
        "Another session is using the model, which serves one reply at a time. "
        "You are number 2 in the queue."
    )
    assert chat_page.queue_message(server, other, 1) == (
        "M is still generating replies; Other loads next. You are number 1 in the queue."
    )
