"""App settings (config/app.json) and the hardware fit estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import app_settings, hardware
from appliance.hardware import Gpu, Hardware
from appliance.model_entry import ModelEntry, ModelMetadata


def test_defaults_then_save_and_reload(appliance_home: Path) -> None:
    assert app_settings.load() == {"keep_alive_minutes": 30, "n_threads": 0, "n_ctx": 0}
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
