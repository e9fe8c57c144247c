"""The history store's API: conversations, append, regenerate, delete, export and import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.vault import HistoryError, UnknownConversation
from appliance.vault.history import HistoryStore
from tests.vault_helpers import FakeClock, fast_unlocked, log_files

text = st.text(alphabet=st.characters(codec=None), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def history(clock: FakeClock) -> HistoryStore:
    return fast_unlocked(clock=clock).history


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model_id=text.filter(bool),
    title=text,
    messages=st.lists(
        st.tuples(
            st.sampled_from(["user", "assistant", "system"]),
            text,
            st.dictionaries(text, json_values, max_size=3),
        ),
        max_size=8,
    ),
)
def test_round_trip_arbitrary_unicode(history: HistoryStore, model_id, title, messages) -> None:
    conv = history.create(model_id, title)
    written = [history.append(model_id, conv.id, r, c, m) for r, c, m in messages]
    log = history.messages(model_id, conv.id)
    assert log.warnings == []
    assert [(m.role, m.content, m.meta) for m in log.messages] == messages
    assert log.messages == written
    assert log.info.title == title
    assert model_id in history.model_ids()
    exported = history.export(model_id, conv.id, "json")
    exported.encode("utf-8")  # always writable as UTF-8, even with lone surrogates
    copy = history.import_json(model_id, exported)
    again = history.messages(model_id, copy.id)
    assert [(m.role, m.content, m.meta) for m in again.messages] == messages
    assert copy.title == title
    history.delete_model(model_id)
    assert model_id not in history.model_ids()


def test_conversations_newest_first_and_latest(history: HistoryStore, clock: FakeClock) -> None:
    assert history.conversations("m") == [] and history.latest("m") is None
    first = history.create("m", "first")
    clock.advance(10)
    second = history.create("m", "second")
    assert [c.id for c in history.conversations("m")] == [second.id, first.id]
    clock.advance(10)
    history.append("m", first.id, "user", "bump")
    listed = history.conversations("m")
    assert [c.id for c in listed] == [first.id, second.id]
    assert listed[0].updated_at == clock.now and listed[0].message_count == 1
    assert listed[0].created_at == clock.now - 20
    assert history.latest("m").id == first.id
    assert history.count("m") == 2 and history.count("other") == 0


def test_replace_last_is_append_only(history: HistoryStore, clock: FakeClock) -> None:
    conv = history.create("m")
    with pytest.raises(HistoryError, match="no message to replace"):
        history.replace_last("m", conv.id, "x")
    history.append("m", conv.id, "user", "question")
    history.append("m", conv.id, "assistant", "first answer", {"stopped": True})
    size = log_files(history.root.parent)[0].stat().st_size
    clock.advance(5)
    new = history.replace_last("m", conv.id, "second answer", {"dropped_turns": 2})
    assert (new.role, new.content, new.meta, new.seq) == (
        "assistant", "second answer", {"dropped_turns": 2}, 2,
    )  # fmt: skip
    assert log_files(history.root.parent)[0].stat().st_size > size  # appended, not rewritten
    log = history.messages("m", conv.id)
    assert [(m.role, m.content) for m in log.messages] == [
        ("user", "question"), ("assistant", "second answer"),
    ]  # fmt: skip
    assert history.conversations("m")[0].message_count == 2
    history.append("m", conv.id, "user", "next")
    assert [m.seq for m in history.messages("m", conv.id).messages] == [0, 2, 3]


def test_rename_clear_delete(history: HistoryStore, appliance_home: Path) -> None:
    conv = history.create("m", "old title")
    other = history.create("m", "other")
    history.append("m", conv.id, "user", "hello")
    history.rename("m", conv.id, "new title")
    assert history.messages("m", conv.id).info.title == "new title"
    cleared = history.clear("m", conv.id)
    assert (cleared.title, cleared.message_count) == ("new title", 0)
    assert history.messages("m", conv.id).messages == []
    assert len(log_files(appliance_home)) == 2  # the old log is gone
    history.append("m", conv.id, "user", "after clear")
    assert [m.content for m in history.messages("m", conv.id).messages] == ["after clear"]
    history.delete("m", conv.id)
    with pytest.raises(UnknownConversation, match="has no conversation"):
        history.messages("m", conv.id)
    assert [c.id for c in history.conversations("m")] == [other.id]
    history.delete("m", other.id)
    assert history.model_ids() == []
    assert not [p for p in (appliance_home / "history").iterdir() if p.is_dir()]


def test_delete_model_keeps_other_models(history: HistoryStore, appliance_home: Path) -> None:
    for model in ("a", "b"):
        for _ in range(2):
            conv = history.create(model)
            history.append(model, conv.id, "user", model)
    assert history.delete_model("a") == 2
    assert history.delete_model("a") == 0
    assert history.model_ids() == ["b"] and history.count("b") == 2
    assert len(log_files(appliance_home)) == 2


def test_history_is_keyed_by_model_id_only(history: HistoryStore) -> None:
    """Ids are opaque strings: any Unicode, slashes and dots included, never a path."""
    for model_id in ("../../etc/passwd", "名前/モデル", "a" * 512, " "):
        conv = history.create(model_id)
        history.append(model_id, conv.id, "user", "x")
    assert sorted(history.model_ids()) == sorted(
        ["../../etc/passwd", "名前/モデル", "a" * 512, " "]
    )
    with pytest.raises(HistoryError, match="Invalid model id"):
        history.create("")
    with pytest.raises(HistoryError, match="Invalid model id"):
        history.create("a" * 513)


def test_bad_input_is_refused_without_writing(history: HistoryStore) -> None:
    conv = history.create("m")
    with pytest.raises(HistoryError, match="Unknown role 'robot'"):
        history.append("m", conv.id, "robot", "x")
    with pytest.raises(HistoryError, match="must be text"):
        history.append("m", conv.id, "user", b"bytes")
    with pytest.raises(HistoryError, match="cannot be stored as JSON"):
        history.append("m", conv.id, "user", "x", {"bad": object()})
    with pytest.raises(HistoryError, match="JSON object"):
        history.append("m", conv.id, "user", "x", ["not", "a", "dict"])
    with pytest.raises(HistoryError, match="title is too long"):
        history.rename("m", conv.id, "t" * 501)
    with pytest.raises(UnknownConversation, match="not a conversation id"):
        history.messages("m", "../x")
    with pytest.raises(UnknownConversation):
        history.append("m", "0123456789abcdef", "user", "x")
    assert history.messages("m", conv.id).messages == []


def test_export_markdown_and_json(history: HistoryStore, clock: FakeClock) -> None:
    conv = history.create("smollm2", "Greetings")
    history.append("smollm2", conv.id, "user", "Hi **there**")
    history.append("smollm2", conv.id, "assistant", "Hello!", {"stopped": True})
    md = history.export("smollm2", conv.id, "md")
    assert md.startswith("# Greetings\n")
    assert "Model `smollm2`" in md and "2 messages" in md
    assert "## User · 2027-01-15 08:00 UTC\n\nHi **there**" in md
    assert "## Assistant" in md and "*(stopped: true)*" in md
    doc = json.loads(history.export("smollm2", conv.id, "json"))
    assert doc["format"] == "offline-llm-switcher/conversation" and doc["version"] == 1
    assert doc["messages"][1] == {
        "role": "assistant", "content": "Hello!", "created_at": "2027-01-15T08:00:00+00:00",
        "meta": {"stopped": True},
    }  # fmt: skip
    with pytest.raises(HistoryError, match="Unknown export format"):
        history.export("smollm2", conv.id, "pdf")
    untitled = history.create("smollm2")
    assert history.export("smollm2", untitled.id, "md").startswith("# Untitled conversation")


def test_import_keeps_times_and_accepts_the_seed_list(history: HistoryStore) -> None:
    conv = history.create("m", "t")
    history.append("m", conv.id, "user", "q")
    copy = history.import_json("other", history.export("m", conv.id, "json"))
    original = history.messages("m", conv.id).messages[0]
    imported = history.messages("other", copy.id).messages[0]
    assert imported.created_at == pytest.approx(original.created_at, abs=1e-5)
    seed_list = json.dumps(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    )
    info = history.import_json("m", seed_list)
    assert info.message_count == 2 and history.count("m") == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other"}', "its format is 'other'"),
        ('{"format": "offline-llm-switcher/conversation", "version": 9}', "version 9"),
        ('{"format": "offline-llm-switcher/conversation", "version": 1}', "no `messages` list"),
        ("[1]", r"messages\[0\] is not an object"),
        ('[{"role": "robot", "content": "x"}]', r"messages\[0\].role is 'robot'"),
        ('[{"role": "user", "content": 5}]', "content is not text"),
        ('[{"role": "user", "content": "x", "created_at": "yesterday"}]', "not an ISO 8601"),
        ('[{"role": "user", "content": "x", "meta": [1]}]', "meta is not an object"),
        ('[{"role": "user", "content": "x", "created_at": 1e300}]', "out of range"),
        ('[{"role": "user", "content": "x", "created_at": -5}]', "out of range"),
        ("42", "neither an export object nor a list"),
    ],
)
def test_import_rejects_bad_files(history: HistoryStore, text: str, message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        history.import_json("m", text)
    assert history.model_ids() == []


def test_appends_do_not_rewrite_the_log(history: HistoryStore, appliance_home: Path) -> None:
    conv = history.create("m")
    history.append("m", conv.id, "user", "first")
    log = log_files(appliance_home)[0]
    head = log.read_bytes()
    inode = log.stat().st_ino
    for i in range(20):
        history.append("m", conv.id, "user", f"msg {i}")
    assert log.stat().st_ino == inode
    assert log.read_bytes().startswith(head)


def test_two_stores_on_one_home_see_each_other(clock: FakeClock) -> None:
    """Two sessions (or the CLI and the app) append to the same conversation safely."""
    a = fast_unlocked(clock=clock).history
    b = fast_unlocked(clock=clock).history
    conv = a.create("m")
    for i in range(10):
        (a if i % 2 else b).append("m", conv.id, "user", str(i))
    assert [m.content for m in a.messages("m", conv.id).messages] == [str(i) for i in range(10)]


def test_history_follows_the_stable_model_id(library, appliance_home: Path) -> None:
    """Renaming a model keeps its history; removing it keeps the history until deleted."""
    from tests.helpers import write_gguf

    write_gguf(appliance_home / "models" / "tiny.gguf", name="Tiny")
    library.scan()
    model_id = library.entries()[0].id
    history = fast_unlocked().history
    conv = history.create(model_id, "about tiny")
    history.append(model_id, conv.id, "user", "hello tiny")
    library.rename(model_id, "A brand new name")
    assert library.entries()[0].id == model_id
    assert history.latest(model_id).id == conv.id
    library.remove(model_id, delete_files=True)
    assert library.entries() == []
    assert history.model_ids() == [model_id]
    assert history.messages(model_id, conv.id).messages[0].content == "hello tiny"
    history.delete_model(model_id)
    assert history.model_ids() == []


def test_lone_surrogates_survive_storage_and_export(history: HistoryStore) -> None:
    conv = history.create("m", "t\udc80")
    history.append("m", conv.id, "user", "broken \ud800 pair", {"k\udfff": "v"})
    assert history.messages("m", conv.id).messages[0].content == "broken \ud800 pair"
    exported = history.export("m", conv.id, "json")
    assert "\\ud800" in exported and exported.isascii()
    copy = history.import_json("m", exported)
    assert history.messages("m", copy.id).messages[0].meta == {"k\udfff": "v"}
    assert copy.title == "t\udc80"
