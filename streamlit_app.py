"""The router: builds the pages with st.navigation and holds no business logic.

Until this browser session has unlocked the vault, only the unlock page exists (pages
not passed to st.navigation cannot be reached, even by URL). The one st.cache_resource
object (appliance.ui.services) holds the library, its drop-in watcher, the engine host
and the vault's settings; it is shared by every browser session and thread-safe. The
unlocked key lives only in st.session_state.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import streamlit as st

from appliance.ui import (
    chat_page,
    engine_controls,
    import_page,
    library_page,
    session,
    settings_page,
    unlock_page,
)

st.set_page_config(page_title="Offline LLM Switcher", layout="wide")

if session.unlocked() is None:
    pages = [
        st.Page(unlock_page.render, title="Unlock", icon=":material/lock_open:", url_path="unlock")
    ]
else:
    pages = [
        st.Page(chat_page.render, title="Chat", icon=":material/chat:", url_path="chat",
                default=True),
        st.Page(library_page.render, title="Library", icon=":material/library_books:",
                url_path="library"),
        st.Page(import_page.render, title="Import", icon=":material/download:", url_path="import"),
        st.Page(settings_page.render, title="Settings", icon=":material/settings:",
                url_path="settings"),
    ]  # fmt: skip
    with st.sidebar:
        engine_controls.active_model_panel()
        session.idle_lock_watch()
st.navigation(pages).run()
