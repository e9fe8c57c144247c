"""The unlock page: first-run password set-up, then unlock, with the throttle shown."""

from __future__ import annotations

import streamlit as st

from appliance.errors import ApplianceError
from appliance.ui import session
from appliance.ui.services import services
from appliance.vault import Throttled, WrongPassword, password_strength


def render() -> None:
    vault = services().vault
    _, middle, _ = st.columns([1, 2, 1])
    with middle:
        reason = st.session_state.get("lock_reason")
        if reason:
            st.info(reason)
        if vault.initialized:
            _unlock(vault)
        else:
            _set_up(vault)


def _set_up(vault) -> None:
    st.title("Welcome")
    st.write("Choose a master password. It encrypts your chat history on this machine. "
             "There is no way to recover it: write it down somewhere safe.")  # fmt: skip
    password = st.text_input("Master password", type="password", key="setup-pw")
    if password:
        score, hint = password_strength(password)
        st.progress((score + 1) / 5, text=hint)
    confirm = st.text_input("Confirm the password", type="password", key="setup-confirm")
    if st.button("Create vault", type="primary", key="setup-go"):
        if password != confirm:
            st.error("The two passwords differ. Type the same password twice.")
            return
        try:
            unlocked = vault.init(password)
        except ApplianceError as exc:
            st.error(str(exc))
            return
        session.set_unlocked(unlocked)
        st.rerun()


def _unlock(vault) -> None:
    st.title("Unlock")
    remaining = vault.throttle_remaining()
    if remaining > 0:
        _throttled(remaining)
    with st.form("unlock", border=False):
        password = st.text_input("Master password", type="password", key="unlock-pw")
        submitted = st.form_submit_button("Unlock", type="primary", disabled=remaining > 0)
    if not submitted:
        return
    try:
        resolver = session.legacy_model_resolver(services().library)
        unlocked = vault.unlock(password, resolve_model=resolver)
    except Throttled as exc:
        _throttled(exc.remaining_s)
    except WrongPassword as exc:
        st.error(str(exc))
    except ApplianceError as exc:
        st.error(str(exc))
    else:
        session.set_unlocked(unlocked)
        st.rerun()


def _throttled(remaining: float) -> None:
    minutes, seconds = divmod(int(remaining + 0.999), 60)
    wait = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    st.warning(f"Too many wrong passwords. Try again in {wait}.")
