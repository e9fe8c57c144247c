"""Where models/, history/ and config/ live.

One override: the environment variable APPLIANCE_HOME names the directory that holds
all three. The default is the app's own root (the folder holding streamlit_app.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """The appliance's data folders, all under one home."""

    home: Path

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def history(self) -> Path:
        return self.home / "history"

    @property
    def config(self) -> Path:
        return self.home / "config"

    @property
    def registry(self) -> Path:
        return self.models / "registry.json"

    def ensure(self) -> Paths:
        """Create the three folders if needed and return self."""
        for folder in (self.models, self.history, self.config):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def current() -> Paths:
    """The paths selected by APPLIANCE_HOME, read at call time."""
    home = os.environ.get("APPLIANCE_HOME")
    return Paths(Path(home).expanduser().resolve() if home else APP_ROOT)
