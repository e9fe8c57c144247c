"""AppTest for the library and import pages: actions, confirmations and error states."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from appliance.library.library import Library
from appliance.paths import APP_ROOT
from appliance.ui.services import services
from tests.helpers import write_gguf


def _page(name: str) -> str:
    return str(APP_ROOT / "appliance" / "ui" / f"{name}_page.py")


@pytest.fixture
def run_page(appliance_home: Path) -> Iterator:
    """AppTest of one page's render(), with fresh shared services."""
    st.cache_resource.clear()
    apps: list[AppTest] = []

    def make(name: str) -> AppTest:
        script = f"from appliance.ui import {name}_page as page\npage.render()\n"
        app = AppTest.from_string(script, default_timeout=30)
        apps.append(app)
        return app.run()

    yield make
    services().watcher.stop()
    st.cache_resource.clear()


def _settled(path: Path) -> Path:
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def test_rename_and_defaults(run_page, appliance_home: Path) -> None:
    _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    app = run_page("library")
    assert not app.exception
    app.text_input[0].set_value("Tiny renamed")
    next(b for b in app.button if b.label == "Rename").click().run()
    assert Library().get("tiny").name == "Tiny renamed"
    slider = next(s for s in app.slider if s.label == "Temperature")
    slider.set_value(0.0)
    next(b for b in app.button if b.label == "Save defaults").click().run()
    assert Library().get("tiny").defaults["temperature"] == 0.0


def test_import_from_path_with_inferred_defaults(run_page, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "outside.gguf", "qwen2", name="Outside")
    app = run_page("import")
    app.text_input(key="import-path").input(str(source)).run()
    assert "**Outside** — gguf, qwen2 (metadata)" in app.success[0].value
    assert app.selectbox(key="import-backend").label == "Backend (inferred: llama.cpp)"
    app.button(key="import-go").click().run()
    assert not app.error
    assert "Added **outside** (id `outside`, llama.cpp). sha256: `" in app.success[-1].value
    assert Library().get("outside").path == "outside.gguf"


def test_the_path_form_starts_afresh_after_an_import(run_page, tmp_path: Path) -> None:
    """The display name and backend of one import were kept for the next one."""
    source = write_gguf(tmp_path / "outside.gguf", "qwen2", name="Outside")
    app = run_page("import")
    app.text_input(key="import-path").input(str(source)).run()
    app.text_input(key="import-name").input("Outside model")
    app.text_input(key="import-arch").input("qwen2")
    app.selectbox(key="import-backend").select("llama.cpp").run()
    app.button(key="import-go").click().run()
    assert not app.error
    assert app.success[0].value.startswith(
        "Added **Outside model** (id `outside-model`, llama.cpp)."
    )
    for key in ("import-path", "import-name", "import-arch"):
        widget = app.text_input(key=key)
        assert widget.value == ""
        assert widget.proto.set_value  # the browser is sent the empty value too
    assert app.selectbox(key="import-backend").value == "(infer from the file)"
    assert app.selectbox(key="import-backend").proto.set_value


def test_import_bad_path_and_bad_file(run_page, tmp_path: Path) -> None:
    app = run_page("import")
    app.text_input(key="import-path").input("/nowhere/model.gguf").run()
    assert app.error[0].value == "/nowhere/model.gguf does not exist. Check the path and try again."
    assert app.button(key="import-go").disabled
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(100))
    app.text_input(key="import-path").input(str(junk)).run()
    assert app.error[0].value == "junk.gguf: This file does not start with the GGUF magic number."


def test_import_incompatible_backend_is_explained(run_page, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "m.gguf")
    app = run_page("import")
    app.text_input(key="import-path").input(str(source)).run()
    app.selectbox(key="import-backend").select("transformers").run()
    app.button(key="import-go").click().run()
    assert app.error[0].value == (
        "The transformers backend cannot load gguf models; use llama.cpp or ctransformers."
    )
    assert Library().entries() == []


def test_browser_upload_is_written_and_registered(run_page, tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "up.gguf", name="Up").read_bytes()
    app = run_page("import")
    app.file_uploader(key="upload").set_value(("up.gguf", data, "application/octet-stream")).run()
    app.button(key="upload-go").click().run()
    assert not app.error, app.error
    entry = Library().get("up")
    assert entry.path == "up.gguf" and entry.sha256


def test_browser_upload_of_junk_is_refused(run_page, appliance_home: Path) -> None:
    app = run_page("import")
    app.file_uploader(key="upload").set_value(
        ("junk.gguf", b"GGUF" + b"\1" * 40, "application/octet-stream")
    ).run()
    app.button(key="upload-go").click().run()
    assert app.error[0].value.startswith("junk.gguf: ")
    files = sorted(p.name for p in (appliance_home / "models").iterdir())
    assert files == [".registry.lock", "registry.json"]
    assert Library().entries() == []


def _models(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith("."))


def test_hidden_models_are_listed_with_an_unhide_button(run_page, appliance_home: Path) -> None:
    model = _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    data = model.read_bytes()
    app = run_page("library")
    Library().remove("tiny")  # what Remove does with "delete files" unticked
    # Neither the running watcher nor the scan of the next start brings it back.
    Library().scan()
    time.sleep(2.0)
    app.run()
    assert Library().entries() == []
    assert model.read_bytes() == data
    entry = Library().hidden()[0]
    listed = [m.value for m in app.markdown if "hidden since" in m.value]
    assert listed == [
        f"**tiny** (`tiny`) — tiny.gguf, 2.6 KiB, hidden since {entry.hidden_at}; files: still there"
    ]
    app.button(key="unhide-tiny").click().run()
    assert Library().get("tiny").status == "present"
    assert not [b for b in app.button if b.key == "unhide-tiny"]
    assert model.read_bytes() == data


def test_remove_on_the_page_keeps_the_files_and_hides(run_page, appliance_home: Path) -> None:
    model = _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    data = model.read_bytes()
    app = run_page("library")
    app.text_input(key="rm-confirm-tiny").input("tiny")  # sent with the click (a form)
    app.button(key="rm-tiny").click().run()
    assert not app.exception and not app.error
    assert Library().entries() == []
    assert [h.entry.id for h in Library().hidden()] == ["tiny"]
    assert Library().scan().hidden == ["tiny.gguf"]
    assert model.read_bytes() == data


def test_damaged_models_and_rejected_drop_ins_are_listed(run_page, appliance_home: Path) -> None:
    models = appliance_home / "models"
    library = Library()
    library.register(write_gguf(models / "cut.gguf"))
    library.hasher.join()
    cut = (models / "cut.gguf").read_bytes()[:-100]
    (models / "cut.gguf").write_bytes(cut)
    _settled(models / "cut.gguf")
    (models / "notes.gguf").write_text("not a model")
    _settled(models / "notes.gguf")
    app = run_page("library")
    assert not app.exception
    assert [e.value for e in app.error] == [
        "**cut** (`cut`) is damaged: Tensor 'output.weight' ends at byte 2,688 but the file "
        "has only 2,588 bytes: the file is truncated or still being copied. Copy it again from "
        "the original. To fix it, put a good copy at models/cut.gguf, or remove the model."
    ]
    assert [w.value for w in app.warning if "notes" in w.value] == [
        "`notes.gguf`: This file does not start with the GGUF magic number."
    ]
    assert (models / "cut.gguf").read_bytes() == cut
    assert (models / "notes.gguf").read_text() == "not a model"


def test_duplicate_import_offers_the_existing_entry(
    run_page, tmp_path: Path, appliance_home: Path
) -> None:
    source = write_gguf(tmp_path / "outside.gguf", name="Outside")
    app = run_page("import")
    app.text_input(key="import-path").input(str(source)).run()
    app.button(key="import-go").click().run()
    sha = Library().get("outside").sha256
    (tmp_path / "b").mkdir()
    same = tmp_path / "b" / "again.gguf"
    same.write_bytes(source.read_bytes())
    app.text_input(key="import-path").input(str(same)).run()
    app.button(key="import-go").click().run()
    assert [w.value for w in app.warning] == [
        f"again.gguf is already in the library as outside (id outside): same sha256 "
        f"{sha[:16]}…. Nothing was imported."
    ]
    assert _models(appliance_home) == ["outside.gguf", "registry.json"]
    app.button(key="import-use-existing").click().run()
    assert app.success[-1].value == (
        "Using **outside** (id `outside`): nothing was copied. Load it from the Library or the "
        "Chat page."
    )
    assert [e.id for e in Library().entries()] == ["outside"]
    # Asked for, a second copy is made.
    app.button(key="import-go").click().run()
    app.button(key="import-second-copy").click().run()
    assert app.success[-1].value.startswith("Added **again** (id `again`, llama.cpp).")
    assert _models(appliance_home) == ["again.gguf", "outside.gguf", "registry.json"]


def test_duplicate_upload_offers_the_existing_entry(run_page, tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "up.gguf", name="Up").read_bytes()
    app = run_page("import")
    app.file_uploader(key="upload").set_value(("up.gguf", data, "application/octet-stream")).run()
    app.button(key="upload-go").click().run()
    sha = Library().get("up").sha256
    app.file_uploader(key="upload").set_value(("copy.gguf", data, "application/octet-stream"))
    app.run()
    app.button(key="upload-go").click().run()
    assert [w.value for w in app.warning] == [
        f"copy.gguf is already in the library as up (id up): same sha256 {sha[:16]}…. "
        "Nothing was imported."
    ]
    app.button(key="upload-use-existing").click().run()
    assert app.success[-1].value.startswith("Using **up** (id `up`): nothing was copied.")
    assert [e.id for e in Library().entries()] == ["up"]


# ---- issue 10.8 and 10.6: the library as a new user finds it ----------------------------


def test_remove_works_on_the_first_click_and_checks_the_id(run_page, appliance_home: Path) -> None:
    """The typed id is sent with the Remove click (a form): no Enter needed first."""
    model = _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    app = run_page("library")
    assert not app.button(key="rm-tiny").disabled
    app.text_input(key="rm-confirm-tiny").input("tin")
    app.button(key="rm-tiny").click().run()
    assert app.error[0].value == "Type the id `tiny` exactly to confirm; nothing was removed."
    assert [e.id for e in Library().entries()] == ["tiny"]
    app.checkbox(key="rm-files-tiny").check()
    app.text_input(key="rm-confirm-tiny").input("tiny")  # no run: as typed, then the click
    app.button(key="rm-tiny").click().run()
    assert not app.error
    assert Library().entries() == []
    assert not model.exists()


def test_the_loaded_model_is_marked_and_every_column_fits(
    run_page, appliance_home: Path, monkeypatch
) -> None:
    from appliance.engine import HostStatus
    from appliance.ui import library_page

    _settled(write_gguf(appliance_home / "models" / "one.gguf"))
    _settled(write_gguf(appliance_home / "models" / "two.gguf"))
    app = run_page("library")
    table = app.dataframe[0].value
    assert list(table["State"]) == ["present", "present"]
    resident = HostStatus(model_id="two", name="two", backend="llama.cpp", phase="ready")
    monkeypatch.setattr(services().host, "status", lambda: resident)
    app.run()
    table = app.dataframe[0].value
    states = dict(zip(table["ID"], table["State"], strict=True))
    assert states == {"one": "present", "two": "● loaded"}
    # sha256 and ID stay in view at 1400 px: every column has a width, and together they
    # fit the table's 940 px (1400 px less the sidebar and the page's margins).
    assert list(table.columns) == list(library_page.COLUMNS)
    widths = [c["width"] for c in library_page.COLUMNS.values()]
    assert all(isinstance(w, int) for w in widths) and sum(widths) <= 935


def test_rename_shows_in_the_model_selector_at_once(run_page, appliance_home: Path) -> None:
    _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    app = run_page("library")
    (before,) = [s.key for s in app.selectbox if s.label == "Model"]
    app.text_input[0].set_value("Tiny renamed")
    next(b for b in app.button if b.label == "Rename").click().run()
    (selector,) = [s for s in app.selectbox if s.label == "Model"]
    assert selector.options == ["Tiny renamed (tiny)"]
    assert selector.key != before  # drawn anew: the browser shows the new label
    assert app.dataframe[0].value["Name"][0] == "Tiny renamed"


def _wait(check, timeout: float = 8.0):
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_drop_in_log_prints_each_event_once(run_page, appliance_home: Path) -> None:
    models = appliance_home / "models"
    app = run_page("import")
    watcher = services().watcher
    (models / "text.gguf").write_text("not a model")
    assert _wait(lambda: [e for e in watcher.events if e.path == "text.gguf"])
    for name in ("a", "b"):
        write_gguf(models / f"{name}.gguf")
        assert _wait(lambda name=name: [e for e in watcher.events if e.path == f"{name}.gguf"])
    time.sleep(0.5)
    app.run()
    log = [t.value[9:] for t in app.text]
    assert [line for line in log if "text.gguf" in line] == [
        "rejected   text.gguf: This file does not start with the GGUF magic number."
    ]
    assert [line.split(":")[0] for line in log] == [
        "registered b.gguf",
        "registered a.gguf",
        "rejected   text.gguf",
    ]


def test_a_remote_model_is_not_hashing_for_ever(appliance_home: Path) -> None:
    """A model on an OpenAI-compatible server has no file to hash."""
    from appliance import hardware
    from appliance.ui.library_page import rows

    library = Library()
    library.add_remote("http://127.0.0.1:9/v1", "far-away")
    [row] = rows(library.entries(), hardware.snapshot(), {})
    assert row["sha256"] == "remote"


def test_the_hardware_panel_names_llama_cpp_cpu_kernels(
    run_page, monkeypatch, tmp_path: Path
) -> None:
    """Issue 12.2: the kernels the loaded server picked; else what the build ships; a
    missing build is a line that says so, not a crash."""
    from appliance.engine import HostStatus
    from appliance.engine.llama_server import cpu_variants, find_binary

    def kernels(app: AppTest) -> str:
        (line,) = [c.value for c in app.caption if c.value.startswith("llama.cpp CPU kernels")]
        return line

    app = run_page("library")
    shipped = cpu_variants(find_binary())
    assert kernels(app) == (
        f"llama.cpp CPU kernels shipped: {', '.join(shipped)}. The best one this CPU "
        "supports is picked when a GGUF model is loaded."
    )
    loaded = HostStatus(model_id="m", name="Tiny", backend="llama.cpp", phase="ready",
                        runs_in="server", capacity=4, cpu_variant="zen4")  # fmt: skip
    monkeypatch.setattr(services().host, "status", lambda: loaded)
    app.run()
    assert kernels(app) == (
        "llama.cpp CPU kernels: **zen4**, picked for this CPU when Tiny was loaded."
    )
    monkeypatch.setattr(services().host, "status", HostStatus)
    monkeypatch.setenv("APPLIANCE_LLAMA_SERVER", str(tmp_path / "no-such-llama-server"))
    app.run()
    assert not app.exception
    assert kernels(app).startswith(
        "llama.cpp CPU kernels: none, so GGUF models cannot be loaded. llama-server is not built"
    )
    # A build without variants (GGML_NATIVE) has its kernels inside the program.
    native = tmp_path / "native" / "bin" / "llama-server"
    native.parent.mkdir(parents=True)
    native.write_text("#!/bin/sh\n")
    native.chmod(0o755)
    (native.parent.parent / "BUILD.json").write_text('{"flavour": "native"}')
    monkeypatch.setenv("APPLIANCE_LLAMA_SERVER", str(native))
    app.run()
    assert kernels(app) == (
        "llama.cpp CPU kernels: compiled into this native build of llama-server (no variants)."
    )


def test_the_memory_estimate_counts_every_parallel_slot(appliance_home: Path) -> None:
    """Issue 12.3: a GGUF model on llama.cpp reserves one context per slot."""
    from dataclasses import replace

    from appliance import app_settings, hardware
    from appliance.model_entry import ModelMetadata
    from appliance.ui.library_page import estimate, rows

    path = _settled(write_gguf(appliance_home / "models" / "kv.gguf"))
    library = Library()
    entry = library.register(path).entry
    meta = ModelMetadata(layers=30, embedding=576, heads=9, kv_heads=3, context_length=8192)
    entry = replace(entry, metadata=meta)
    settings = app_settings.check({}, "defaults")
    assert estimate(entry, settings) == (4096, 4)  # the engine's default context cap
    assert estimate(entry, {**settings, "n_ctx": 1024, "parallel_slots": 2}) == (1024, 2)
    small = replace(entry, metadata=replace(meta, context_length=2048))
    assert estimate(small, settings) == (2048, 4)
    other = replace(entry, backend="ctransformers")
    assert estimate(other, settings) == (None, 1)  # one reply at a time; its own context
    # The column: fits with one slot, not with sixteen.
    one = hardware.memory_needed(entry, 4096, slots=1)
    machine = hardware.Hardware(16 << 30, int(one / 0.8) + 1, 2, 2)
    [row] = rows([entry], machine, {}, None, {**settings, "parallel_slots": 1})
    assert row["Memory"] == "fits"
    [row] = rows([entry], machine, {}, None, {**settings, "parallel_slots": 16})
    assert row["Memory"] == "won't fit"
