"""The unlock page: first-run password set-up, then unlock, with the throttle shown.

Both are forms, so what is typed in one field is committed together with the others on
submit (a plain text input commits when it loses focus, and the rerun that starts then
could swallow what is typed next). While the throttle holds, a countdown fragment ticks
every second and reruns the page when the wait is over, so Unlock comes back by itself.
"""

from __future__ import annotations

import streamlit as st

from appliance.errors import ApplianceError
from appliance.ui import session
from appliance.ui.guard import guarded
from appliance.ui.services import services
from appliance.vault import PASSWORD_RULE, Throttled, WeakPassword, password_strength

FAILURE = "unlock-failure"
RELOAD_NOTE = (
    "Each browser tab unlocks on its own: reloading the page or opening a new tab locks "
    "it again. After unlocking you go on to the page you asked for."
)


@guarded
def render(target: str | None = None) -> None:
    """The unlock (or set-up) page; `target` is the page that was asked for, if any."""
    vault = services().vault
    _, middle, _ = st.columns([1, 2, 1])
    with middle:
        reason = st.session_state.get("lock_reason")
        if reason:
            st.info(reason)
        if vault.initialized:
            _unlock(vault, target)
        else:
            _set_up(vault)


def _set_up(vault) -> None:
    st.title("Welcome")
    st.write("Choose a master password. It encrypts your chat history on this machine. "
             "There is no way to recover it: write it down somewhere safe.")  # fmt: skip
    st.caption(PASSWORD_RULE)
    with st.form("setup", border=False, enter_to_submit=True):
        password = st.text_input("Master password", type="password", key="setup-pw")
        confirm = st.text_input("Confirm the password", type="password", key="setup-confirm")
        submitted = st.form_submit_button("Create vault", type="primary", key="setup-go")
    if not submitted:
        return
    if password:
        score, hint = password_strength(password)
        st.progress((score + 1) / 5, text=hint)
    if password != confirm:
        st.error("The two passwords differ. Type the same password twice.")
        return
    try:
        unlocked = vault.init(password)
    except WeakPassword as exc:
        st.error(str(exc))
        return
    except ApplianceError as exc:
        st.error(str(exc))
        return
    session.set_unlocked(unlocked)
    st.rerun()


def _unlock(vault, target: str | None) -> None:
    st.title("Unlock")
    st.caption((f"Unlock to open {target}. " if target else "") + RELOAD_NOTE)
    notices = st.container()  # always there, so the form below keeps its place
    failure = st.session_state.pop(FAILURE, None)
    if failure:
        notices.error(failure)
    remaining = vault.throttle_remaining()
    if remaining > 0:
        with notices:
            _countdown(vault)
    with st.form("unlock", border=False):
        password = st.text_input("Master password", type="password", key="unlock-pw")
        submitted = st.form_submit_button("Unlock", type="primary", disabled=remaining > 0)
    if not submitted:
        return
    try:
        resolver = session.legacy_model_resolver(services().library)
        unlocked = vault.unlock(password, resolve_model=resolver)
    except Throttled:
        pass  # the rerun shows the countdown, with Unlock disabled
    except ApplianceError as exc:  # a wrong password, damaged settings...
        st.session_state[FAILURE] = str(exc)
    else:
        session.set_unlocked(unlocked)
    st.rerun()  # the page, the countdown and the button as they are now


@st.fragment(run_every=1)
@guarded
def _countdown(vault) -> None:
    """'Try again in N s', ticking; the whole page reruns (Unlock enabled) when it ends."""
    remaining = vault.throttle_remaining()
    if remaining <= 0:
        st.rerun(scope="app")
    st.warning(f"Too many wrong passwords. Try again in {wait_text(remaining)}.")


def wait_text(remaining: float) -> str:
    minutes, seconds = divmod(int(remaining + 0.999), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
