"""Load, switch and unload controls, and the always-visible active-model panel.

The panel says what the resident model is doing: for llama-server (parallel slots) how
many replies are generating of how many it serves at once and how many wait; for the
worker backends that it serves one reply at a time, so other sessions wait their turn.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from appliance import app_settings
from appliance.engine import HostStatus
from appliance.errors import ApplianceError
from appliance.model_entry import ModelEntry
from appliance.ui import session
from appliance.ui.guard import guarded
from appliance.ui.services import services
from appliance.vault import Unlocked

NOT_LOADABLE = {
    "missing": "The files of this model are missing. Put them back or remove the entry.",
    "damaged": "This model's file is damaged (the reason is above): it cannot be loaded. "
    "Put a good copy back or remove the entry.",
}
PANEL_SLOT = "active-model-slot"  # this run's placeholder of the sidebar panel
PHASES = {"idle": "No model loaded", "loading": "Loading…", "ready": "Ready",
          "generating": "Generating…", "unloading": "Unloading…", "error": "Error"}  # fmt: skip


def load_options() -> dict[str, Any]:
    """Threads, context (0 = the engine decides) and parallel slots from the app settings."""
    return app_settings.load_options()


def load_buttons(entry: ModelEntry) -> None:
    host = services().host
    status = host.status()
    resident = status.model_id == entry.id and status.phase in ("ready", "generating")
    if entry.status != "present" and not entry.is_remote:
        st.warning(NOT_LOADABLE.get(entry.status, NOT_LOADABLE["missing"]))
        return
    if resident:
        st.success(f"{entry.name} is loaded ({status.backend}, {status.n_threads} threads, "
                   f"context {status.context_length}).")  # fmt: skip
    label = "Reload" if resident else ("Switch to this model" if status.model_id else "Load")
    key = entry.id
    row = st.container(horizontal=True)  # buttons as wide as their labels, never cut
    clicked = row.button(label, type="primary", key=f"load-{key}", width="content")
    unload = resident and row.button("Unload", key=f"unload-{key}", width="content")
    if clicked and load(entry):
        st.rerun()
    if unload:
        with st.spinner("Unloading…"):
            host.unload()
        st.rerun()


def api_key(entry: ModelEntry, unlocked: Unlocked | None) -> str | None:
    """A remote model's API key from the unlocked vault (None: a local model, or none)."""
    if not entry.is_remote or unlocked is None:
        return None
    return unlocked.get_secret(entry.secret_name)


def load(entry: ModelEntry) -> bool:
    """Load (or switch to) entry with live progress; True when ready."""
    key = api_key(entry, session.unlocked())
    with st.status(f"Loading {entry.name}…", expanded=True) as box:
        try:
            services().host.load(entry.id, api_key=key, options=load_options(),
                                 progress=lambda text: box.write(text))  # fmt: skip
        except ApplianceError as exc:
            box.update(label=f"Could not load {entry.name}", state="error")
            st.error(str(exc))
            return False
        box.update(label=f"{entry.name} is ready.", state="complete", expanded=False)
    return True


@st.fragment(run_every=2)
@guarded
def active_model_panel() -> None:
    """The sidebar panel: which model is active, its backend, architecture and phase.

    It refreshes itself every 2 s; a streaming reply, during which fragments wait,
    redraws it through refresh_panel().
    """
    slot = st.empty()
    st.session_state[PANEL_SLOT] = slot
    _draw_panel(slot)


def refresh_panel() -> None:
    """Redraw this session's active-model panel now (from inside a long script run)."""
    slot = st.session_state.get(PANEL_SLOT)
    if slot is not None:
        _draw_panel(slot)


def _draw_panel(slot) -> None:
    status = services().host.status()
    detail = f" — {status.detail}" if status.detail else ""
    with slot.container():
        st.markdown("**Active model**")
        if status.model_id:
            st.markdown(f"{status.name}  \n`{status.backend}` · `{status.architecture}`")
        st.caption(f"{PHASES.get(status.phase, status.phase)}{detail}")
        load = occupancy(status)
        if load:
            st.caption(load)


ONE_AT_A_TIME = "This backend serves one reply at a time, so other sessions wait their turn."


def occupancy(status: HostStatus) -> str:
    """How busy the resident model is: '2 of 4 replies generating · 1 from the API · 1
    waiting' for llama-server; for a worker backend, that it serves one reply at a time ('' when no
    model is ready)."""
    if not status.model_id or status.phase not in ("ready", "generating"):
        return ""
    waiting = f" · {status.waiting} waiting" if status.waiting else ""
    api = f" · {status.api_running} from the API" if status.api_running else ""
    if status.runs_in == "server":
        noun = "reply" if status.capacity == 1 else "replies"
        return f"{status.running} of {status.capacity} {noun} generating{api}{waiting}"
    return ONE_AT_A_TIME + (f" {status.waiting} waiting." if status.waiting else "") + (
        " An API request is running." if status.api_running else "")  # fmt: skip
