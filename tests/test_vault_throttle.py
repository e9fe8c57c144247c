"""Unlock throttling with an injected clock, and one KDF at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from appliance.vault import Throttled, WrongPassword
from appliance.vault import kdf as kdf_mod
from appliance.vault.throttle import MAX_DELAY_S, delay_after
from tests.vault_helpers import OTHER, PASSWORD, FakeClock, fast_vault


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    real = kdf_mod.derive

    def spy(password, params):
        calls.append(params)
        return real(password, params)

    monkeypatch.setattr("appliance.vault.vault.derive", spy)
    return calls


def test_delay_schedule() -> None:
    assert [delay_after(n) for n in range(5)] == [0, 0, 0, 0, 0]
    assert [delay_after(n) for n in range(5, 12)] == [1, 2, 4, 8, 16, 32, 64]
    assert delay_after(15) == 900 == MAX_DELAY_S
    assert delay_after(10**6) == MAX_DELAY_S


def test_five_free_attempts_then_doubling_delay_capped(clock: FakeClock, derivations) -> None:
    fast_vault(clock=clock).init(PASSWORD)
    vault = fast_vault(clock=clock)
    for left in (4, 3, 2, 1):
        with pytest.raises(WrongPassword) as err:
            vault.unlock(OTHER)
        assert err.value.attempts_left == left
        assert vault.throttle_remaining() == 0
    with pytest.raises(WrongPassword, match="Wait 1 s before the next attempt"):
        vault.unlock(OTHER)
    expected = 1.0
    for _ in range(14):
        assert vault.throttle_remaining() == pytest.approx(expected)
        derivations.clear()
        with pytest.raises(Throttled) as err:
            vault.unlock(PASSWORD)  # even the right password waits
        assert err.value.remaining_s == pytest.approx(expected)
        assert derivations == []  # checked before the KDF
        clock.advance(expected - 0.5)
        with pytest.raises(Throttled):
            vault.unlock(OTHER)
        clock.advance(0.5)
        with pytest.raises(WrongPassword):
            vault.unlock(OTHER)
        expected = min(expected * 2, 900.0)
    assert expected == 900.0
    assert vault.throttle_remaining() == pytest.approx(900.0)
    assert vault.status()["throttled"] is True


def test_throttle_survives_a_restart_and_resets_after_success(
    appliance_home: Path, clock: FakeClock
) -> None:
    fast_vault(clock=clock).init(PASSWORD)
    for _ in range(7):
        clock.advance(10)
        with pytest.raises(WrongPassword):
            fast_vault(clock=clock).unlock(OTHER)
    restarted = fast_vault(clock=clock)  # a new process would read the same file
    assert restarted.throttle_remaining() == pytest.approx(4.0)
    assert restarted.status()["failed_attempts"] == 7
    with pytest.raises(Throttled, match="wait 4 s"):
        restarted.unlock(PASSWORD)
    clock.advance(4)
    restarted.unlock(PASSWORD)
    assert fast_vault(clock=clock).status()["failed_attempts"] == 0
    for left in (4, 3):
        with pytest.raises(WrongPassword) as err:
            fast_vault(clock=clock).unlock(OTHER)
        assert err.value.attempts_left == left


def test_change_password_is_throttled_too(clock: FakeClock, derivations) -> None:
    vault = fast_vault(clock=clock)
    vault.init(PASSWORD)
    for _ in range(5):
        with pytest.raises(WrongPassword):
            vault.change_password(OTHER, "new password 123")
    derivations.clear()
    with pytest.raises(Throttled):
        vault.change_password(PASSWORD, "new password 123")
    assert derivations == []


def test_clock_going_backwards_never_extends_the_wait(clock: FakeClock) -> None:
    vault = fast_vault(clock=clock)
    vault.init(PASSWORD)
    for _ in range(8):
        clock.advance(100)
        with pytest.raises(WrongPassword):
            vault.unlock(OTHER)
    assert vault.throttle_remaining() == pytest.approx(8.0)
    clock.advance(-10_000)
    assert vault.throttle_remaining() == pytest.approx(8.0)


def test_damaged_throttle_file_counts_as_used_up(appliance_home: Path, clock: FakeClock) -> None:
    vault = fast_vault(clock=clock)
    vault.init(PASSWORD)
    (appliance_home / "config" / "throttle.json").write_text("{not json")
    assert vault.throttle.state().failures == 5
    with pytest.raises(WrongPassword, match="Wait 2 s"):  # the 6th failure
        vault.unlock(OTHER)


def test_a_killed_attempt_is_counted(appliance_home: Path, monkeypatch, clock) -> None:
    """The failure is recorded before the KDF runs: dying mid-derivation earns no free try."""
    vault = fast_vault(clock=clock)
    vault.init(PASSWORD)

    def die(password, params):
        raise KeyboardInterrupt

    monkeypatch.setattr("appliance.vault.vault.derive", die)
    with pytest.raises(KeyboardInterrupt):
        vault.unlock(OTHER)
    assert fast_vault(clock=clock).status()["failed_attempts"] == 1


def test_only_one_kdf_runs_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_vault().init(PASSWORD)
    active = []
    peak = []
    guard = threading.Lock()
    real = kdf_mod.derive

    def slow(password, params):
        with guard:
            active.append(1)
            peak.append(len(active))
        time.sleep(0.02)
        try:
            return real(password, params)
        finally:
            with guard:
                active.pop()

    monkeypatch.setattr("appliance.vault.vault.derive", slow)
    errors: list = []

    def attempt(password: str) -> None:
        try:
            fast_vault().unlock(password)  # one Vault object per "browser session"
        except WrongPassword as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(p,)) for p in [PASSWORD, OTHER] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(peak) >= 8 and max(peak) == 1
    assert len(errors) == 4
