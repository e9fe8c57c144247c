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
    assert Library().get("tiny")["name"] == "Tiny renamed"
    slider = next(s for s in app.slider if s.label == "Temperature")
    slider.set_value(0.0)
    next(b for b in app.button if b.label == "Save defaults").click().run()
    assert Library().get("tiny")["defaults"]["temperature"] == 0.0


def test_remove_needs_typed_confirmation(run_page, appliance_home: Path) -> None:
    model = _settled(write_gguf(appliance_home / "models" / "tiny.gguf"))
    app = run_page("library")
    remove = next(b for b in app.button if b.label == "Remove")
    assert remove.disabled
    app.checkbox(key="rm-files-tiny").check()
    app.text_input(key="rm-confirm-tiny").input("tiny").run()
    next(b for b in app.button if b.label == "Remove").click().run()
    assert Library().entries() == []
    assert not model.exists()


def test_import_from_path_with_inferred_defaults(run_page, tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "outside.gguf", "qwen2", name="Outside")
    app = run_page("import")
    app.text_input(key="import-path").input(str(source)).run()
    assert "**Outside** — gguf, qwen2 (metadata)" in app.success[0].value
    assert app.selectbox(key="import-backend").label == "Backend (inferred: llama.cpp)"
    app.button(key="import-go").click().run()
    assert not app.error
    assert "Added **outside** (id `outside`, llama.cpp). sha256: `" in app.success[-1].value
    assert Library().get("outside")["path"] == "outside.gguf"


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
    assert entry["path"] == "up.gguf" and entry["sha256"]


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
