"""Browser journeys a person takes, in Debian's Chromium against `streamlit run`.

Screenshots of every page land in test-artifacts/screenshots/.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser import (
    AppServer,
    go,
    messages,
    reply_streaming,
    send,
    set_up,
    settle,
    shot,
    unlock,
    wait_idle,
    with_demo,
)
from tests.helpers import write_gguf


def test_first_run_chat_and_history(appliance_home: Path, demo_model: Path, page: Page) -> None:
    with_demo(appliance_home, demo_model)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Library")
        expect(page.get_by_test_id("stDataFrame")).to_contain_text("SmolLM2-135M-Instruct")
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.get_by_text("is loaded (llama.cpp")).to_be_visible(timeout=60_000)
        shot(page, "library")
        expect(page.get_by_test_id("stSidebar")).to_contain_text("llama.cpp")
        go(page, "Chat")
        send(page, "What is the capital of France?")
        reply_streaming(page, 1)
        settle(page)
        # The wording depends on llama.cpp's build (its kernels round differently).
        reply = messages(page).nth(1).get_by_test_id("stChatMessageContent").inner_text()
        shot(page, "chat")
        page.reload()
        unlock(page, server.url)
        expect(messages(page).nth(1).get_by_test_id("stChatMessageContent")).to_have_text(
            reply.strip()
        )
    finally:
        server.stop()


def test_stop_keeps_the_partial_reply(appliance_home: Path, demo_model: Path, page: Page) -> None:
    with_demo(appliance_home, demo_model, max_tokens=8000)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        send(page, "Write a very long story about a dragon, at least 2000 words.")
        reply_streaming(page, 1)  # text of the reply itself, not the "Loading…" notice
        page.get_by_test_id("stChatInputStopButton").click()
        page.wait_for_timeout(500)
        go(page, "Chat")  # the next run shows the stored, partial reply
        expect(page.get_by_text("Stopped: the reply was cut short.")).to_be_visible(timeout=15_000)
        shot(page, "chat-stopped")
    finally:
        server.stop()


def test_wrong_passwords_lead_to_the_delay(appliance_home: Path, page: Page) -> None:
    """The delay after wrong passwords holds across a reload (a new browser session)."""
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Settings")
        page.get_by_role("button", name="Lock now", exact=True).click()
        button = page.get_by_role("button", name="Unlock", exact=True)
        for attempt in range(8):  # 5 free, then waits of 1, 2 and 4 s; 8 s after the 8th
            expect(button).to_be_enabled(timeout=10_000)
            unlock(page, password=f"not the password {attempt}")
            wait_idle(page)
        page.goto(server.url)
        expect(page.get_by_text("Too many wrong passwords. Try again in")).to_be_visible()
        expect(button).to_be_disabled()
        shot(page, "unlock-throttled")
        expect(button).to_be_enabled(timeout=15_000)  # the countdown ends by itself
    finally:
        server.stop()


def test_import_then_chat(
    appliance_home: Path, demo_model: Path, page: Page, tmp_path: Path
) -> None:
    server = AppServer(appliance_home).start()
    outside = tmp_path / "elsewhere" / "demo-copy.gguf"
    outside.parent.mkdir()
    outside.hardlink_to(demo_model)
    try:
        set_up(page, server.url)
        go(page, "Import")
        page.get_by_role("textbox", name="Path").fill(str(outside))
        page.get_by_role("textbox", name="Path").press("Enter")
        expect(page.get_by_text("gguf, llama (metadata)")).to_be_visible()
        page.get_by_role("button", name="Import", exact=True).click()
        expect(page.get_by_text("Added **demo-copy**".replace("**", ""))).to_be_visible(
            timeout=60_000
        )
        shot(page, "import")
        go(page, "Library")
        expect(page.get_by_test_id("stDataFrame")).to_contain_text("demo-copy")
        go(page, "Chat")
        send(page, "Say hello.")
        expect(page.get_by_test_id("stChatMessage").nth(1)).not_to_be_empty(timeout=60_000)
    finally:
        server.stop()


def test_drop_in_while_running(appliance_home: Path, page: Page, tmp_path: Path) -> None:
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Library")
        staged = write_gguf(tmp_path / "dropped.gguf", "qwen2", name="Dropped")
        shutil.copy(staged, appliance_home / "models" / "dropped.gguf")
        expect(page.get_by_test_id("stDataFrame")).to_contain_text("dropped", timeout=15_000)
    finally:
        server.stop()


def test_sessions_share_the_slots_then_queue(
    appliance_home: Path, demo_model: Path, new_page: Callable[[], Page]
) -> None:
    """Two slots: two browser sessions generate at once; a third waits its turn."""
    with_demo(appliance_home, demo_model, max_tokens=8000)
    config = appliance_home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "app.json").write_text('{"parallel_slots": 2}')
    server = AppServer(appliance_home).start()
    first, second, third = new_page(), new_page(), new_page()
    try:
        set_up(first, server.url)
        second.goto(server.url)  # unlocking one browser session does not unlock another
        expect(second.get_by_role("heading", name="Unlock")).to_be_visible()
        expect(second.get_by_role("link", name="Chat")).to_have_count(0)
        unlock(second, server.url)
        expect(second.get_by_role("link", name="Chat")).to_be_visible()
        unlock(third, server.url)
        expect(third.get_by_role("link", name="Chat")).to_be_visible()
        send(first, "Write a very long story about a dragon, at least 2000 words.")
        expect(first.get_by_test_id("stChatMessage").nth(1)).to_contain_text(" ", timeout=60_000)
        send(second, "Write a very long story about a knight, at least 2000 words.")
        # The second reply streams while the first is still generating: no queue.
        expect(second.get_by_test_id("stChatMessage").nth(1)).to_contain_text(" ", timeout=60_000)
        expect(second.get_by_text("2 of 2 replies generating")).to_be_visible(timeout=15_000)
        send(third, "Hello?")
        expect(third.get_by_text("You are number 1 in the queue")).to_be_visible(timeout=15_000)
        shot(third, "chat-queued")
        threading.Event().wait(0.5)
    finally:
        server.stop()
