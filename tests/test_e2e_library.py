"""Browser journeys on the library: the demo model is listed, and a drop-in appears."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser import AppServer, shot, wait_idle
from tests.helpers import write_gguf


def test_drop_in_appears_by_itself(
    app_server: AppServer, page: Page, demo_model: Path, tmp_path: Path
) -> None:
    page.goto(app_server.url)
    wait_idle(page)
    expect(page.get_by_text("No models yet")).to_be_visible()
    staged = write_gguf(tmp_path / "dropped-in.gguf", "qwen2", name="Dropped")
    shutil.copy(staged, app_server.home / "models" / "dropped-in.gguf")
    # No reload: the table refreshes itself once the watcher has registered the file.
    grid = page.get_by_test_id("stDataFrame")
    expect(grid).to_be_visible(timeout=15_000)
    expect(grid).to_contain_text("dropped-in")
    shot(page, "library")
