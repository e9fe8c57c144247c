"""The shared, process-wide objects the pages use (the one st.cache_resource).

Everything here is shared by every browser session and is thread-safe: the library
and its drop-in watcher, the engine host with its model process, and the vault's
on-disk state (salt, KDF parameters, throttle counter). No key is ever kept here:
an unlocked vault lives in st.session_state (appliance.ui.session).

The host starts with the app settings' keep-alive and switch rule, and reads its default
load options (threads, context, parallel slots) from the settings at each load, so a
reload after the keep-alive uses what was saved last; the settings page pushes the
keep-alive and the switch rule into the running host when they are saved. A broken
config/app.json does not stop the app: the host starts with the defaults, the Settings
page names the problem, and a load says it too.
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
    try:
        settings = app_settings.load()
    except app_settings.SettingsFileError:  # the Settings page shows the problem
        settings = app_settings.check({}, "defaults")
    host = Host(
        library,
        keep_alive_s=settings["keep_alive_minutes"] * 60,
        switch_rule=settings["switch_rule"],
        default_options=app_settings.load_options,
    )
    return Services(
        library=library,
        watcher=DropInWatcher(library).start(),
        host=host,
        vault=Vault(library.paths),
    )
