"""The library page: every registered model with the metadata read from its header."""

from __future__ import annotations

from typing import Any

import streamlit as st

from appliance.errors import ApplianceError
from appliance.ui.services import services


def _params(n: int | None) -> str:
    if not n:
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows, one per model."""
    return [
        {
            "Name": e["name"],
            "ID": e["id"],
            "Format": e["format"],
            "Backend": e["backend"],
            "Architecture": e["architecture"],
            "Parameters": _params(e["metadata"].get("parameters")),
            "Quantisation": e["metadata"].get("quantization") or "—",
            "Context": e["metadata"].get("context_length") or None,
            "Size (MiB)": round(e["size_bytes"] / (1 << 20), 1),
            "sha256": e["sha256"] or "hashing…",
            "Status": e["status"],
        }
        for e in entries
    ]


def render() -> None:
    st.title("Model library")
    svc = services()
    try:
        entries = svc.library.entries()
    except ApplianceError as exc:
        st.error(str(exc))
        return
    if not entries:
        st.info("No models yet. Copy a .gguf file or a Hugging Face folder into models/.")
    else:
        st.dataframe(rows(entries), hide_index=True, use_container_width=True)
    _watcher_panel(svc)


@st.fragment(run_every=2)
def _watcher_panel(svc) -> None:
    st.subheader("Drop-in folder")
    kind = "polling" if svc.watcher.polling else "inotify"
    st.caption(f"Watching {svc.library.paths.models} ({kind}).")
    events = list(svc.watcher.events)[-10:]
    if not events:
        st.caption("Nothing new since the app started.")
    for event in reversed(events):
        st.text(event.line())
