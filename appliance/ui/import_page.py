"""The import page: from a server-side path, by browser upload, and the drop-in folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from appliance import format as fmt
from appliance.capabilities import LOCAL_BACKENDS
from appliance.engine.remote import list_remote_models
from appliance.errors import ApplianceError
from appliance.library.importer import DuplicateModel, Upload, import_path
from appliance.library.inspect import inspect_model
from appliance.library.model_info import ModelInfo
from appliance.model_entry import ModelEntry
from appliance.ui import session
from appliance.ui.guard import guarded
from appliance.ui.services import services

MODES = {"copy": "Copy into models/", "link": "Hard link into models/", "in-place": "Use in place"}
INFER = "(infer from the file)"
IMPORTED = "import-done"  # what the last import from a path added, shown after its rerun


@guarded
def render() -> None:
    st.title("Import a model")
    path_tab, upload_tab, remote_tab = st.tabs(
        ["From a path on this machine", "Upload from the browser", "OpenAI-compatible server"]
    )
    with path_tab:
        _from_path()
    with upload_tab:
        _upload()
    with remote_tab:
        _remote()
    _drop_in_panel()


def _choices(key: str, info: Any | None) -> dict[str, Any]:
    """Name, backend and architecture, with the inferred values shown as defaults."""
    inferred = f" (inferred: {info.backend})" if info else ""
    cols = st.columns(3)
    name = cols[0].text_input("Display name", key=f"{key}-name", placeholder="from the file name")
    backend = cols[1].selectbox(
        f"Backend{inferred}", [INFER, *LOCAL_BACKENDS], key=f"{key}-backend"
    )
    arch_hint = f"inferred: {info.architecture}" if info else "from the header"
    arch = cols[2].text_input("Architecture", key=f"{key}-arch", placeholder=arch_hint)
    return {"name": name.strip() or None, "backend": None if backend == INFER else backend,
            "architecture": arch.strip() or None}  # fmt: skip


def _from_path() -> None:
    st.caption("Any size. Type the path of a .gguf file, a legacy GGML .bin, or a Hugging "
               "Face folder on the machine running this app.")  # fmt: skip
    done = st.session_state.pop(IMPORTED, None)
    if done:
        # The last import succeeded: the form starts afresh (set, not deleted, so the
        # browser is sent the empty values), and says what was added.
        st.session_state.update({"import-path": "", "import-name": "", "import-arch": "",
                                 "import-backend": INFER})  # fmt: skip
        st.success(done)
    raw = st.text_input("Path", key="import-path", placeholder="/media/usb/model.Q4_K_M.gguf")
    info = None
    if raw.strip():
        try:
            info = inspect_model(Path(raw.strip()).expanduser())
        except (ApplianceError, OSError) as exc:
            st.error(str(exc))
        else:
            show_info(info)
    mode = st.radio("How", list(MODES), format_func=MODES.get, horizontal=True, key="import-mode")
    options = _choices("import", info)
    source = Path(raw.strip()).expanduser()
    if st.button("Import", type="primary", disabled=info is None, key="import-go"):
        _import_from_path(source, mode, options, raw.strip())
    again = lambda: _import_from_path(source, mode, options, raw.strip(), True)  # noqa: E731
    _offer_existing("import", raw.strip(), again)


def _import_from_path(
    source: Path, mode: str, options: dict[str, Any], key: str, allow_duplicate: bool = False
) -> None:
    """Import with a progress bar; a duplicate is remembered and offered (see below)."""
    bar = st.progress(0.0, text="Starting…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0,
                     text=f"Copying {fmt.size(done)} of {fmt.size(total)}")  # fmt: skip

    try:
        entry = import_path(services().library, source, mode, progress=progress,
                            allow_duplicate=allow_duplicate, **options)  # fmt: skip
    except DuplicateModel as dup:
        bar.empty()
        _remember_duplicate("import", key, dup)
    except (ApplianceError, OSError) as exc:
        bar.empty()
        st.error(str(exc))
    else:
        bar.progress(1.0, text="Done")
        st.session_state[IMPORTED] = _imported_text(entry)
        st.rerun()  # redraws the form empty (its widgets exist in this run already)


def _remember_duplicate(kind: str, source: str, dup: DuplicateModel) -> None:
    """Keep a refused duplicate across reruns, so its buttons work."""
    st.session_state[f"{kind}-duplicate"] = {
        "source": source, "message": dup.fact, "id": dup.existing.id,
        "name": dup.existing.name, "hidden": dup.hidden,
    }  # fmt: skip


def _offer_existing(kind: str, source: str, second_copy: Callable[[], None]) -> None:
    """After a refused duplicate: use the existing entry, or import a second copy anyway."""
    dup = st.session_state.get(f"{kind}-duplicate")
    if dup is None or dup["source"] != source:
        return
    note = st.empty()
    note.warning(dup["message"])
    cols = st.columns(2)
    label = "Unhide and use it" if dup["hidden"] else "Use the existing entry"
    if cols[0].button(label, type="primary", key=f"{kind}-use-existing"):
        del st.session_state[f"{kind}-duplicate"]
        note.empty()
        _use_existing(dup)
    elif cols[1].button("Import a second copy anyway", key=f"{kind}-second-copy"):
        del st.session_state[f"{kind}-duplicate"]
        note.empty()
        second_copy()


def _use_existing(dup: dict[str, Any]) -> None:
    library = services().library
    try:
        entry = library.unhide(dup["id"]) if dup["hidden"] else library.get(dup["id"])
    except ApplianceError as exc:
        st.error(str(exc))
        return
    back = " It is back in the library." if dup["hidden"] else ""
    st.success(f"Using **{entry.name}** (id `{entry.id}`): nothing was copied.{back} "
               "Load it from the Library or the Chat page.")  # fmt: skip


def show_info(info: ModelInfo) -> None:
    """What the header says, before the user confirms."""
    meta = info.metadata
    st.success(
        f"**{meta.model_name or Path(info.path).name}** — {info.format}, {info.architecture} "
        f"({info.architecture_source}), {fmt.params(meta.parameters)} parameters, "
        f"{meta.quantization or meta.dtype or '—'}, context {meta.context_length or '—'}, "
        f"{fmt.size(info.size_bytes)}, chat template: {'yes' if meta.chat_template else 'no'}."
    )
    for note in meta.notes:
        st.caption(note)


def _imported_text(entry: ModelEntry) -> str:
    sha = entry.sha256 or "being computed in the background"
    return f"Added **{entry.name}** (id `{entry.id}`, {entry.backend}). sha256: `{sha}`"


def _imported(entry: ModelEntry) -> None:
    st.success(_imported_text(entry))


def _upload() -> None:
    limit = st.get_option("server.maxUploadSize")
    st.caption(f"Up to {limit} MB (server.maxUploadSize in .streamlit/config.toml). Larger "
               "models: copy them into models/ or import them from a path.")  # fmt: skip
    uploaded = st.file_uploader("Model file", type=["gguf", "bin", "safetensors"], key="upload")
    options = _choices("upload", None)
    if uploaded is None:
        return
    source = f"{uploaded.name} ({uploaded.size} bytes)"
    if st.button("Add uploaded file", type="primary", key="upload-go"):
        _store_upload(uploaded, options, source)
    _offer_existing("upload", source, lambda: _store_upload(uploaded, options, source, True))


def _store_upload(
    uploaded: Any, options: dict[str, Any], source: str, allow_duplicate: bool = False
) -> None:
    """Write the browser's file to disk in chunks, then check and register it."""
    bar = st.progress(0.0, text="Writing to disk…")
    uploaded.seek(0)
    try:
        with Upload(services().library, uploaded.name, uploaded.size) as upload:
            while chunk := uploaded.read(8 << 20):
                upload.write(chunk)
                bar.progress(upload.received / max(uploaded.size, 1))
            entry = upload.commit(allow_duplicate=allow_duplicate, **options)
    except DuplicateModel as dup:
        bar.empty()
        _remember_duplicate("upload", source, dup)
    except (ApplianceError, OSError) as exc:
        bar.empty()
        st.error(str(exc))
    else:
        _imported(entry)


def _remote() -> None:
    st.caption("A vLLM, llama.cpp server, Ollama or TGI server on your network. The API key, "
               "if any, is stored encrypted in the vault, never in the registry.")  # fmt: skip
    url = st.text_input("Base URL", key="remote-url", placeholder="http://10.0.0.5:8000/v1")
    api_key = st.text_input("API key (optional)", type="password", key="remote-key")
    if st.button("List its models", key="remote-list", disabled=not url.strip()):
        try:
            st.session_state["remote-models"] = list_remote_models(url.strip(), api_key or None)
        except ApplianceError as exc:
            st.session_state.pop("remote-models", None)
            st.error(str(exc))
    offered = st.session_state.get("remote-models")
    if offered is None:
        return
    if not offered:
        st.info("The server lists no models.")
        return
    chosen = st.multiselect("Models to add", offered, default=offered[:1], key="remote-pick")
    if st.button("Add to the library", type="primary", key="remote-add", disabled=not chosen):
        unlocked = session.unlocked()
        for model in chosen:
            try:
                entry = services().library.add_remote(url.strip(), model)
                if api_key and unlocked is not None:
                    unlocked.set_secret(entry.secret_name, api_key)
            except ApplianceError as exc:
                st.error(str(exc))
                return
            st.success(f"Added **{entry.name}** (id `{entry.id}`, openai).")


@st.fragment(run_every=2)
@guarded
def _drop_in_panel() -> None:
    st.subheader("Drop-in folder")
    watcher = services().watcher
    kind = "polling" if watcher.polling else "inotify"
    st.caption(f"Files copied into {services().library.paths.models} are registered by "
               f"themselves once the copy has finished ({kind}).")  # fmt: skip
    events = list(watcher.events)[-15:]
    if not events:
        st.caption("Nothing new since the app started.")
    for event in reversed(events):
        st.text(event.line())
