"""Unlock throttling, persisted in config/throttle.json so a restart does not reset it.

Five free attempts, then a delay that doubles with each failure (1 s, 2 s, 4 s, ...) up
to 15 minutes. The delay is checked before the KDF runs. An attempt is counted as a
failure *before* the KDF runs and forgiven after a success, so killing the process
mid-attempt does not earn a free try. Callers hold the vault's KDF lock around
`begin_attempt` ... `succeeded`, so checks and updates never interleave.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.fsutil import atomic_write_json
from appliance.vault.errors import Throttled

FREE_ATTEMPTS = 5
BASE_DELAY_S = 1.0
MAX_DELAY_S = 15 * 60.0


def delay_after(failures: int) -> float:
    """The wait imposed after `failures` consecutive failed attempts."""
    if failures < FREE_ATTEMPTS:
        return 0.0
    exponent = failures - FREE_ATTEMPTS
    return MAX_DELAY_S if exponent >= 20 else min(MAX_DELAY_S, BASE_DELAY_S * 2**exponent)


@dataclass
class ThrottleState:
    failures: int = 0
    last_failure_at: float = 0.0


class Throttle:
    """The persisted failure counter of one vault."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock

    def state(self) -> ThrottleState:
        """The stored state. A damaged file counts as used-up free attempts, never as none."""
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            failures, last = doc["failures"], doc["last_failure_at"]
            if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
                raise ValueError("failures")
            if not isinstance(last, int | float) or not math.isfinite(last):
                raise ValueError("last_failure_at")
            return ThrottleState(failures, float(last))
        except FileNotFoundError:
            return ThrottleState()
        except (OSError, ValueError, KeyError, TypeError):
            mtime = 0.0
            with contextlib.suppress(OSError):
                mtime = self.path.stat().st_mtime
            return ThrottleState(FREE_ATTEMPTS, mtime)

    def remaining(self) -> float:
        """Seconds until the next attempt is allowed; 0.0 when free."""
        state = self.state()
        delay = delay_after(state.failures)
        if delay <= 0:
            return 0.0
        elapsed = self.clock() - state.last_failure_at
        # A clock that went backwards never lengthens the wait beyond one full delay.
        return max(0.0, min(delay, delay - elapsed))

    def begin_attempt(self) -> ThrottleState:
        """Raise Throttled while waiting; otherwise count this attempt as a failure."""
        remaining = self.remaining()
        if remaining > 0:
            raise Throttled(remaining)
        state = self.state()
        new = ThrottleState(state.failures + 1, self.clock())
        self._save(new)
        return new

    def succeeded(self) -> None:
        if self.state().failures:
            self._save(ThrottleState())

    def restore(self, state: ThrottleState) -> None:
        """Put back the state from before `begin_attempt`: the attempt is not counted
        (used when the settings file, not the password, was found at fault)."""
        self._save(state)

    def _save(self, state: ThrottleState) -> None:
        atomic_write_json(
            self.path, {"failures": state.failures, "last_failure_at": state.last_failure_at}
        )
