"""The router: builds the pages with st.navigation and holds no business logic.

The one st.cache_resource object (appliance.ui.services) holds the library with its
drop-in watcher; it is shared by every browser session and thread-safe. Per-browser
state lives in st.session_state.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import streamlit as st

from appliance.ui import import_page, library_page

st.set_page_config(page_title="Offline LLM Switcher", layout="wide")
pages = [
    st.Page(
        library_page.render,
        title="Library",
        icon=":material/library_books:",
        url_path="library",
        default=True,
    ),
    st.Page(import_page.render, title="Import", icon=":material/download:", url_path="import"),
]
st.navigation(pages).run()
