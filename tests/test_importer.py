"""Import: copy with progress and sha256, hard link, in place, uploads, refusals, full disk."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import DiskFull, ImportRefused, NotAModelFile, UnsafePickleFile
from appliance.library import importer
from appliance.library.importer import Upload, import_path
from appliance.library.library import Library
from tests.helpers import make_hf_folder, write_gguf


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (".registry.lock",))


def test_copy_reports_progress_and_hash(library: Library, demo_model: Path) -> None:
    seen: list[tuple[int, int]] = []
    entry = import_path(library, demo_model, "copy", progress=lambda d, t: seen.append((d, t)))
    assert entry.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert entry.path == demo_model.name and entry.external is False
    assert seen[-1] == (98_362_432, 98_362_432)
    assert len(seen) > 5 and all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    assert _visible(library.paths.models) == [demo_model.name, "registry.json"]


def test_copy_folder_and_collision(library: Library, tmp_path: Path) -> None:
    folder = make_hf_folder(tmp_path / "tiny-llama")
    first = import_path(library, folder, "copy")
    second = import_path(library, folder, "copy", name="Tiny again", allow_duplicate=True)
    assert (first.id, first.path) == ("tiny-llama", "tiny-llama")
    assert (second.id, second.path, second.name) == (
        "tiny-again",
        "tiny-llama-2",
        "Tiny again",
    )
    lines = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )
    assert first.sha256 == hashlib.sha256(lines.encode()).hexdigest()


def _dup_message(source: str, sha: str) -> str:
    return (
        f"{source} is already in the library as model (id model): same sha256 {sha[:16]}…. "
        "Nothing was imported. Use the existing model."
    )


@pytest.mark.parametrize("mode", ["copy", "link", "in-place"])
def test_duplicate_is_refused_before_copying(library: Library, tmp_path: Path, mode: str) -> None:
    first = import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    (tmp_path / "again").mkdir()
    same = tmp_path / "again" / "renamed.gguf"
    same.write_bytes((tmp_path / "model.gguf").read_bytes())
    before = _visible(library.paths.models)
    registry = library.paths.registry.read_bytes()
    with pytest.raises(importer.DuplicateModel) as err:
        import_path(library, same, mode)
    assert str(err.value) == _dup_message("renamed.gguf", first.sha256)
    assert (err.value.existing.id, err.value.hidden) == ("model", False)
    assert _visible(library.paths.models) == before  # no model-2.gguf, no temp file
    assert library.paths.registry.read_bytes() == registry
    assert same.exists()


def test_duplicate_can_be_imported_when_asked(library: Library, tmp_path: Path) -> None:
    import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    second = import_path(library, tmp_path / "model.gguf", "copy", allow_duplicate=True)
    assert (second.id, second.path) == ("model-2", "model-2.gguf")


def test_same_size_other_bytes_is_not_a_duplicate(library: Library, tmp_path: Path) -> None:
    a = import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    other = write_gguf(tmp_path / "other.gguf", name="tinx")
    assert other.stat().st_size == a.size_bytes
    assert import_path(library, other, "copy").id == "other"


def test_duplicate_of_an_entry_still_hashing(library: Library, tmp_path: Path) -> None:
    """A drop-in whose sha256 is not computed yet is hashed for the comparison."""
    dropped = write_gguf(library.paths.models / "model.gguf")
    library.register(dropped)
    library.hasher.join()
    with library.registry.transaction() as data:
        data.models["model"] = replace(data.get("model"), sha256=None)  # hash not done yet
    with pytest.raises(importer.DuplicateModel):
        import_path(library, _copy_of(dropped, tmp_path / "copy.gguf"), "copy")


def _copy_of(path: Path, dest: Path) -> Path:
    dest.write_bytes(path.read_bytes())
    return dest


def test_duplicate_of_a_hidden_model_says_to_unhide(library: Library, tmp_path: Path) -> None:
    entry = import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    library.remove(entry.id)
    with pytest.raises(importer.DuplicateModel) as err:
        import_path(library, tmp_path / "model.gguf", "copy")
    assert str(err.value) == (
        "model.gguf has the same content (sha256) as model (id model), which was removed from "
        "the library and is hidden. Nothing was imported. Un-hide it to use it again."
    )
    assert err.value.hidden is True
    assert _visible(library.paths.models) == ["model.gguf", "registry.json"]


def test_duplicate_upload_is_removed_and_refused(library: Library, tmp_path: Path) -> None:
    first = import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    data = (tmp_path / "model.gguf").read_bytes()
    with Upload(library, "uploaded.gguf", len(data)) as up:
        up.write(data)
        with pytest.raises(importer.DuplicateModel) as err:
            up.commit()
    assert str(err.value) == _dup_message("uploaded.gguf", first.sha256)
    assert _visible(library.paths.models) == ["model.gguf", "registry.json"]
    assert [e.id for e in library.entries()] == ["model"]


def test_same_name_gets_distinct_id(library: Library, tmp_path: Path) -> None:
    a = import_path(library, write_gguf(tmp_path / "model.gguf"), "copy")
    (tmp_path / "other").mkdir()
    b = import_path(library, write_gguf(tmp_path / "other" / "model.gguf", name="x"), "copy")
    assert (a.id, b.id) == ("model", "model-2")
    assert b.path == "model-2.gguf"


def test_hard_link(library: Library, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "linked.gguf")
    entry = import_path(library, src, "link")
    assert os.stat(library.paths.models / "linked.gguf").st_ino == src.stat().st_ino
    assert entry.external is False


def test_in_place_is_external(library: Library, tmp_path: Path) -> None:
    src = write_gguf(tmp_path / "where-it-is.gguf")
    entry = import_path(library, src, "in-place", backend="ctransformers", architecture="mistral")
    assert (entry.path, entry.external) == (str(src), True)
    assert (entry.backend, entry.architecture, entry.architecture_source) == (
        "ctransformers", "mistral", "user")  # fmt: skip
    assert _visible(library.paths.models) == ["registry.json"]


def test_incompatible_backend_refused(library: Library, tmp_path: Path) -> None:
    with pytest.raises(
        ImportRefused,
        match="The transformers backend cannot load gguf models; use llama.cpp or ctransformers.",
    ):
        import_path(library, write_gguf(tmp_path / "a.gguf"), "copy", backend="transformers")
    assert _visible(library.paths.models) == []


def test_bad_files_are_refused_before_copying(library: Library, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(NotAModelFile):
        import_path(library, bad, "copy")
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04junk")
    with pytest.raises(UnsafePickleFile):
        import_path(library, pickle, "copy")
    assert _visible(library.paths.models) == []


@pytest.mark.parametrize(
    "name", ["../escape.gguf", "/etc/evil.gguf", "..", "a/b.gguf", ".hidden.gguf", "x.gguf.part"]
)
def test_upload_names_that_escape_are_refused(library: Library, name: str) -> None:
    with pytest.raises(ImportRefused):
        Upload(library, name)
    assert _visible(library.paths.models) == []


def test_upload_into_a_symlink_is_refused(library: Library, tmp_path: Path) -> None:
    (library.paths.models / "trap.gguf").symlink_to(tmp_path / "elsewhere.gguf")
    with pytest.raises(ImportRefused, match="models/trap.gguf is a symbolic link"):
        Upload(library, "trap.gguf")


def test_upload_streams_and_registers(library: Library, tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "up.gguf").read_bytes()
    with Upload(library, "up.gguf", len(data)) as up:
        for start in range(0, len(data), 100):
            up.write(data[start : start + 100])
        entry = up.commit(name="Uploaded")
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert (entry.name, entry.path) == ("Uploaded", "up.gguf")


def test_broken_upload_leaves_nothing(library: Library) -> None:
    with Upload(library, "bad.gguf") as up:
        up.write(b"GGUF\x03\0\0\0" + b"\xff" * 30)
        with pytest.raises(NotAModelFile, match=r"^bad.gguf: "):
            up.commit()
    assert _visible(library.paths.models) == []


def test_abandoned_upload_leaves_nothing(library: Library) -> None:
    with Upload(library, "gone.gguf") as up:
        up.write(b"GGUF")
    assert _visible(library.paths.models) == []
    assert [p for p in library.paths.models.iterdir() if "importing" in p.name] == []


def test_not_enough_space_is_refused_up_front(
    library: Library, tmp_path: Path, monkeypatch
) -> None:
    src = write_gguf(tmp_path / "big.gguf")
    monkeypatch.setattr(importer, "SPACE_MARGIN", 1 << 50)
    with pytest.raises(
        DiskFull, match=r"^Not enough free space in .*models: the model needs 0.00 GiB"
    ):
        import_path(library, src, "copy")
    assert _visible(library.paths.models) == []


FULL_DISK = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    home = Path(sys.argv[1])
    (home / "models").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home / "models")], check=True)
    os.environ["APPLIANCE_HOME"] = str(home)
    from appliance.library import importer
    from appliance.library.library import Library
    importer.SPACE_MARGIN = 0
    library = Library()
    filled = []
    def progress(done, total):
        if not filled:  # another program fills the disk while we copy
            filled.append(1)
            (home / "models" / "filler.dat").write_bytes(b"0" * (2 << 20))
    result = {}
    try:
        importer.import_path(library, Path(sys.argv[2]), "copy", progress=progress)
    except importer.DiskFull as exc:
        result["error"] = str(exc)
    result["files"] = sorted(p.name for p in (home / "models").iterdir())
    result["registry"] = [e.id for e in library.entries()]
    print(json.dumps(result))
    """
)


def test_copy_that_fills_the_disk_fails_cleanly(tmp_path: Path) -> None:
    """A real 4 MiB tmpfs (in a private mount namespace) fills up during the copy."""
    src = write_gguf(tmp_path / "three-mib.gguf", tensors={"w": np.ones((768, 1024), np.float32)})
    cmd = ["unshare", "--mount", "--map-root-user", sys.executable, "-c", FULL_DISK,
           str(tmp_path / "full"), str(src)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["error"] == (
        "The disk holding models/ filled up while copying three-mib.gguf. Nothing was "
        "registered and the partial copy was removed. Free some space and try again."
    )
    assert result["files"] == ["filler.dat"]
    assert result["registry"] == []
