"""Where models/, history/ and config/ live.

One override: the environment variable APPLIANCE_HOME names the directory that holds
all three. The default is the app's own root (the folder holding streamlit_app.py).
history/ and config/ hold the vault: they are kept private to the app's user (0700).
models/ keeps the default mode, so that people can copy weights into it.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
        """Create the three folders if needed (history/ and config/ private) and return self."""
        self.models.mkdir(parents=True, exist_ok=True)
        for folder in (self.history, self.config):
            private_dir(folder)
        return self


def private_dir(folder: Path) -> Path:
    """Create folder with mode 0700, or take group and other access away from an existing
    one (for example made 0755 by an earlier release). A folder owned by someone else
    (a mount the app cannot chmod) is left as it is."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        with contextlib.suppress(PermissionError):
            folder.chmod(mode & 0o700)
    return folder


def current() -> Paths:
    """The paths selected by APPLIANCE_HOME, read at call time."""
    home = os.environ.get("APPLIANCE_HOME")
    return Paths(Path(home).expanduser().resolve() if home else APP_ROOT)
