"""Small engine parts: options, stop strings, llama.cpp log reasons, the backend table,
the workers' offline environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import capabilities
from appliance.engine import BackendUnavailable, InvalidOptions, options
from appliance.engine import backends as table
from appliance.engine.errors import RemoteServerError
from appliance.engine.process import WorkerProcess
from appliance.engine.prompt import StopFilter
from appliance.engine.remote import normalize_base_url
from appliance.offline import OFFLINE_ENV


def test_default_context_is_capped_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "available_memory", lambda: 64 << 30)
    assert options.default_n_ctx(8192, 23_040) == 4096  # the fixed cap
    assert options.default_n_ctx(2048, 23_040) == 2048  # the model's own context
    assert options.default_n_ctx(None, None) == 4096
    monkeypatch.setattr(options, "available_memory", lambda: 40 << 20)
    # a quarter of 40 MiB holds 455 tokens of 23,040 bytes: rounded down to 256
    assert options.default_n_ctx(8192, 23_040) == 256


def test_physical_cores_is_sane() -> None:
    assert 1 <= options.physical_cores() <= (len(__import__("os").sched_getaffinity(0)))


def test_check_options() -> None:
    assert options.check_options("llama.cpp", {"n_ctx": 512, "n_gpu_layers": -1}) == {
        "n_ctx": 512, "n_gpu_layers": -1}  # fmt: skip
    with pytest.raises(InvalidOptions, match="Unknown load option 'ctx'"):
        options.check_options("llama.cpp", {"ctx": 5})
    with pytest.raises(InvalidOptions, match="n_threads must be a whole number from 1"):
        options.check_options("llama.cpp", {"n_threads": True})


def test_each_backend_takes_its_own_options() -> None:
    """One set of app settings serves every model: what a backend does not take is left
    out, what it takes is checked against its own bounds."""
    asked = {"n_ctx": 2048, "n_threads": 4, "n_gpu_layers": 10}
    assert options.check_options("openai", asked) == {"n_ctx": 2048}
    assert options.check_options("ctransformers", asked) == {"n_ctx": 2048, "n_threads": 4}
    assert options.check_options("transformers", asked) == asked
    with pytest.raises(InvalidOptions, match="n_ctx must be a whole number from 64"):
        options.check_options("openai", {"n_ctx": 8})


def test_stop_filter_holds_back_partial_matches() -> None:
    stops = StopFilter(["\nUser:"])
    out = [stops.feed(t) for t in ("Hello", " there\n", "Us", "er: more")]
    assert out == ["Hello", " there", "", ""] and stops.hit
    stops = StopFilter(["\nUser:"])
    assert [stops.feed("a\n"), stops.feed("Uh"), stops.flush()] == ["a", "\nUh", ""]
    stops = StopFilter(["\nUser:"])
    assert (stops.feed("end\nU"), stops.flush()) == ("end", "\nU")


def test_default_context_leaves_room_for_every_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "available_memory", lambda: 400 << 20)
    # a quarter of 400 MiB holds 4,551 tokens of 23,040 bytes: one slot gets the cap,
    # four share it (1,137 each, rounded down to 1,024)
    assert options.default_n_ctx(8192, 23_040, parallel=1) == 4096
    assert options.default_n_ctx(8192, 23_040, parallel=4) == 1024


def test_backend_table() -> None:
    assert table.backend_names()[:4] == ("llama.cpp", "transformers", "ctransformers", "openai")
    # What they can do is in the capability table; every backend there has a class.
    assert all(table.backend_class(name).name == name for name in capabilities.BACKENDS)
    assert capabilities.FORMATS["gguf"].backends == ("llama.cpp", "ctransformers")
    assert capabilities.BACKENDS["openai"].remote is True
    with pytest.raises(BackendUnavailable, match="No backend named 'nope'"):
        table.backend_target("nope")
    with pytest.raises(ValueError, match="must look like 'package.module:Class'"):
        table.register_backend("x", "no-colon")
    with pytest.raises(TypeError, match="is not a Backend subclass"):
        table.load_target("appliance.engine.errors:EngineBusy")


def test_later_backends_register_like_built_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "_TARGETS", dict(table._TARGETS))
    table.register_backend("fake", "tests.engine_fakes:FakeBackend")
    assert table.backend_class("fake").name == "fake"


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url(" https://h/v1/ ") == "https://h/v1"
    with pytest.raises(RemoteServerError, match="not a server address"):
        normalize_base_url("h:8000")


def test_workers_run_in_the_offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the worker's environment overrides it
    worker = WorkerProcess()
    try:
        lines = Path(f"/proc/{worker.pid}/environ").read_bytes().decode().split("\0")
    finally:
        worker.kill()
    environ = dict(line.split("=", 1) for line in lines if "=" in line)
    assert {k: environ.get(k) for k in OFFLINE_ENV} == OFFLINE_ENV
