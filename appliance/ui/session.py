"""Per-browser-session state: the unlocked vault lives only in st.session_state.

Never in st.cache_resource (shared by every browser) or st.cache_data (pickled to a
shared cache). Locking drops the reference, and the Unlocked object wipes its key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from appliance.errors import ApplianceError
from appliance.vault import Unlocked, lazy_legacy_resolver

if TYPE_CHECKING:
    from appliance.library.library import Library

KEY = "vault"
NOTICES = "unlock-notices"
REFRESH_WANTED: set[str] = set()  # browser session ids (see request_refresh)
# What locking forgets besides the key: open conversations, chat settings and
# completions, all of which can hold text from the history.
PRIVATE_PREFIXES = ("conv-", "chat-", "completion")


def unlocked(touch: bool = True) -> Unlocked | None:
    """This session's unlocked vault, or None (locking it first if idle too long)."""
    vault: Unlocked | None = st.session_state.get(KEY)
    if vault is None:
        return None
    if vault.locked or vault.check_idle():
        minutes = round(vault.idle_timeout_s / 60)
        lock(f"Locked after {minutes} minute(s) without activity. Unlock to continue.")
        return None
    if touch:
        vault.touch()
    return vault


def set_unlocked(vault: Unlocked) -> None:
    st.session_state[KEY] = vault
    st.session_state.pop("lock_reason", None)
    st.session_state[NOTICES] = [("warning", w) for w in vault.warnings] + [
        ("info", n) for n in vault.notices
    ]


def show_unlock_notices() -> None:
    """What the unlock did or found (the original app's history imported, settings
    reset, damaged files), shown once, on the first page that calls this."""
    for level, text in st.session_state.pop(NOTICES, []):
        (st.warning if level == "warning" else st.info)(text)


def legacy_model_resolver(library: Library) -> Callable[[str], str | None]:
    """Files the original app's history under the library's model ids (read only if
    there is something to import; an unreadable registry matches nothing)."""

    def models() -> list[tuple[str, str, str]]:
        try:
            return [(e.id, e.name, e.path) for e in library.entries()]
        except ApplianceError:
            return []

    return lazy_legacy_resolver(models)


def lock(reason: str = "Locked.") -> None:
    """Drop the key of this browser session (other sessions are not affected)."""
    vault: Unlocked | None = st.session_state.pop(KEY, None)
    if vault is not None and not vault.locked:
        vault.lock()
    for key in [k for k in st.session_state if str(k).startswith(PRIVATE_PREFIXES)]:
        del st.session_state[key]
    st.session_state.pop(NOTICES, None)
    st.session_state["lock_reason"] = reason


def request_refresh() -> None:
    """Ask for one full rerun as soon as this script run has ended.

    For a run that Streamlit ends itself (the chat's Stop button): nothing after the
    stop runs, so refresh_watch, at its next tick, redraws the page from what is stored.
    Kept outside st.session_state, which a stopped run can no longer write (each write
    is a yield point that raises the stop again).
    """
    ctx = get_script_run_ctx()
    if ctx is not None:
        REFRESH_WANTED.add(ctx.session_id)


@st.fragment(run_every=1)
def refresh_watch() -> None:
    """Rerun the whole page once when request_refresh() was called by an ended run."""
    ctx = get_script_run_ctx()
    if ctx is not None and ctx.session_id in REFRESH_WANTED:
        REFRESH_WANTED.discard(ctx.session_id)
        st.rerun(scope="app")


@st.fragment(run_every=15)
def idle_lock_watch() -> None:
    """Lock an idle session even while nobody clicks (this check is not activity)."""
    if st.session_state.get(KEY) is not None and unlocked(touch=False) is None:
        st.rerun(scope="app")
