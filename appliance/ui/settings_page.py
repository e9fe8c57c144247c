"""The settings page: password change, auto-lock, keep-alive, threads, context, lock now."""

from __future__ import annotations

import streamlit as st

from appliance import app_settings
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
        values = {s.name: _number(s, current[s.name]) for s in APP_SETTINGS}
        if st.form_submit_button("Save settings", type="primary"):
            try:
                vault.set_auto_lock_s(int(minutes) * 60, session.unlocked(touch=False))
                saved = app_settings.save(values)
            except ApplianceError as exc:
                st.error(str(exc))
                return
            apply(saved, int(minutes) * 60)
            st.success("Saved. Keep-alive applies now; threads and context from the next load.")


def _number(setting, value: int) -> int:
    return st.number_input(setting.description, int(setting.low), int(setting.high), int(value),
                           key=f"set-{setting.name}")  # fmt: skip


def apply(values: dict, auto_lock_s: int) -> None:
    """Push settings into the running host and this session's vault."""
    services().host.keep_alive_s = values["keep_alive_minutes"] * 60
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
