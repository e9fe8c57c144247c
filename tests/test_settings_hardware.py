"""App settings (config/app.json) and the hardware fit estimate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance import app_settings, hardware
from appliance.hardware import Gpu, Hardware
from appliance.model_entry import ModelEntry, ModelMetadata


def test_defaults_then_save_and_reload(appliance_home: Path) -> None:
    assert app_settings.load() == {"keep_alive_minutes": 30, "n_threads": 0, "n_ctx": 0,
                                   "parallel_slots": 4, "switch_rule": "wait"}  # fmt: skip
    app_settings.save({"n_threads": 2})
    assert app_settings.load()["n_threads"] == 2
    stored = appliance_home / "config" / "app.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert json.loads(stored.read_text())["keep_alive_minutes"] == 30


def test_out_of_bounds_is_refused_and_file_kept(appliance_home: Path) -> None:
    app_settings.save({"keep_alive_minutes": 0})
    before = (appliance_home / "config" / "app.json").read_bytes()
    with pytest.raises(
        app_settings.SettingsFileError, match="settings.n_threads must be between 0 and 256"
    ):
        app_settings.save({"n_threads": 1000})
    assert (appliance_home / "config" / "app.json").read_bytes() == before


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"parallel_slots": 0}, "settings.parallel_slots must be between 1 and 16"),
        ({"parallel_slots": 17}, "settings.parallel_slots must be between 1 and 16"),
        ({"parallel_slots": 2.5}, "settings.parallel_slots must be a whole number"),
        ({"switch_rule": "later"}, "settings.switch_rule must be one of wait, cancel, not 'later'"),
        ({"switch_rule": 1}, "settings.switch_rule must be text"),
    ],
)
def test_parallel_slots_and_switch_rule_are_checked(
    appliance_home: Path, values: dict, problem: str
) -> None:
    with pytest.raises(
        app_settings.SettingsFileError, match=re.escape(f"Invalid setting: {problem}.")
    ):
        app_settings.save(values)
    assert not (appliance_home / "config" / "app.json").exists()
    saved = app_settings.save({"parallel_slots": 16, "switch_rule": "cancel"})
    assert (saved["parallel_slots"], saved["switch_rule"]) == (16, "cancel")
    assert app_settings.load() == saved


def test_a_bad_switch_rule_in_the_file_is_named(appliance_home: Path) -> None:
    path = appliance_home / "config" / "app.json"
    path.write_text(json.dumps({"switch_rule": "never"}))
    with pytest.raises(
        app_settings.SettingsFileError,
        match=r"app\.json: app\.json\.switch_rule must be one of wait, cancel, not 'never'\. "
        "Fix it by hand or delete it",
    ):
        app_settings.load()


def test_switch_rules_are_the_hosts() -> None:
    from appliance.engine.host import SWITCH_RULES

    assert app_settings.SWITCH_RULES == SWITCH_RULES


def test_load_options_carry_the_parallel_slots(appliance_home: Path) -> None:
    from appliance.engine.options import check_options

    assert app_settings.load_options() == {"parallel": 4}  # 0 threads / context: the engine's
    app_settings.save({"n_threads": 2, "n_ctx": 1024, "parallel_slots": 2})
    options = app_settings.load_options()
    assert options == {"n_threads": 2, "n_ctx": 1024, "parallel": 2}
    # Only llama.cpp takes `parallel`; the other backends leave it out.
    assert check_options("llama.cpp", options) == options
    assert check_options("ctransformers", options) == {"n_threads": 2, "n_ctx": 1024}


def test_corrupt_file_is_named(appliance_home: Path) -> None:
    (appliance_home / "config" / "app.json").write_text("{]")
    with pytest.raises(
        app_settings.SettingsFileError,
        match=r"app.json is not valid JSON .* delete it to return to the defaults",
    ):
        app_settings.load()


def test_snapshot_reads_this_machine() -> None:
    hw = hardware.snapshot()
    assert hw.total_ram > hw.available_ram > 0
    assert hw.logical_cores >= hw.physical_cores >= 1


def test_fit_uses_the_header_kv_geometry() -> None:
    metadata = ModelMetadata(layers=30, embedding=576, heads=9, kv_heads=3, context_length=8192)
    info = ModelEntry(id="m", name="m", path="m.gguf", external=False, format="gguf",
                      backend="llama.cpp", architecture="llama", size_bytes=98_362_432,
                      added_at="2026-01-01", status="present", metadata=metadata)  # fmt: skip
    # 2 (K,V) * 30 layers * 8192 tokens * 576 * 3/9 * 2 bytes = 188,743,680 bytes
    assert hardware.kv_cache_bytes(info.metadata, 8192) == 188_743_680
    needed = hardware.memory_needed(info)
    assert needed == 98_362_432 + 188_743_680 + hardware.COMPUTE_OVERHEAD
    roomy = Hardware(16 << 30, 8 << 30, 2, 2)
    assert hardware.fit(info, roomy) == "fits"
    assert hardware.fit(info, Hardware(16 << 30, int(needed / 0.9), 2, 2)) == "tight"
    assert hardware.fit(info, Hardware(16 << 30, needed - 1, 2, 2)) == "won't fit"
    gpu = Hardware(16 << 30, 1, 2, 2, [Gpu("test", 8 << 30, 8 << 30)])
    assert hardware.fit(info, gpu) == "fits"


def test_each_parallel_slot_reserves_its_own_context() -> None:
    """llama-server keeps slots x n_ctx tokens of KV cache: the estimate counts them all."""
    metadata = ModelMetadata(layers=30, embedding=576, heads=9, kv_heads=3, context_length=8192)
    info = ModelEntry(id="m", name="m", path="m.gguf", external=False, format="gguf",
                      backend="llama.cpp", architecture="llama", size_bytes=98_362_432,
                      added_at="2026-01-01", status="present", metadata=metadata)  # fmt: skip
    per_slot = hardware.kv_cache_bytes(metadata, 2048)
    one = hardware.memory_needed(info, 2048)
    assert one == hardware.memory_needed(info, 2048, slots=1)
    assert hardware.memory_needed(info, 2048, slots=4) == one + 3 * per_slot
    assert hardware.memory_needed(info, None, slots=2) == (
        98_362_432 + 2 * hardware.kv_cache_bytes(metadata, 8192) + hardware.COMPUTE_OVERHEAD
    )
    free = int(hardware.memory_needed(info, 8192, slots=2) / 0.9)
    machine = Hardware(16 << 30, free, 2, 2)
    assert hardware.fit(info, machine, 8192, slots=1) == "fits"
    assert hardware.fit(info, machine, 8192, slots=2) == "tight"
    assert hardware.fit(info, machine, 8192, slots=4) == "won't fit"
