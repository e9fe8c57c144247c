"""Shared fixtures: every test gets its own APPLIANCE_HOME; the demo model must exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.library.library import Library
from appliance.paths import APP_ROOT, current

DEMO_MODEL = APP_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ["HF_HUB_OFFLINE"] = "1"
pytest_plugins = ["tests.browser"]


@pytest.fixture(autouse=True)
def appliance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the app's home at a fresh temporary directory for every test."""
    home = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    current().ensure()
    return home


@pytest.fixture
def demo_model() -> Path:
    """The real demo GGUF. `make test` fetches it first; its absence is a failure."""
    assert DEMO_MODEL.is_file(), f"{DEMO_MODEL} is missing: run `make test`, which fetches it"
    return DEMO_MODEL


@pytest.fixture
def library(appliance_home: Path) -> Library:
    return Library()
