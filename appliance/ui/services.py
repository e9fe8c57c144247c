"""The shared, process-wide objects the pages use (one st.cache_resource)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from appliance.library.library import Library
from appliance.library.watcher import DropInWatcher


@dataclass
class Services:
    library: Library
    watcher: DropInWatcher


@st.cache_resource(show_spinner=False)
def services() -> Services:
    """The library and its running drop-in watcher, shared by every browser session."""
    library = Library()
    return Services(library, DropInWatcher(library).start())
