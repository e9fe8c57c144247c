"""The original desktop app's .chat files: every message in, the file kept, the right model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.vault.seed import SEED_TITLE, match_legacy_names
from tests.vault_helpers import PASSWORD, fast_vault, write_seed_vault

LIBRARY = [
    ("smollm2-135m-instruct.q4_1", "SmolLM2 135M Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("tiny", "Tiny chat model", "folder/tiny-model.gguf"),
    ("gemma-3", "Gemma 3", "gemma-3-1b-it.Q4_K_M.gguf"),
]
MIXED = [
    {"role": "user", "content": "Hi"},
    {"role": "bot", "content": "Hello!"},
    {"role": "assistant", "content": [{"type": "text", "text": "Part one."},
                                      {"type": "text", "text": "Part two."}]},
    {"role": "human", "content": "And you?"},
    {"role": "narrator", "content": "(silence)"},
    {"content": "no role at all"},
]  # fmt: skip


def imported_notice(stem: str, model_id: str, count: int, extra: str = "") -> str:
    return (
        f"Imported {count} messages of {stem!r} from the original app into model "
        f"{model_id!r}.{extra} The original file is kept as history/{stem}.chat.imported: "
        "delete it once you have checked the conversation (it can be read by anyone who "
        "has a copy of the original app's settings.json)."
    )


def test_every_message_is_imported_and_the_file_kept(appliance_home: Path) -> None:
    """Issue 9.4: `bot` and list content made the importer keep 1 message of 3, file the
    conversation under the file name (which the chat page never looks up), delete the
    original file and say nothing."""
    stem = "SmolLM2-135M-Instruct.Q4_1"
    write_seed_vault(appliance_home, PASSWORD, {stem: MIXED})
    original = (appliance_home / "history" / f"{stem}.chat").read_bytes()
    unlocked = fast_vault().unlock(PASSWORD, resolve_model=match_legacy_names(LIBRARY))
    history = unlocked.history
    assert history.model_ids() == ["smollm2-135m-instruct.q4_1"]
    conv = history.latest("smollm2-135m-instruct.q4_1")
    assert (conv.title, conv.message_count) == (SEED_TITLE, 6)
    log = history.messages("smollm2-135m-instruct.q4_1", conv.id)
    assert [(m.role, m.content) for m in log.messages] == [
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("assistant", "Part one.\nPart two."),
        ("user", "And you?"),
        ("assistant", "(silence)"),  # unknown role: the turn after the user's
        ("user", "no role at all"),
    ]
    assert [m.meta for m in log.messages] == [
        {}, {"original_role": "bot"}, {"original_content": MIXED[2]["content"]},
        {"original_role": "human"}, {"original_role": "narrator"}, {"original_role": None},
    ]  # fmt: skip
    assert unlocked.notices == [
        imported_notice(
            stem, "smollm2-135m-instruct.q4_1", 6,
            " 1 with role 'bot' was imported as assistant. 1 with role 'human' was "
            "imported as user. 1 with role 'narrator' was imported as assistant. 1 with "
            "role (none) was imported as user. 1 whose content was a list of parts was "
            "turned into text (the original is kept in the message's meta).",
        )
    ]  # fmt: skip
    assert unlocked.warnings == []
    kept = appliance_home / "history" / f"{stem}.chat.imported"
    assert kept.read_bytes() == original  # kept, byte for byte, until the user deletes it
    assert not (appliance_home / "history" / f"{stem}.chat").exists()
    settings = json.loads((appliance_home / "config" / "settings.json").read_text())
    assert settings["seed_import"] is None
    again = fast_vault().unlock(PASSWORD, resolve_model=match_legacy_names(LIBRARY))
    assert (again.notices, again.history.count("smollm2-135m-instruct.q4_1")) == ([], 1)
    assert kept.read_bytes() == original


def test_legacy_names_match_file_name_name_and_id() -> None:
    resolve = match_legacy_names(LIBRARY)
    assert resolve("SmolLM2-135M-Instruct.Q4_1") == "smollm2-135m-instruct.q4_1"  # file stem
    assert resolve("SmolLM2-135M-Instruct_Q4_1") == "smollm2-135m-instruct.q4_1"  # loosely
    assert resolve("tiny-model.gguf") == "tiny"  # file name
    assert resolve("Tiny chat model") == "tiny"  # display name
    assert resolve("gemma-3") == "gemma-3"  # id
    assert resolve("unknown model") is None
    twins = match_legacy_names([("a", "Same", "a.gguf"), ("b", "same", "b.gguf")])
    assert twins("Same") == "a"  # exact beats loose
    assert twins("SAME") is None  # two loose matches: none


def test_unmatched_and_undecryptable_files(appliance_home: Path) -> None:
    write_seed_vault(appliance_home, PASSWORD, {"old-model": [{"role": "user", "content": "x"}]})
    history_dir = appliance_home / "history"
    (history_dir / "broken.chat").write_bytes(b"not a fernet token")
    unlocked = fast_vault().unlock(PASSWORD, resolve_model=match_legacy_names(LIBRARY))
    assert unlocked.history.model_ids() == ["old-model"]
    notice = (
        "Imported 1 message of 'old-model' from the original app into model 'old-model' (no "
        "single model in the library matches that name, so it is filed under the name "
        "itself: see it with `appliance history list`). The original file is kept as "
        "history/old-model.chat.imported: delete it once you have checked the conversation "
        "(it can be read by anyone who has a copy of the original app's settings.json)."
    )
    assert unlocked.notices == [notice]
    assert unlocked.warnings == [
        "broken.chat from the original app could not be decrypted with this password; it is "
        "kept as it is in history/."
    ]
    assert (history_dir / "broken.chat").read_bytes() == b"not a fernet token"


def test_an_earlier_imported_copy_is_never_overwritten(appliance_home: Path) -> None:
    write_seed_vault(appliance_home, PASSWORD, {"m": [{"role": "user", "content": "new"}]})
    (appliance_home / "history" / "m.chat.imported").write_bytes(b"an earlier copy")
    fast_vault().unlock(PASSWORD)
    assert (appliance_home / "history" / "m.chat.imported").read_bytes() == b"an earlier copy"
    assert (appliance_home / "history" / "m.chat.imported-2").is_file()


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (None, ""),
        ({"parts": ["a", "b"]}, "a\nb"),
        (42, "42"),
        (["plain", {"type": "image_url", "image_url": {"url": "x"}}],
         'plain\n{"type": "image_url", "image_url": {"url": "x"}}'),
    ],
)  # fmt: skip
def test_odd_content_is_kept_as_text(appliance_home: Path, content, text) -> None:
    write_seed_vault(appliance_home, PASSWORD, {"m": [{"role": "user", "content": content}]})
    history = fast_vault().unlock(PASSWORD).history
    (message,) = history.messages("m", history.latest("m").id).messages
    assert (message.content, message.meta) == (text, {"original_content": content})
