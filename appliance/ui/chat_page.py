"""The chat page: conversations per model, streamed replies, stop, regenerate, context."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from appliance.engine import EngineBusy
from appliance.errors import ApplianceError
from appliance.ui import session
from appliance.ui.library_page import setting_inputs
from appliance.ui.services import services

ROLES = ("user", "assistant")


def render() -> None:
    unlocked = session.unlocked()
    if unlocked is None:
        st.rerun()
    session.show_unlock_notices()
    svc = services()
    try:
        entries = [e for e in svc.library.entries() if e["status"] == "present"]
    except ApplianceError as exc:
        st.error(str(exc))
        return
    if not entries:
        st.info("No model is available. Add one on the Import page or copy it into models/.")
        return
    entry = _pick_model(entries, svc.host.status().model_id)
    flash = st.session_state.pop("chat-flash", None)
    if flash:
        getattr(st, flash[0])(flash[1])
    history = unlocked.history
    conv_id = _conversations(history, entry)
    options = _chat_settings(entry)
    log = None
    if conv_id is not None:
        try:
            log = history.messages(entry["id"], conv_id)
        except ApplianceError as exc:
            st.error(str(exc))
            return
        for warning in log.warnings:
            st.warning(warning)
        for message in log.messages:
            show_message(message.role, message.content, message.meta)
        _context_usage(log.messages)
    prompt = st.chat_input(f"Message {entry['name']}", submit_mode="stop", key="chat-input")
    can_regenerate = bool(log and log.messages and log.messages[-1].role == "assistant")
    if can_regenerate and st.button("Regenerate the last reply", icon=":material/refresh:"):
        messages = log.messages[:-1]
        conv_id = _keep_recovered(history, entry, conv_id)
        _reply(unlocked, entry, conv_id, _as_chat(messages), options, replace=True)
        st.rerun()
    if prompt:
        if conv_id is None:
            conv_id = history.create(entry["id"], title=_title_from(prompt)).id
            st.session_state[f"conv-{entry['id']}"] = conv_id
        conv_id = _keep_recovered(history, entry, conv_id)
        history.append(entry["id"], conv_id, "user", prompt)
        show_message("user", prompt, {})
        messages = history.messages(entry["id"], conv_id).messages
        _reply(unlocked, entry, conv_id, _as_chat(messages), options, replace=False)
        st.rerun()


def _pick_model(entries: list[dict[str, Any]], resident: str | None) -> dict[str, Any]:
    ids = [e["id"] for e in entries]
    by_id = {e["id"]: e for e in entries}
    if st.session_state.get("chat-model") not in ids:
        st.session_state["chat-model"] = resident if resident in ids else ids[0]
    label = {i: f"{e['name']} · {e['backend']}" for i, e in by_id.items()}
    model_id = st.selectbox("Model", ids, key="chat-model", format_func=label.get)
    return by_id[model_id]


def _conversations(history, entry: dict[str, Any]) -> str | None:
    """The conversation bar; returns the open conversation's id (None: none yet)."""
    model_id = entry["id"]
    convs = history.conversations(model_id)
    key = f"conv-{model_id}"
    ids = [c.id for c in convs]
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0] if ids else None  # the latest resumes by itself
    if not convs:
        st.caption("A new conversation starts with your first message.")
        return None
    by_id = {c.id: c for c in convs}
    cols = st.columns([4, 1, 1])
    conv_id = cols[0].selectbox(
        "Conversation", ids, key=key, label_visibility="collapsed",
        format_func=lambda i: f"{by_id[i].title or 'Untitled'} · {by_id[i].message_count} messages",
    )  # fmt: skip
    if cols[1].button("New", icon=":material/add:", width="stretch"):
        st.session_state[key] = history.create(model_id).id
        st.rerun()
    with cols[2].popover("Manage", width="stretch"):
        _manage(history, model_id, by_id[conv_id])
    return conv_id


def _keep_recovered(history, entry: dict[str, Any], conv_id: str) -> str:
    """The id to write to: a recovered conversation (messages found without their
    header) is kept as a regular one first, since the user is continuing it."""
    return history.adopt(entry["id"], conv_id).id


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


def _chat_settings(entry: dict[str, Any]) -> dict[str, Any]:
    with st.sidebar.expander("Chat settings for this model"):
        st.caption("Start from the model's defaults (Library page); changes here apply to "
                   "this browser session.")  # fmt: skip
        return setting_inputs(entry["defaults"], key=f"chat-{entry['id']}")


def show_message(role: str, content: str, meta: dict[str, Any]) -> None:
    """One message; model output is Markdown with HTML disabled."""
    with st.chat_message(role if role in ROLES else "assistant"):
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
    return [{"role": m.role, "content": m.content} for m in messages if m.role in ROLES]


def _title_from(prompt: str) -> str:
    words = " ".join(prompt.split())
    return words if len(words) <= 60 else words[:57] + "…"


def _reply(unlocked, entry, conv_id: str, messages, options: dict[str, Any], replace: bool) -> None:
    """Stream a reply and store it, even if it is stopped or the worker dies."""
    svc = services()
    settings = {k: v for k, v in options.items() if k != "system_prompt"}
    api_key = unlocked.get_secret(f"api-key:{entry['id']}") if entry["format"] == "openai" else None
    try:
        generation = svc.host.chat(
            entry["id"], messages, system_prompt=options["system_prompt"] or None,
            settings=settings, api_key=api_key,
        )  # fmt: skip
    except EngineBusy as exc:
        st.session_state["chat-flash"] = ("warning", str(exc))
        return
    except ApplianceError as exc:
        st.session_state["chat-flash"] = ("error", str(exc))
        return

    def save(text: str, meta: dict[str, Any]) -> None:
        if replace:
            unlocked.history.replace_last(entry["id"], conv_id, text, meta)
        else:
            unlocked.history.append(entry["id"], conv_id, "assistant", text, meta)

    with st.chat_message("assistant"):
        waiting = st.empty()
        while (position := generation.position()) > 0:
            if svc.host.status().phase == "generating":  # someone else's reply is running
                waiting.info(f"Another session is using the model. You are number {position} "
                             "in the queue.")  # fmt: skip
            time.sleep(0.2)
        waiting.empty()
        try:
            st.write_stream(stream_and_save(generation, save))
        except ApplianceError as exc:
            st.session_state["chat-flash"] = ("error", str(exc))


def stream_and_save(generation, save: Callable[[str, dict[str, Any]], None]) -> Iterator[str]:
    """Yield the reply's chunks; on any end (done, Stop, crash) store what arrived."""
    parts: list[str] = []
    meta: dict[str, Any] = {"stopped": True}
    try:
        for chunk in generation:
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
