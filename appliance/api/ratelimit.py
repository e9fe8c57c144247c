"""Failed API authentications, limited per client address.

A client address that fails `allowed` times within `window_s` is refused for
`block_s`, doubling with each further block up to `max_block_s`. A refused address is
answered at once (429, Retry-After) without looking at its key, so a flood of wrong keys
costs almost nothing and never slows clients that hold right ones: their addresses have
their own counts, and a right key from a blocked address waits out the block like any
other. Keys are 256 random bits, so the limit is about load, not about guessing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    blocked_until: float = 0.0
    blocks: int = 0


class FailureLimiter:
    def __init__(self, allowed: int = 10, window_s: float = 60.0, block_s: float = 30.0,
                 max_block_s: float = 900.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:  # fmt: skip
        self.allowed, self.window_s = allowed, window_s
        self.block_s, self.max_block_s = block_s, max_block_s
        self.clock = clock
        self.max_clients = max_clients
        self._clients: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until this address may try again (0: it may now)."""
        with self._lock:
            record = self._clients.get(client)
            if record is None:
                return 0
            left = record.blocked_until - self.clock()
            return math.ceil(left) if left > 0 else 0

    def failed(self, client: str) -> int:
        """Count a failure; the seconds this address is now blocked for (0: not blocked)."""
        now = self.clock()
        with self._lock:
            if client not in self._clients and len(self._clients) >= self.max_clients:
                self._forget_idle(now)
            record = self._clients.setdefault(client, _Record())
            record.failures = [t for t in record.failures if now - t < self.window_s]
            record.failures.append(now)
            if len(record.failures) < self.allowed:
                return 0
            block = min(self.max_block_s, self.block_s * 2**record.blocks)
            record.blocks += 1
            record.failures.clear()
            record.blocked_until = now + block
            return math.ceil(block)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _forget_idle(self, now: float) -> None:
        idle = [c for c, r in self._clients.items() if r.blocked_until < now and not any(
            now - t < self.window_s for t in r.failures)]  # fmt: skip
        for client in idle or list(self._clients)[: len(self._clients) // 2]:
            del self._clients[client]
