"""The library page: every model with its header metadata, the hardware, and actions."""

from __future__ import annotations

from typing import Any

import streamlit as st

from appliance import format as fmt
from appliance import hardware
from appliance.errors import ApplianceError
from appliance.sampling import SETTINGS, Setting
from appliance.ui import engine_controls
from appliance.ui.services import services

FIT_ICON = {
    "fits": "🟢 fits",
    "tight": "🟡 tight",
    "won't fit": "🔴 won't fit",
    "remote": "🌐 remote",
}


def rows(
    entries: list[dict[str, Any]], hw: hardware.Hardware, conversations: dict[str, int]
) -> list[dict[str, Any]]:
    """The table's rows, one per model."""
    return [
        {
            "Name": e["name"],
            "Backend": e["backend"],
            "Architecture": e["architecture"],
            "Parameters": fmt.params(e["metadata"].get("parameters")),
            "Quantisation": e["metadata"].get("quantization") or "—",
            "Context": e["metadata"].get("context_length") or None,
            "Size": fmt.size(e["size_bytes"]),
            "Memory": hardware.fit(e, hw),
            "Status": e["status"],
            "Conversations": conversations.get(e["id"], 0),
            "Format": e["format"],
            "sha256": e["sha256"][:16] + "…" if e["sha256"] else "hashing…",
            "ID": e["id"],
        }
        for e in entries
    ]


def render() -> None:
    st.title("Model library")
    _hardware_panel(hardware.snapshot())
    entries = _table()
    _problems()
    if entries:
        _actions(entries)
    _hidden_models()


@st.fragment(run_every=3)
def _table() -> list[dict[str, Any]]:
    """The table refreshes by itself, so dropped-in models appear without a reload."""
    try:
        entries = services().library.entries()
    except ApplianceError as exc:
        st.error(str(exc))
        return []
    ids = [e["id"] for e in entries]
    if st.session_state.setdefault("library_ids", ids) != ids:
        st.session_state["library_ids"] = ids
        st.rerun(scope="app")  # the actions below list the models too
    if not entries:
        st.info("No models yet. Copy a .gguf file or a Hugging Face folder into models/, "
                "or use the Import page.")  # fmt: skip
        return []
    hw = hardware.snapshot()
    st.dataframe(rows(entries, hw, conversation_counts()), hide_index=True, width="stretch")
    return entries


@st.fragment(run_every=3)
def _problems() -> None:
    """Damaged models, and files in models/ that could not be added, with the reason."""
    library = services().library
    try:
        damaged = [e for e in library.entries() if e["status"] == "damaged"]
        rejected = library.rejected_drop_ins()
    except ApplianceError as exc:
        st.error(str(exc))
        return
    for e in damaged:
        where = e["path"] if e["external"] else f"models/{e['path']}"
        st.error(
            f"**{e['name']}** (`{e['id']}`) is damaged: {e['problem']} To fix it, put a good "
            f"copy at {where}, or remove the model."
        )
    if rejected:
        st.subheader("Files in models/ that were not added")
        for problem in rejected:
            st.warning(f"`{problem.path}`: {problem.reason}")


def _hidden_models() -> None:
    """Models removed with their files kept; each can be put back."""
    try:
        hidden = services().library.hidden()
    except ApplianceError as exc:
        st.error(str(exc))
        return
    if not hidden:
        return
    st.subheader("Hidden models")
    st.caption("Removed from the library with their files kept. They are not added again "
               "until you unhide them; their chat history is kept.")  # fmt: skip
    for model in hidden:
        entry = model.entry
        cols = st.columns([5, 1])
        cols[0].markdown(
            f"**{entry['name']}** (`{entry['id']}`) — {entry['path']}, "
            f"{fmt.size(entry['size_bytes'])}, hidden since {model.hidden_at}; "
            f"files: {ON_DISK[model.on_disk]}"
        )
        if cols[1].button("Unhide", key=f"unhide-{entry['id']}"):
            _run(lambda e=entry: services().library.unhide(e["id"]),
                 f"{entry['name']} is back in the library.")  # fmt: skip


ON_DISK = {
    "unchanged": "still there",
    "changed": "changed since (read again when unhidden)",
    "missing": "no longer there",
}


def conversation_counts() -> dict[str, int]:
    """Conversations per model id, from the unlocked vault of this browser session."""
    unlocked = st.session_state.get("vault")
    if unlocked is None:
        return {}
    history = unlocked.history
    return {model_id: history.count(model_id) for model_id in history.model_ids()}


def _hardware_panel(hw: hardware.Hardware) -> None:
    cols = st.columns(4)
    cols[0].metric("RAM free", fmt.size(hw.available_ram), help=f"of {fmt.size(hw.total_ram)}")
    cols[1].metric("RAM total", fmt.size(hw.total_ram))
    cols[2].metric("CPU cores", f"{hw.physical_cores} physical", help=f"{hw.logical_cores} logical")
    if hw.gpus:
        gpu = hw.gpus[0]
        cols[3].metric(
            "VRAM free", fmt.size(gpu.free_bytes), help=f"{gpu.name}, {fmt.size(gpu.total_bytes)}"
        )
    else:
        cols[3].metric("GPU", "none", help="No NVIDIA GPU found; models run on the CPU.")


def _actions(entries: list[dict[str, Any]]) -> None:
    st.subheader("Manage a model")
    names = {e["id"]: f"{e['name']} ({e['id']})" for e in entries}
    model_id = st.selectbox("Model", list(names), format_func=names.get, key="library_model")
    entry = next(e for e in entries if e["id"] == model_id)
    engine_controls.load_buttons(entry)
    _rename(entry)
    _defaults(entry)
    _remove(entry)


def _rename(entry: dict[str, Any]) -> None:
    with st.form(f"rename-{entry['id']}", border=False):
        name = st.text_input("Display name", value=entry["name"], max_chars=200)
        if st.form_submit_button("Rename"):
            _run(lambda: services().library.rename(entry["id"], name), f"Renamed to {name!r}.")


def _defaults(entry: dict[str, Any]) -> None:
    title = "Chat defaults for this model (system prompt and sampling)"
    with st.expander(title), st.form(f"defaults-{entry['id']}"):
        values = setting_inputs(entry["defaults"], key=f"def-{entry['id']}")
        if st.form_submit_button("Save defaults"):
            _run(lambda: services().library.set_defaults(entry["id"], values), "Saved.")


def setting_inputs(current: dict[str, Any], key: str) -> dict[str, Any]:
    """One input per sampling setting, bounded by its declaration; returns the values."""
    return {s.name: _setting_input(s, current[s.name], f"{key}-{s.name}") for s in SETTINGS}


def _setting_input(setting: Setting, value: Any, key: str) -> Any:
    label = setting.name.replace("_", " ").capitalize()
    low, high, helptext = setting.low, setting.high, setting.description
    if setting.kind is str:
        return st.text_area(label, value, help=helptext, key=key, max_chars=int(high))
    if setting.kind is float:
        return st.slider(label, float(low), float(high), float(value), step=0.05, help=helptext,
                         key=key)  # fmt: skip
    return st.number_input(label, int(low), int(high), int(value), help=helptext, key=key)


def _remove(entry: dict[str, Any]) -> None:
    with st.expander("Remove this model"):
        st.write("Removing takes the model out of the library. Its chat history is kept. "
                 "Unless you delete its files, they stay in place and the model is hidden: "
                 "it is not added again until you unhide it (under Hidden models).")  # fmt: skip
        delete = st.checkbox(
            "Also delete its files from models/", key=f"rm-files-{entry['id']}",
            disabled=entry["external"],
            help="Files registered in place, outside models/, are never deleted.",
        )  # fmt: skip
        confirm = st.text_input(
            f"Type the id `{entry['id']}` to confirm", key=f"rm-confirm-{entry['id']}"
        )
        if st.button(
            "Remove", type="primary", disabled=confirm != entry["id"], key=f"rm-{entry['id']}"
        ):
            _run(lambda: services().library.remove(entry["id"], delete_files=delete),
                 _removed_message(entry, delete))  # fmt: skip


def _removed_message(entry: dict[str, Any], deleted: bool) -> str:
    """What Remove did, for the toast."""
    if deleted:
        return f"Removed {entry['name']} and its files from the library."
    if entry["format"] == "openai":
        return f"Removed {entry['name']} from the library."
    return (f"Removed {entry['name']} from the library. Its files stay in place and it is "
            "hidden, so it is not added again; Unhide brings it back.")  # fmt: skip


def _run(action, success: str) -> None:
    try:
        action()
    except ApplianceError as exc:
        st.error(str(exc))
    else:
        st.toast(success)
        st.rerun()
