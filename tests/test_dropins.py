"""What in models/ is a candidate, and when its copy has finished: the one walker and
the one rule that the library's scan and the drop-in watcher share."""

from __future__ import annotations

import os
import time
from pathlib import Path

from appliance.library.dropins import candidate_of, copy_finished, find_candidates, signature

FILES = [
    "a.gguf", "x/b.bin", "x/y/z/c.gguf", "x/y/z/w/too-deep.gguf", ".hidden.gguf",
    "p.gguf.part", "notes.txt", "hf/config.json", "hf/model.safetensors",
    "hf/sub/config.json", ".partial/d.gguf",
]  # fmt: skip


def test_the_scan_and_the_watcher_see_the_same_candidates(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "link.gguf").symlink_to(root / "a.gguf")
    found = find_candidates(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a.gguf", "hf", "x/b.bin", "x/y/z/c.gguf"]  # fmt: skip
    # An event anywhere under models/ belongs to a candidate the walker found, or to none.
    for path in root.rglob("*"):
        assert candidate_of(root, path) in (*found, None), path
    assert candidate_of(root, root / "hf" / "sub" / "config.json") == root / "hf"
    assert candidate_of(root, root / "x" / "y" / "z" / "w" / "too-deep.gguf") is None
    assert candidate_of(root, root / "link.gguf") is None
    assert find_candidates(root, under=root / "x" / "y") == [root / "x" / "y" / "z" / "c.gguf"]


def test_one_rule_for_a_finished_copy(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 10)
    sig = signature(path)
    assert sig is not None and (sig.files, sig.size) == (1, 10)
    assert not copy_finished(sig, 1.5)  # seen once, written just now
    assert copy_finished(sig, 1.5, quiet_for=2.0)  # watched: unchanged for 2 s
    assert not copy_finished(sig, 1.5, quiet_for=1.0)
    assert copy_finished(sig, 0)  # no settle time: taken as it is
    old = time.time() - 10
    os.utime(path, (old, old))
    assert copy_finished(signature(path), 1.5)  # seen once, written 10 s ago
    assert signature(tmp_path / "gone.gguf") is None
