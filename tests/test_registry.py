"""models/registry.json: schema, validation, corruption handling, atomicity, locking."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import RegistryCorrupt
from appliance.library.library import Library
from appliance.library.registry import SCHEMA, Registry
from appliance.model_entry import ModelEntry
from appliance.paths import current
from tests.helpers import write_gguf

# Written by the code before entries became ModelEntry values (0c0055a), with every
# status, a user-set architecture, a chosen backend, an HF folder, a legacy GGML file,
# a model registered in place, a remote model, a hidden one and custom defaults.
OLD_REGISTRY = Path(__file__).parent / "data" / "registry-v1.json"


def _registered(library: Library, n: int = 1) -> list[dict]:
    entries = []
    for i in range(n):
        path = write_gguf(library.paths.models / f"m{i}.gguf")
        entries.append(library.register(path).entry)
    library.hasher.join()  # no background write races the hand edits below
    return entries


def test_schema_of_a_written_registry(library: Library) -> None:
    _registered(library)
    doc = json.loads(library.paths.registry.read_text())
    assert (doc["schema"], doc["version"]) == (SCHEMA, 1)
    entry = doc["models"][0]
    assert entry["id"] == "m0"
    assert entry["path"] == "m0.gguf"
    assert entry["external"] is False
    assert (entry["format"], entry["backend"], entry["architecture"]) == (
        "gguf",
        "llama.cpp",
        "llama",
    )
    assert entry["status"] == "present"
    assert entry["metadata"]["quantization"] == "Q4_1"
    assert entry["defaults"]["temperature"] == 0.7
    assert "added_at" in entry


def test_a_registry_written_before_model_entries_loads_and_saves_unchanged(
    library: Library,
) -> None:
    before = OLD_REGISTRY.read_bytes()
    library.paths.registry.write_bytes(before)
    data = library.registry.load()
    doc = json.loads(before)
    assert [e.to_json() for e in data.models.values()] == doc["models"]
    assert [(r.hidden_at, r.entry.to_json()) for r in data.hidden] == [
        (r["hidden_at"], r["entry"]) for r in doc["hidden"]
    ]
    library.registry.save(data)
    assert library.paths.registry.read_bytes() == before
    assert library.registry.load() == data
    assert (data.models["gone"].status, data.models["cut"].status) == ("missing", "damaged")
    assert data.models["cut"].problem.startswith("Tensor 'token_embd.weight' ends at byte")
    remote = data.models["lan-smollm2"]
    assert (remote.is_remote, remote.metadata.model_name, remote.secret_name) == (
        True, "smollm2", "api-key:lan-smollm2")  # fmt: skip
    assert data.models["qwen-notemplate"].architecture_source == "user"
    assert data.models["tiny-chat"].defaults["system_prompt"] == "Be brief. «ünïcode»"


def test_keys_this_version_does_not_know_are_kept(library: Library) -> None:
    doc = json.loads(OLD_REGISTRY.read_bytes())
    doc["models"][0]["is_current"] = True  # written by an older version
    entry = ModelEntry.from_json(doc["models"][0])
    assert entry.extra == {"is_current": True}
    assert list(entry.to_json())[-1] == "is_current" and entry.to_json() == doc["models"][0]


def test_invalid_json_is_kept_and_named(library: Library) -> None:
    library.paths.registry.write_text('{"schema": "x",\n "models": [\n')
    before = library.paths.registry.read_bytes()
    with pytest.raises(RegistryCorrupt) as err:
        library.entries()
    message = str(err.value)
    assert "is not valid JSON (line 3, column 1: Expecting value)" in message
    assert "It was left untouched and a copy was saved as registry.json.corrupt-" in message
    assert "appliance models repair" in message
    assert library.paths.registry.read_bytes() == before
    backups = list(library.paths.models.glob("registry.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == before


def test_invalid_entry_is_named_and_nothing_dropped(library: Library) -> None:
    _registered(library, 2)
    doc = json.loads(library.paths.registry.read_text())
    doc["models"][1]["backend"] = "magic"
    library.paths.registry.write_text(json.dumps(doc))
    with pytest.raises(
        RegistryCorrupt, match=r"models\[1\]: entry 'm1': 'backend' is 'magic'; expected one of"
    ):
        library.entries()
    # A write attempt must not overwrite the file either.
    with pytest.raises(RegistryCorrupt):
        library.rename("m0", "new name")
    assert json.loads(library.paths.registry.read_text()) == doc


def test_repair_lists_what_it_drops(library: Library) -> None:
    _registered(library, 2)
    doc = json.loads(library.paths.registry.read_text())
    doc["models"][1]["path"] = "../../etc/passwd"
    library.paths.registry.write_text(json.dumps(doc))
    data, dropped = library.registry.repair()
    assert list(data.models) == ["m0"]
    assert dropped == [
        "models[1]: entry 'm1': 'path' must stay inside models/ unless 'external' is true"
    ]
    assert [e.id for e in library.entries()] == ["m0"]
    assert list(library.paths.models.glob("registry.json.corrupt-*"))


def test_newer_version_is_refused_not_overwritten(library: Library) -> None:
    library.paths.registry.write_text(json.dumps({"schema": SCHEMA, "version": 2, "models": []}))
    with pytest.raises(RegistryCorrupt, match="'version' is 2; this app reads version 1"):
        library.entries()


def test_remove_keeps_files_unless_asked(library: Library) -> None:
    a, b = _registered(library, 2)
    library.remove(a.id)
    assert (library.paths.models / "m0.gguf").exists()
    library.remove(b.id, delete_files=True)
    assert not (library.paths.models / "m1.gguf").exists()
    assert library.entries() == []


def test_remove_never_deletes_external_files(library: Library, tmp_path: Path) -> None:
    outside = write_gguf(tmp_path / "outside.gguf")
    entry = library.register(outside, external=True).entry
    with pytest.raises(Exception, match="outside models/ .* this app never deletes files there"):
        library.remove(entry.id, delete_files=True)
    assert outside.exists() and library.get(entry.id)


def test_rename_keeps_id(library: Library) -> None:
    (entry,) = _registered(library)
    library.rename(entry.id, "My favourite")
    assert library.get(entry.id).name == "My favourite"


def test_name_collision_gets_distinct_id(library: Library) -> None:
    a = library.register(write_gguf(library.paths.models / "same.gguf")).entry
    (library.paths.models / "sub").mkdir()
    b = library.register(write_gguf(library.paths.models / "sub" / "same.gguf")).entry
    assert (a.id, b.id) == ("same", "same-2")


def test_threads_do_not_lose_updates(library: Library) -> None:
    (entry,) = _registered(library)

    def bump(i: int) -> None:
        with library.registry.transaction() as data:
            now = data.get(entry.id)
            defaults = {**now.defaults, "max_tokens": now.defaults["max_tokens"] + 1}
            data.models[entry.id] = replace(now, defaults=defaults)

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert library.get(entry.id).defaults["max_tokens"] == 512 + 20


def _bump_in_process(home: str, n: int) -> None:
    os.environ["APPLIANCE_HOME"] = home
    registry = Registry(current().registry)
    for _ in range(n):
        with registry.transaction() as data:
            now = data.get("m0")
            defaults = {**now.defaults, "max_tokens": now.defaults["max_tokens"] + 1}
            data.models["m0"] = replace(now, defaults=defaults)


def test_processes_do_not_lose_updates(library: Library, appliance_home: Path) -> None:
    _registered(library)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_in_process, args=(str(appliance_home), 10)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert library.get("m0").defaults["max_tokens"] == 512 + 30


WRITER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from pathlib import Path
    from appliance.library.registry import Registry
    registry = Registry(Path(sys.argv[1]))
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        with registry.transaction() as data:
            entry = data.get("m0")
            defaults = {**entry.defaults, "system_prompt": "x" * (i % 20000)}
            data.models["m0"] = replace(entry, name=f"name {i}", defaults=defaults)
    """
)


def test_writer_killed_mid_write_leaves_registry_readable(library: Library) -> None:
    _registered(library)
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(library.paths.registry)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.03 * (_ % 4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entries = library.entries()  # parses and validates
        assert entries[0].id == "m0"
    # Stale temp files left by the killed writers are swept at the next start.
    Library()
    assert not [p for p in library.paths.models.iterdir() if ".tmp-" in p.name]
