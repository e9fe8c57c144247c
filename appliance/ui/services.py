"""The shared, process-wide objects the pages use (the one st.cache_resource).

Everything here is shared by every browser session and is thread-safe: the library
and its drop-in watcher, the engine host with its worker process, and the vault's
on-disk state (salt, KDF parameters, throttle counter). No key is ever kept here:
an unlocked vault lives in st.session_state (appliance.ui.session).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from appliance import app_settings
from appliance.engine import Host
from appliance.library.library import Library
from appliance.library.watcher import DropInWatcher
from appliance.vault import Vault


@dataclass
class Services:
    library: Library
    watcher: DropInWatcher
    host: Host
    vault: Vault


@st.cache_resource(show_spinner=False)
def services() -> Services:
    """Build the shared services once per server process."""
    library = Library()
    keep_alive = app_settings.load()["keep_alive_minutes"] * 60
    return Services(
        library=library,
        watcher=DropInWatcher(library).start(),
        host=Host(library, keep_alive_s=keep_alive),
        vault=Vault(library.paths),
    )
