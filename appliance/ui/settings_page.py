"""The settings page: auto-lock, keep-alive, threads, context, parallel slots, the switch
rule, password change, API keys, lock now.

Saving says what changed and when it applies: the auto-lock, keep-alive and switch rule
at once (pushed into this session's vault and the running host), threads, context and
parallel slots from the next load (the host reads them from the settings at each load).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import streamlit as st

from appliance import app_settings
from appliance.api.keys import ApiKey, KeyStore
from appliance.app_settings import APP_SETTINGS
from appliance.errors import ApplianceError
from appliance.ui import session
from appliance.ui.guard import guarded
from appliance.ui.services import services
from appliance.vault import PASSWORD_RULE


@guarded
def render() -> None:
    st.title("Settings")
    _app_settings()
    _change_password()
    _api_keys()
    st.subheader("Lock")
    st.caption(
        "Locking forgets the key in this browser session only; other sessions stay as they are."
    )
    if st.button("Lock now", key="lock-now"):
        session.lock("Locked.")
        st.rerun()


def _app_settings() -> None:
    vault = services().vault
    try:
        current = app_settings.load()
        auto_lock = vault.auto_lock_s // 60
    except ApplianceError as exc:
        st.error(str(exc))
        return
    with st.form("app-settings"):
        minutes = st.number_input("Lock the vault after this many idle minutes.", 1, 1440,
                                  int(auto_lock), key="set-auto-lock")  # fmt: skip
        values = {s.name: _input(s, current[s.name]) for s in APP_SETTINGS}
        if st.form_submit_button("Save settings", type="primary"):
            try:
                vault.set_auto_lock_s(int(minutes) * 60, session.unlocked(touch=False))
                saved = app_settings.save(values)
            except ApplianceError as exc:
                st.error(str(exc))
                return
            apply(saved, int(minutes) * 60)
            before = {**current, "auto_lock_minutes": int(auto_lock)}
            st.success(saved_message(before, {**saved, "auto_lock_minutes": int(minutes)}))


SWITCH_LABELS = {
    "wait": "Wait for the running replies to finish",
    "cancel": "Stop the running replies at once",
}
SWITCH_HELP = (
    "Applies to Load and Switch on the Library page and to a chat message for a model "
    "that is not loaded. **Wait**: the switch waits until the replies the current model "
    "is generating for any session have finished, then loads the other model. **Stop at "
    "once**: those replies end at once with a message saying the model was switched; the "
    "text they had so far is kept."
)
SLOTS_HELP = (
    "llama.cpp (GGUF) models only, from their next load: this many chat sessions get "
    "their replies at the same time; more wait in the queue. Each slot reserves memory "
    "for its own context, so the Library's memory estimate grows with it. The other "
    "backends serve one reply at a time."
)
# Names in the "Saved" message, and whether the change applies now or at the next load.
CHANGES = {
    "auto_lock_minutes": ("auto-lock", "now"),
    "keep_alive_minutes": ("keep-alive", "now"),
    "switch_rule": ("switch rule", "now"),
    "n_threads": ("threads", "from the next load"),
    "n_ctx": ("context", "from the next load"),
    "parallel_slots": ("replies at once", "from the next load"),
}


def _input(setting, value):
    """The widget of one app setting: a number within its bounds, or a Choice's options."""
    key = f"set-{setting.name}"
    if isinstance(setting, app_settings.Choice):
        return st.radio(setting.description, setting.choices,
                        index=setting.choices.index(value), key=key,
                        format_func=lambda rule: SWITCH_LABELS.get(rule, rule),
                        help=SWITCH_HELP)  # fmt: skip
    help_text = SLOTS_HELP if setting.name == "parallel_slots" else None
    return st.number_input(setting.description, int(setting.low), int(setting.high), int(value),
                           key=key, help=help_text)  # fmt: skip


def saved_message(before: dict, after: dict) -> str:
    """'Saved: keep-alive 30 → 5 (now), ...', or that nothing changed."""
    changed = [
        f"{label} {_shown(name, before[name])} → {_shown(name, after[name])} ({when})"
        for name, (label, when) in CHANGES.items()
        if before.get(name) != after.get(name)
    ]
    if not changed:
        return "Saved. Nothing changed."
    return "Saved: " + "; ".join(changed) + "."


def _shown(name: str, value) -> str:
    if name == "switch_rule":
        return "stop at once" if value == "cancel" else "wait"
    if value == 0 and name in ("n_threads", "n_ctx"):
        return "auto"
    if value == 0 and name == "keep_alive_minutes":
        return "never"
    return str(value)


def apply(values: dict, auto_lock_s: int) -> None:
    """Push settings into the running host and this session's vault."""
    host = services().host
    host.keep_alive_s = values["keep_alive_minutes"] * 60
    host.switch_rule = values["switch_rule"]  # threads, context, slots: read at each load
    unlocked = session.unlocked(touch=False)
    if unlocked is not None:
        unlocked.idle_timeout_s = auto_lock_s


def _change_password() -> None:
    st.subheader("Master password")
    st.caption(PASSWORD_RULE)
    with st.form("change-password", clear_on_submit=True):
        old = st.text_input("Current password", type="password")
        new = st.text_input("New password", type="password")
        confirm = st.text_input("Confirm the new password", type="password")
        if st.form_submit_button("Change password"):
            if new != confirm:
                st.error("The new passwords differ. Type the same password twice.")
                return
            try:
                services().vault.change_password(old, new)
            except ApplianceError as exc:
                st.error(str(exc))
                return
            st.success(
                "Password changed. Your history was not rewritten: only its key was re-wrapped."
            )


API_KEYS_HELP = (
    "Other tools on the network (editors, scripts, notebooks) use the models through the "
    "OpenAI-compatible API at `/v1` of this app's address, sending a key as the header "
    "`Authorization: Bearer …`. The API is off until the first key exists. A key gives "
    "access to every model in the library, never to the chat history or the vault. Last "
    "used is saved at most once a minute."
)


def _api_keys() -> None:
    """Create (the secret is shown once, in this run only: it is never kept in the
    session) and revoke the API's keys."""
    st.subheader("API keys")
    st.caption(API_KEYS_HELP)
    store = KeyStore()
    with st.form("api-key-create", clear_on_submit=True):
        name = st.text_input("Name of the new key", max_chars=64, key="api-key-name",
                             placeholder="the tool or machine that will use it")  # fmt: skip
        created = st.form_submit_button("Create key")
    if created:
        try:
            key, secret = store.create(name)
        except ApplianceError as exc:
            st.error(str(exc))
        else:
            st.success(f"Key “{_plain(key.name)}” created. Copy it now: this is the only "
                       "time it is shown, because only its hash is stored.")  # fmt: skip
            st.code(secret, language=None)
    try:
        keys = store.list()
    except ApplianceError as exc:
        st.error(str(exc))
        return
    if not keys:
        st.info("No API keys yet: the API is off.")
        return
    st.dataframe(
        [{"Name": k.name, "Key": k.prefix + "…", "Created (UTC)": _when(k.created),
          "Last used (UTC)": _when(k.last_used), "Id": k.id} for k in keys],
        hide_index=True,
    )  # fmt: skip
    for key in keys:
        _revoke(store, key)


def _revoke(store: KeyStore, key: ApiKey) -> None:
    """A form, as Remove in the library: the typed name is sent with the click."""
    shown = _plain(key.name)
    with st.expander(f"Revoke {shown}"), st.form(f"api-revoke-form-{key.id}", border=False):
        st.write("Tools using this key get 401 from their next request. A revoked key "
                 "cannot be brought back; create a new one instead.")  # fmt: skip
        confirm = st.text_input(f"Type the name “{shown}” to confirm",
                                key=f"api-revoke-confirm-{key.id}")  # fmt: skip
        if st.form_submit_button("Revoke", type="primary", key=f"api-revoke-{key.id}"):
            if confirm.strip() != key.name:
                st.error(f"Type the name “{shown}” exactly to confirm; nothing was revoked.")
                return
            try:
                store.revoke(key.id)
            except ApplianceError as exc:
                st.error(str(exc))
                return
            st.toast(f"Revoked the API key “{shown}”.")
            st.rerun()


def _plain(text: str) -> str:
    """A user's text shown as it is inside Markdown (a key's name like `*me*`)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>$:])", r"\\\1", text)


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
