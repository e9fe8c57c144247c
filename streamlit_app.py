"""The router: builds the pages with st.navigation and holds no business logic.

Until this browser session has unlocked the vault, every address shows the unlock page
(the other pages' code is never passed to st.navigation, so it cannot be reached, even
by URL); after unlocking, the page that was asked for opens. Every page's render (and
the notices shown here) is wrapped in ui.guard.guarded, so no error reaches Streamlit's
generic exception box. The one
st.cache_resource object (appliance.ui.services) holds the library, its drop-in watcher,
the engine host and the vault's settings; it is shared by every browser session and
thread-safe. The unlocked key lives only in st.session_state.
"""

from __future__ import annotations

import functools
import os

from appliance.offline import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)

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
from appliance.ui.guard import guarded

st.set_page_config(page_title="Offline LLM Switcher", layout="wide")

# (render, title, url_path). No page icons: Material icons make the browser fetch the
# favicon from fonts.gstatic.com, and emoji need an emoji font the box may not have.
PAGES = (
    (chat_page.render, "Chat", "chat"),
    (library_page.render, "Library", "library"),
    (import_page.render, "Import", "import"),
    (settings_page.render, "Settings", "settings"),
)

if session.unlocked() is None:
    # Locked: every page's address is known, so a reload or a link (/library) is not
    # "Page not found", but each shows the unlock page. Once unlocked, the rerun lands
    # on the page that was asked for.
    pages = [
        st.Page(unlock_page.render, title="Unlock", url_path="unlock", default=True),
        *(st.Page(functools.partial(unlock_page.render, title), title=title,
                  url_path=path, visibility="hidden") for _, title, path in PAGES),
    ]  # fmt: skip
    position = "hidden"
else:
    pages = [
        st.Page(render, title=title, url_path=path, default=path == "chat")
        for render, title, path in PAGES
    ]
    position = "sidebar"
    with st.sidebar:
        engine_controls.active_model_panel()
        session.idle_lock_watch()
        session.refresh_watch()
navigation = st.navigation(pages, position=position)
if position == "sidebar":
    # What the unlock did or found, once, above whichever page the unlock lands on
    # (a deep link may land on the Library rather than the chat).
    guarded(session.show_unlock_notices)()
navigation.run()
