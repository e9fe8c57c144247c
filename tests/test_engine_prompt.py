"""Prompt helpers: message checks, the plain-text fallback, fitting into the context."""

from __future__ import annotations

import pytest

from appliance.engine.errors import ContextOverflow
from appliance.engine.prompt import fit, render_fallback, reply_reserve


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def convo(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        out += [{"role": "user", "content": f"u{i} a b c"},
                {"role": "assistant", "content": f"a{i} d e f"}]  # fmt: skip
    return [*out, {"role": "user", "content": "now"}]


def test_everything_fits() -> None:
    fitted = fit("sys", convo(2), words, n_ctx=100, max_tokens=20)
    assert fitted.dropped == 0 and fitted.messages[0] == {"role": "system", "content": "sys"}
    assert fitted.prompt_tokens == 18 and fitted.max_tokens == 20


def test_oldest_dropped_system_kept_history_starts_with_user() -> None:
    fitted = fit("sys words here", convo(5), words, n_ctx=30, max_tokens=10)
    # budget 20: system 3 + "now" 1 + two exchanges (16) = 20
    assert fitted.dropped == 6 and fitted.prompt_tokens == 20
    assert [m["role"] for m in fitted.messages] == ["system", "user", "assistant", "user",
                                                    "assistant", "user"]  # fmt: skip
    assert fitted.messages[1]["content"].startswith("u3")


def test_reply_budget_is_capped_by_what_is_left() -> None:
    fitted = fit(None, convo(0), words, n_ctx=100, max_tokens=1000)
    assert reply_reserve(1000, 100) == 50 and fitted.max_tokens == 99


def test_single_message_that_cannot_fit() -> None:
    with pytest.raises(ContextOverflow, match="takes 41 tokens, and the context window holds 40"):
        fit("s", [{"role": "user", "content": "x " * 40}], words, n_ctx=40, max_tokens=8)


def test_fit_counts_each_candidate_once() -> None:
    calls = []

    def count(messages):
        calls.append(len(messages))
        return words(messages)

    fit(None, convo(200), count, n_ctx=64, max_tokens=16)
    assert len(calls) <= 10  # binary search, not one count per dropped message


def test_fallback_transcript() -> None:
    text = render_fallback([{"role": "system", "content": "Be kind."},
                            {"role": "user", "content": " Hi \n"}])  # fmt: skip
    assert text == "System: Be kind.\nUser: Hi\nAssistant:"
