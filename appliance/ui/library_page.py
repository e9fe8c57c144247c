"""The library page: every model with its header metadata, the hardware, and actions.

The Memory column estimates what a model needs with the app settings: the context per
slot (Settings, else the engine's default for llama.cpp, else the model's own) and, for
a llama.cpp model, one context per parallel slot. The hardware panel says which of
llama.cpp's CPU kernels are in use: those the loaded GGUF model's server picked, else
the ones the build ships (the best one is picked at load), or that it is not built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import streamlit as st

from appliance import app_settings, hardware
from appliance import format as fmt
from appliance.engine import HostStatus
from appliance.engine.llama_server import (
    ServerUnavailable,
    build_info,
    cpu_variants,
    find_binary,
)
from appliance.engine.options import DEFAULT_CTX_CAP
from appliance.errors import ApplianceError
from appliance.model_entry import ModelEntry
from appliance.sampling import SETTINGS, Setting
from appliance.ui import engine_controls
from appliance.ui.guard import guarded
from appliance.ui.services import services


def rows(
    entries: list[ModelEntry],
    hw: hardware.Hardware,
    conversations: dict[str, int],
    active: HostStatus | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The table's rows, one per model; `active` marks the resident model; `settings`
    (the app settings; None: their defaults) size the memory estimate."""
    settings = settings or app_settings.check({}, "defaults")
    return [
        {
            "Name": e.name,
            "State": _state(e, active),
            "ID": e.id,
            "Backend": e.backend,
            "Model": _model_summary(e),
            "Context": e.metadata.context_length or None,
            "Size": fmt.size(e.size_bytes),
            "Memory": hardware.fit(e, hw, *estimate(e, settings)),
            "Chats": conversations.get(e.id, 0),
            "sha256": _sha_cell(e),
        }
        for e in entries
    ]


def estimate(entry: ModelEntry, settings: Mapping[str, Any]) -> tuple[int | None, int]:
    """(context per slot, slots) the memory estimate assumes for entry, as a load would
    use them: the settings' context, else for llama.cpp the engine's default cap (None:
    the model's own); llama.cpp reserves one context per parallel slot."""
    n_ctx = settings["n_ctx"] or None
    if entry.backend != "llama.cpp":
        return n_ctx, 1
    trained = entry.metadata.context_length or DEFAULT_CTX_CAP
    return n_ctx or min(trained, DEFAULT_CTX_CAP), settings["parallel_slots"]


def _sha_cell(entry: ModelEntry) -> str:
    """A remote model has no file to hash; a missing or damaged one is not being hashed."""
    if entry.sha256:
        return entry.sha256[:10] + "…"
    if entry.is_remote:
        return "remote"
    return "hashing…" if entry.status == "present" else "—"


def _model_summary(entry: ModelEntry) -> str:
    meta = entry.metadata
    quant = meta.quantization or meta.dtype or "—"
    return f"{entry.architecture or '?'} · {fmt.params(meta.parameters)} · {quant}"


def _state(entry: ModelEntry, active: HostStatus | None) -> str:
    """'● loaded' (or replying, loading) for the resident model, else the file's status."""
    if active is not None and active.model_id == entry.id:
        return {"generating": "● replying", "loading": "○ loading"}.get(active.phase, "● loaded")
    return entry.status


SELECTED = "library-selected"  # the model chosen under "Manage a model"

# Sized so that every column, sha256 and id included, is in view at 1400 px (the table
# gets about 940 px beside the sidebar); the canvas grid would scroll sideways otherwise.
COLUMNS = {
    "Name": st.column_config.TextColumn(width=145, pinned=True),
    "State": st.column_config.TextColumn(
        width=75,
        help="● loaded: the model the engine holds now. Otherwise present, "
        "missing or damaged (the files on disk).",
    ),
    "ID": st.column_config.TextColumn(width=180, help="Used by the CLI and the API."),
    "Backend": st.column_config.TextColumn(width=75),
    "Model": st.column_config.TextColumn(
        width=140, help="Architecture · parameters · quantisation, from the file's header."
    ),
    "Context": st.column_config.NumberColumn(width=55, help="Trained context length."),
    "Size": st.column_config.TextColumn(width=68),
    "Memory": st.column_config.TextColumn(
        width=62,
        help="Does it fit in the free memory? Weights plus context memory; a GGUF model "
        "reserves one context per parallel slot (Settings).",
    ),
    "Chats": st.column_config.NumberColumn(width=40, help="Conversations in the history."),
    "sha256": st.column_config.TextColumn(width=95, help="The first 10 hex digits."),
}


@guarded
def render() -> None:
    st.title("Model library")
    _hardware_panel(hardware.snapshot())
    entries = _table()
    _problems()
    if entries:
        _actions(entries)
    _hidden_models()


@st.fragment(run_every=3)
@guarded
def _table() -> list[ModelEntry]:
    """The table refreshes by itself, so dropped-in models appear without a reload."""
    try:
        entries = services().library.entries()
    except ApplianceError as exc:
        st.error(str(exc))
        return []
    ids = [e.id for e in entries]
    if st.session_state.setdefault("library_ids", ids) != ids:
        st.session_state["library_ids"] = ids
        st.rerun(scope="app")  # the actions below list the models too
    if not entries:
        st.info("No models yet. Copy a .gguf file or a Hugging Face folder into models/, "
                "or use the Import page.")  # fmt: skip
        return []
    hw = hardware.snapshot()
    try:
        settings = app_settings.load()
    except ApplianceError:  # the Settings page says what is wrong with the file
        settings = None
    table = rows(entries, hw, conversation_counts(), services().host.status(), settings)
    st.dataframe(table, hide_index=True, width="stretch", column_config=COLUMNS)
    return entries


@st.fragment(run_every=3)
@guarded
def _problems() -> None:
    """Damaged models, and files in models/ that could not be added, with the reason."""
    library = services().library
    try:
        damaged = [e for e in library.entries() if e.status == "damaged"]
        rejected = library.rejected_drop_ins()
    except ApplianceError as exc:
        st.error(str(exc))
        return
    for e in damaged:
        st.error(
            f"**{e.name}** (`{e.id}`) is damaged: {e.problem} To fix it, put a good copy at "
            f"{e.location}, or remove the model."
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
            f"**{entry.name}** (`{entry.id}`) — {entry.path}, {fmt.size(entry.size_bytes)}, "
            f"hidden since {model.hidden_at}; files: {ON_DISK[model.on_disk]}"
        )
        if cols[1].button("Unhide", key=f"unhide-{entry.id}"):
            _run(lambda e=entry: services().library.unhide(e.id),
                 f"{entry.name} is back in the library.")  # fmt: skip


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
    st.caption(llama_cpu_line(services().host.status()))


def llama_cpu_line(status: HostStatus) -> str:
    """Which llama.cpp CPU kernels run GGUF models: the loaded server's, else what the
    build ships; a missing build is said, not raised."""
    if status.runs_in == "server" and status.cpu_variant:
        return (f"llama.cpp CPU kernels: **{status.cpu_variant}**, picked for this CPU when "
                f"{status.name} was loaded.")  # fmt: skip
    try:
        binary = find_binary()
    except ServerUnavailable as exc:
        return f"llama.cpp CPU kernels: none, so GGUF models cannot be loaded. {exc}"
    variants = cpu_variants(binary)
    if not variants:
        flavour = build_info(binary).get("flavour")
        build = f"this {flavour} build" if flavour else "this build"
        return f"llama.cpp CPU kernels: compiled into {build} of llama-server (no variants)."
    return (f"llama.cpp CPU kernels shipped: {', '.join(variants)}. The best one this CPU "
            "supports is picked when a GGUF model is loaded.")  # fmt: skip


def _actions(entries: list[ModelEntry]) -> None:
    st.subheader("Manage a model")
    names = {e.id: f"{e.name} ({e.id})" for e in entries}
    ids = list(names)
    chosen = st.session_state.get(SELECTED)
    # The key carries the labels, so a rename draws the selector anew: its browser side
    # keeps showing the old label for an unchanged value otherwise.
    labels = hashlib.sha256("\n".join(names.values()).encode()).hexdigest()[:12]
    model_id = st.selectbox("Model", ids, index=ids.index(chosen) if chosen in ids else 0,
                            format_func=names.get, key=f"library-model-{labels}")  # fmt: skip
    st.session_state[SELECTED] = model_id
    entry = next(e for e in entries if e.id == model_id)
    engine_controls.load_buttons(entry)
    _rename(entry)
    _defaults(entry)
    _remove(entry)


def _rename(entry: ModelEntry) -> None:
    with st.form(f"rename-{entry.id}", border=False):
        name = st.text_input("Display name", value=entry.name, max_chars=200)
        if st.form_submit_button("Rename"):
            _run(lambda: services().library.rename(entry.id, name), f"Renamed to {name!r}.")


def _defaults(entry: ModelEntry) -> None:
    title = "Chat defaults for this model (system prompt and sampling)"
    with st.expander(title), st.form(f"defaults-{entry.id}"):
        values = setting_inputs(entry.defaults, key=f"def-{entry.id}")
        if st.form_submit_button("Save defaults"):
            _run(lambda: services().library.set_defaults(entry.id, values), "Saved.")


def setting_inputs(current: Mapping[str, Any], key: str, persist: bool = False) -> dict[str, Any]:
    """One input per sampling setting, bounded by its declaration; returns the values.

    `current` fills an input only while its key holds no value yet. With `persist`, the
    values outlive a visit to another page (for the rest of the browser session).
    """
    return {
        s.name: _setting_input(s, current[s.name], f"{key}-{s.name}", persist) for s in SETTINGS
    }


def _setting_input(setting: Setting, value: Any, key: str, persist: bool) -> Any:
    label = setting.name.replace("_", " ").capitalize()
    low, high = setting.low, setting.high
    common: dict[str, Any] = {"help": setting.description, "key": key}
    if persist:
        common["persist_state"] = "session"
    if key not in st.session_state:  # else the kept value (Session State) is shown
        kind = setting.kind
        common["value"] = kind(value)
    if setting.kind is str:
        return st.text_area(label, max_chars=int(high), **common)
    if setting.kind is float:
        return st.slider(label, float(low), float(high), step=0.05, **common)
    return st.number_input(label, int(low), int(high), **common)


def _remove(entry: ModelEntry) -> None:
    """A form: the typed id and the tick are sent with the Remove click itself, so the
    button works without pressing Enter first; a wrong id is refused with a message."""
    model_id = entry.id
    with st.expander("Remove this model"), st.form(f"rm-form-{model_id}", border=False):
        st.write("Removing takes the model out of the library. Its chat history is kept. "
                 "Unless you delete its files, they stay in place and the model is hidden: "
                 "it is not added again until you unhide it (under Hidden models).")  # fmt: skip
        delete = st.checkbox(
            "Also delete its files from models/", key=f"rm-files-{model_id}",
            disabled=entry.external,
            help="Files registered in place, outside models/, are never deleted.",
        )  # fmt: skip
        confirm = st.text_input(
            f"Type the id `{model_id}` to confirm", key=f"rm-confirm-{model_id}"
        )
        if st.form_submit_button("Remove", type="primary", key=f"rm-{model_id}"):
            if confirm.strip() != model_id:
                st.error(f"Type the id `{model_id}` exactly to confirm; nothing was removed.")
                return
            _run(lambda: services().library.remove(model_id, delete_files=delete),
                 _removed_message(entry, delete))  # fmt: skip


def _removed_message(entry: ModelEntry, deleted: bool) -> str:
    """What Remove did, for the toast."""
    if deleted:
        return f"Removed {entry.name} and its files from the library."
    if entry.is_remote:
        return f"Removed {entry.name} from the library."
    return (f"Removed {entry.name} from the library. Its files stay in place and it is "
            "hidden, so it is not added again; Unhide brings it back.")  # fmt: skip


def _run(action, success: str) -> None:
    try:
        action()
    except ApplianceError as exc:
        st.error(str(exc))
    else:
        st.toast(success)
        st.rerun()
