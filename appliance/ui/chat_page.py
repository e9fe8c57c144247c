"""The chat page: conversations per model, streamed replies, stop, regenerate, context.

What is on screen is what is stored: every exchange ends with a rerun that redraws the
page from the history; Regenerate hides the reply it replaces before streaming the new
one; a Stop (which ends the script run where it is) asks session.refresh_watch for that
rerun. A new conversation is only a draft until its first message, so clicking New
never leaves an empty conversation behind. Chat settings belong to the conversation for
this browser session (widgets with persist_state="session"), or become the model's
defaults when saved as such.

A queued request shows its place and why it waits: every reply slot of the model busy,
a backend that serves one reply at a time, or another model's replies still running
before a switch (the switch rule in Settings).

Models without a chat template get a notice next to the model and a completion mode:
the text goes to the model as it is and the model continues it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from appliance.engine import EngineBusy
from appliance.errors import ApplianceError
from appliance.model_entry import ModelEntry
from appliance.roles import CHAT_ROLES
from appliance.sampling import SETTINGS
from appliance.ui import engine_controls, session
from appliance.ui.guard import guarded
from appliance.ui.library_page import setting_inputs
from appliance.ui.services import services
from appliance.vault.history import is_recovered_id

NEW = "new"  # the conversation selector's value for a draft not yet stored
REGENERATE = "chat-regenerate"  # conversation id whose last reply is to be replaced
FLASH = "chat-flash"


@guarded
def render() -> None:
    unlocked = session.unlocked()
    if unlocked is None:
        st.rerun()
    svc = services()
    every = svc.library.entries()
    entries = [e for e in every if e.status == "present"]
    if not entries:
        broken = len(every)
        st.info(
            "No model is available. Add one on the Import page or copy it into models/."
            + (f" {broken} model(s) in the library are missing or damaged: the Library "
               "page says why." if broken else "")
        )  # fmt: skip
        return
    entry, completion = _model_bar(entries, svc.host)
    flash = st.session_state.pop(FLASH, None)
    if flash:
        getattr(st, flash[0])(flash[1])
    if completion:
        _completion_mode(unlocked, entry)
        return
    history = unlocked.history
    conv_id = _conversation_bar(history, entry)
    options = _chat_settings(entry, conv_id)
    prompt = st.chat_input(f"Message {entry.name}", submit_mode="stop", key="chat-input")
    log = history.messages(entry.id, conv_id) if conv_id else None
    shown = list(log.messages) if log else []
    regenerate = bool(
        conv_id and st.session_state.pop(REGENERATE, None) == conv_id
        and shown and shown[-1].role == "assistant"
    )  # fmt: skip
    if regenerate:
        shown = shown[:-1]  # the reply being replaced leaves the screen at once
    for warning in log.warnings if log else []:
        st.warning(warning)
    for message in shown:
        show_message(message.role, message.content, message.meta)
    if regenerate:
        conv_id = _keep_recovered(history, entry, conv_id)
        _reply(unlocked, entry, conv_id, _as_chat(shown), options, replace=True)
        st.rerun()
    if prompt:
        conv_id = conv_id or _start_conversation(history, entry, prompt)
        conv_id = _keep_recovered(history, entry, conv_id)
        history.append(entry.id, conv_id, "user", prompt)
        show_message("user", prompt, {})
        messages = history.messages(entry.id, conv_id).messages
        _reply(unlocked, entry, conv_id, _as_chat(messages), options, replace=False)
        st.rerun()
    _context_usage(shown)
    if shown and shown[-1].role == "assistant":
        st.button("Regenerate the last reply", key=f"regen-{conv_id}", on_click=_ask_regenerate,
                  args=(conv_id,))  # fmt: skip


# -- the model ------------------------------------------------------------------------------
def _model_bar(entries: list[ModelEntry], host) -> tuple[ModelEntry, bool]:
    """The model selector, with a notice when it has no chat template; (entry, completion)."""
    resident = host.status().model_id
    ids = [e.id for e in entries]
    by_id = {e.id: e for e in entries}
    if st.session_state.get("chat-model") not in ids:
        st.session_state["chat-model"] = resident if resident in ids else ids[0]
    label = {i: f"{e.name} · {e.backend}" for i, e in by_id.items()}
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    model_id = left.selectbox("Model", ids, key="chat-model", format_func=label.get,
                              persist_state="session")  # fmt: skip
    entry = by_id[model_id]
    if not has_fallback_prompt(entry):
        return entry, False
    if not host.supports_completion(model_id):
        right.caption(
            "This model has no chat template: chat uses a plain transcript "
            "(System:/User:/Assistant: lines) as a fallback."
        )
        return entry, False
    right.caption(
        "This model has no chat template: chat uses a plain transcript "
        "(System:/User:/Assistant: lines) as a fallback. A base model often does better "
        "in completion mode."
    )
    completion = right.toggle(
        "Completion mode (raw text, no chat format)",
        key=f"completion-mode-{model_id}",
        persist_state="session",
    )
    return entry, completion


def has_fallback_prompt(entry: ModelEntry) -> bool:
    """True for a local model with no chat template (the engine's plain-transcript fallback)."""
    return not entry.is_remote and not entry.metadata.chat_template


# -- conversations ----------------------------------------------------------------------------
def _conversation_bar(history, entry: ModelEntry) -> str | None:
    """The conversation bar; returns the open conversation's id (None: a draft)."""
    model_id = entry.id
    convs = history.conversations(model_id)
    key = f"conv-{model_id}"
    ids = [c.id for c in convs]
    shown_key = f"conv-shown-{model_id}"  # (id, label) the browser was last sent
    shown = st.session_state.get(shown_key)
    opened = st.session_state.pop(f"conv-open-{model_id}", None)  # see _start_conversation
    if opened in ids:
        st.session_state[key] = opened
    if st.session_state.get(key) not in (*ids, NEW) and shown and shown[0] in ids:
        # The browser sent a label that is no longer an option (a stale screen): the
        # conversation it meant is still the one open.
        st.session_state[key] = shown[0]
    if st.session_state.get(key) not in (*ids, NEW):
        st.session_state[key] = ids[0] if ids else NEW  # the latest resumes by itself
    if not ids:
        st.caption("A new conversation starts with your first message.")
        return None
    by_id = {c.id: c for c in convs}

    def label(conv_id: str) -> str:
        if conv_id == NEW:
            return "New conversation (starts with your first message)"
        conv = by_id[conv_id]
        count = conv.message_count
        return f"{conv.title or 'Untitled'} · {count} message{'' if count == 1 else 's'}"

    options = [NEW, *ids] if st.session_state[key] == NEW else ids
    chosen = st.session_state[key]
    if shown and shown[0] == chosen and shown[1] != label(chosen):
        # Same conversation, new label (renamed, cleared, a reply added): the browser keeps
        # the label it was sent until the value is set again, and would send it back.
        st.session_state[key] = chosen
    cols = st.columns([4, 1, 1], vertical_alignment="bottom")
    conv_id = cols[0].selectbox("Conversation", options, key=key, label_visibility="collapsed",
                                format_func=label, persist_state="session")  # fmt: skip
    st.session_state[shown_key] = (conv_id, label(conv_id))
    cols[1].button("New", width="stretch", key=f"new-{model_id}", on_click=_start_draft,
                   args=(key,), help="Start a new conversation; it is saved with its first "
                   "message.")  # fmt: skip
    if conv_id == NEW:
        return None
    with cols[2].popover("Manage", width="stretch"):
        _manage(history, model_id, by_id[conv_id])
    return conv_id


def _start_draft(key: str) -> None:
    """New: a draft, not a stored conversation (callbacks run before the widgets exist)."""
    st.session_state[key] = NEW


def _start_conversation(history, entry: ModelEntry, prompt: str) -> str:
    """Store the draft as a conversation, titled by its first message; its settings move."""
    conv_id = history.create(entry.id, title=_title_from(prompt)).id
    # The selector exists in this run already: it opens conv_id on the next run.
    st.session_state[f"conv-open-{entry.id}"] = conv_id
    draft, kept = _settings_key(entry.id, None), _settings_key(entry.id, conv_id)
    for setting in SETTINGS:
        value = st.session_state.pop(f"{draft}-{setting.name}", None)
        if value is not None:
            st.session_state[f"{kept}-{setting.name}"] = value
    return conv_id


def _keep_recovered(history, entry: ModelEntry, conv_id: str) -> str:
    """The id to write to: a recovered conversation (messages found without their
    header) is kept as a regular one first, since the user is continuing it."""
    if not is_recovered_id(conv_id):
        return conv_id
    kept = history.adopt(entry.id, conv_id).id
    if kept != conv_id:
        st.session_state[f"conv-open-{entry.id}"] = kept
    return kept


def _manage(history, model_id: str, conv) -> None:
    title = st.text_input("Title", value=conv.title or "", key=f"title-{conv.id}")
    if st.button("Rename", key=f"rename-{conv.id}"):
        _act(lambda: history.rename(model_id, conv.id, title.strip() or "Untitled"))
    for fmt, mime in (("md", "text/markdown"), ("json", "application/json")):
        st.download_button(
            f"Export as {'Markdown' if fmt == 'md' else 'JSON'}",
            data=lambda fmt=fmt: history.export(model_id, conv.id, fmt),
            file_name=f"{model_id}-{conv.id}.{fmt}", mime=mime, key=f"export-{fmt}-{conv.id}",
            on_click="ignore",
        )  # fmt: skip
    sure = st.checkbox("I really want to delete", key=f"sure-{conv.id}")
    if st.button("Clear messages", disabled=not sure, key=f"clear-{conv.id}"):
        _act(lambda: history.clear(model_id, conv.id))
    if st.button("Delete conversation", type="primary", disabled=not sure, key=f"del-{conv.id}"):
        _act(lambda: history.delete(model_id, conv.id))


def _act(action: Callable[[], Any]) -> None:
    try:
        action()
    except ApplianceError as exc:
        st.error(str(exc))
    else:
        st.rerun()


def _ask_regenerate(conv_id: str) -> None:
    st.session_state[REGENERATE] = conv_id


# -- settings -------------------------------------------------------------------------------
def _settings_key(model_id: str, conv_id: str | None) -> str:
    return f"chat-{model_id}-{conv_id or NEW}"


def _chat_settings(entry: ModelEntry, conv_id: str | None) -> dict[str, Any]:
    """System prompt and sampling for this conversation (kept while this session lasts)."""
    key = _settings_key(entry.id, conv_id)
    with st.sidebar.expander("Chat settings for this conversation"):
        st.caption(
            "These belong to this conversation and stay while this browser session is "
            "unlocked. They start from the model's defaults; **Save as the model's "
            "defaults** makes them the start of every new conversation with this model."
        )
        values = setting_inputs(entry.defaults, key=key, persist=True)
        cols = st.columns(2)
        if cols[0].button("Save as the model's defaults", key=f"{key}-save"):
            try:
                services().library.set_defaults(entry.id, values)
            except ApplianceError as exc:
                st.error(str(exc))
            else:
                st.toast(f"Saved as the defaults of {entry.name}.")
        cols[1].button("Reset to the model's defaults", key=f"{key}-reset",
                       on_click=_reset_settings, args=(key,))  # fmt: skip
    return values


def _reset_settings(key: str) -> None:
    for setting in SETTINGS:
        st.session_state.pop(f"{key}-{setting.name}", None)


# -- messages -------------------------------------------------------------------------------
def show_message(role: str, content: str, meta: dict[str, Any]) -> None:
    """One message; model output is Markdown with HTML disabled."""
    with st.chat_message(role if role in CHAT_ROLES else "assistant"):
        st.markdown(content)
        if meta.get("stopped"):
            st.caption("Stopped: the reply was cut short.")
        if meta.get("finish") == "length":
            st.caption("The reply reached the max tokens limit (chat settings).")
        if meta.get("error"):
            st.caption(f"Interrupted: {meta['error']}")


def _context_usage(messages: list) -> None:
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is None or not last.meta.get("context_length"):
        return
    used = last.meta.get("prompt_tokens", 0) + last.meta.get("completion_tokens", 0)
    total = last.meta["context_length"]
    st.progress(min(used / total, 1.0), text=f"Context: {used:,} of {total:,} tokens")
    dropped = last.meta.get("dropped_turns", 0)
    if dropped:
        st.info(f"{dropped} old turn(s) were left out of the last request to fit the context "
                "window. They are still in the history.")  # fmt: skip


def _as_chat(messages: list) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages if m.role in CHAT_ROLES]


def _title_from(prompt: str) -> str:
    words = " ".join(prompt.split())
    return words if len(words) <= 60 else words[:57] + "…"


# -- completion mode -----------------------------------------------------------------------
def _completion_mode(unlocked, entry: ModelEntry) -> None:
    """Raw text in, the model's continuation out; kept for this session, not in the history."""
    st.caption(
        "Completion mode: what you send goes to the model exactly as typed, with no chat "
        "format and no system prompt, and the model continues the text. Completions stay "
        "on this page until the session locks; they are not saved in the history."
    )
    options = _chat_settings(entry, "completion")
    done: list[tuple[str, str, dict[str, Any]]] = st.session_state.setdefault(
        f"completions-{entry.id}", []
    )
    prompt = st.chat_input(f"Text for {entry.name} to continue", submit_mode="stop",
                           key="chat-input")  # fmt: skip
    for text, continuation, meta in done:
        show_message("user", text, {})
        show_message("assistant", continuation, meta)
    if prompt:
        show_message("user", prompt, {})
        _stream(unlocked, entry, [{"role": "user", "content": prompt}], options,
                lambda text, meta: done.append((prompt, text, meta)), raw=True)  # fmt: skip
        st.rerun()


# -- streaming ------------------------------------------------------------------------------
def _reply(unlocked, entry, conv_id: str, messages, options: dict[str, Any], replace: bool) -> None:
    """Stream a reply and store it, even if it is stopped or the worker dies."""

    def save(text: str, meta: dict[str, Any]) -> None:
        if replace:
            unlocked.history.replace_last(entry.id, conv_id, text, meta)
        else:
            unlocked.history.append(entry.id, conv_id, "assistant", text, meta)

    _stream(unlocked, entry, messages, options, save, raw=False)


def _stream(
    unlocked,
    entry: ModelEntry,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    save: Callable[[str, dict[str, Any]], None],
    raw: bool,
) -> None:
    """Queue the request, show the queue, stream the text; `save` gets what arrived."""
    svc = services()
    settings = {k: v for k, v in options.items() if k != "system_prompt"}
    api_key = engine_controls.api_key(entry, unlocked)
    extra = {"raw": True} if raw else {"system_prompt": options["system_prompt"] or None}
    try:
        generation = svc.host.chat(entry.id, messages, settings=settings, api_key=api_key,
                                   **extra)  # fmt: skip
    except EngineBusy as exc:
        st.session_state[FLASH] = ("warning", str(exc))
        return
    except ApplianceError as exc:
        st.session_state[FLASH] = ("error", str(exc))
        return
    with st.chat_message("assistant"):
        waiting = st.empty()
        while (position := generation.position()) > 0:
            status = svc.host.status()
            if status.phase == "generating":  # others' replies are running
                waiting.info(queue_message(status, entry, position))
            time.sleep(0.2)
        _wait_for_load(svc.host, entry, generation, waiting)
        waiting.empty()
        stream = stream_and_save(generation, save, on_first=engine_controls.refresh_panel)
        try:
            st.write_stream(stream)
        except ApplianceError as exc:
            st.session_state[FLASH] = ("error", str(exc))
        except BaseException:  # Stop (or a page switch) ends the run here
            session.request_refresh()
            raise
        finally:
            stream.close()  # store what arrived now, not when the generator is collected


def queue_message(status, entry: ModelEntry, position: int) -> str:
    """Why a request waits, and its place in the queue."""
    place = f"You are number {position} in the queue."
    if status.model_id != entry.id:
        return f"{status.name} is still generating replies; {entry.name} loads next. {place}"
    if status.runs_in == "server":
        return f"All {status.capacity} reply slots of this model are busy. {place}"
    return f"Another session is using the model, which serves one reply at a time. {place}"


def _wait_for_load(host, entry: ModelEntry, generation, waiting) -> None:
    """While the engine loads (or switches to) this model, say so here and in the sidebar."""
    shown = False
    while generation.result is None:
        status = host.status()
        ready = status.model_id == entry.id and status.phase in ("ready", "generating")
        if ready or status.phase == "error":
            break
        if not shown:
            waiting.info(f"Loading {entry.name}…")
            shown = True
        engine_controls.refresh_panel()
        time.sleep(0.25)
    engine_controls.refresh_panel()


def stream_and_save(
    generation,
    save: Callable[[str, dict[str, Any]], None],
    on_first: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Yield the reply's chunks; on any end (done, Stop, crash) store what arrived."""
    parts: list[str] = []
    meta: dict[str, Any] = {"stopped": True}
    try:
        for chunk in generation:
            if not parts and on_first is not None:
                on_first()
            parts.append(chunk)
            yield chunk
        meta["stopped"] = bool(generation.result and generation.result.stopped)
    except ApplianceError as exc:
        meta.update(stopped=False, error=str(exc))
        raise
    finally:
        if meta["stopped"] and not meta.get("error"):
            generation.cancel()  # the user pressed Stop: the script is being ended
        result = generation.result
        if result is not None:
            meta.update(dropped_turns=result.dropped_turns, prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        context_length=result.context_length, finish=result.finish)  # fmt: skip
        meta = {k: v for k, v in meta.items() if v not in (None, False)}
        if parts:
            save("".join(parts), meta)
