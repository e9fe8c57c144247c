"""The container smoke's browser journey: Debian's Chromium, driven by Playwright.

scripts/container-smoke runs it inside its loopback-only network namespace, twice:

- ``chat``: first-run set-up of the master password, load the demo model on the Library
  page, ask a question on the Chat page and wait for the streamed reply;
- ``history`` (after ``compose down`` and ``up``): unlock in a fresh browser context; the
  conversation resumes by itself, with the same question and the same reply.

Every request the page makes is recorded; one to a host other than the app's (a remote
font or icon, say) fails the phase, and is blocked so it never leaves the box.

The reply is kept in the --state file between the phases. Screenshots go to
<artifacts>/container-<phase>.png, on failure too. Exit status 1 with one line that says
which step failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]  # fmt: skip
PASSWORD = "container smoke: correct horse battery staple"  # noqa: S105 (a throwaway vault)
QUESTION = "What is the capital of France?"
MIN_REPLY_CHARS = 3
LOAD_TIMEOUT_MS = 120_000
REPLY_TIMEOUT_MS = 120_000
IDLE_TIMEOUT_MS = 300_000
# The second chat message holds reply text (not only the "number 1 in the queue" notice).
REPLY_SHOWN_JS = """n => {
    const m = document.querySelectorAll('[data-testid="stChatMessage"]');
    if (m.length < 2) return false;
    const parts = [...m[1].querySelectorAll('[data-testid="stMarkdownContainer"]')]
        .filter(e => !e.closest('[data-testid="stAlert"]'));
    return parts.map(e => e.innerText).join("").trim().length >= n;
}"""


T = TypeVar("T")
LOCAL_SCHEMES = ("data", "blob", "about")


class OffOrigin:
    """Records (and blocks) every request of a browser context to a host but the app's."""

    def __init__(self, context, url: str) -> None:
        self.app = urlsplit(url).netloc
        self.seen: list[str] = []
        context.on("request", lambda request: self._check(request.url))
        context.route(self._leaves, lambda route: route.abort("blockedbyclient"))

    def _leaves(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme not in LOCAL_SCHEMES and parts.netloc != self.app

    def _check(self, url: str) -> None:
        if self._leaves(url):
            self.seen.append(url)


class StepFailed(Exception):
    """A step of the journey did not happen; the message says which."""


def step(name: str, action: Callable[[], T]) -> T:
    """Run one step and return its result; a Playwright failure becomes a StepFailed."""
    print(f"  browser: {name}", flush=True)
    try:
        return action()
    except (PlaywrightError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StepFailed(f"{name}: {first}") from exc


def wait_idle(page: Page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


def alerts(page: Page) -> str:
    """The text of every error or warning box on the page, for failure messages."""
    try:
        texts = page.get_by_test_id("stAlert").all_inner_texts()
    except PlaywrightError:
        return ""
    return " | ".join(" ".join(t.split()) for t in texts if t.strip())


def go(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    wait_idle(page)


def choose_model(page: Page) -> None:
    """Pick the demo model in the page's "Model" box (the library holds a drop-in too)."""
    combo = page.get_by_role("combobox", name="Model", exact=True)
    combo.click()
    page.get_by_role("option", name=re.compile("SmolLM2")).first.click()
    wait_idle(page)
    expect(combo).to_have_value(re.compile("SmolLM2"))


def set_up(page: Page, url: str) -> None:
    step(f"open {url}", lambda: page.goto(url))
    step('first-run page titled "Welcome"',
         lambda: expect(page.get_by_role("heading", name="Welcome")).to_be_visible())  # fmt: skip

    def type_twice() -> None:
        page.get_by_label("Master password").fill(PASSWORD)
        page.get_by_label("Confirm the password").fill(PASSWORD)

    step("type the password twice", type_twice)
    step("create the vault", lambda: page.get_by_role("button", name="Create vault").click())
    step("unlocked after set-up (the Chat link shows)",
         lambda: expect(page.get_by_role("link", name="Chat")).to_be_visible())  # fmt: skip


def unlock(page: Page, url: str) -> None:
    step(f"open {url}", lambda: page.goto(url))
    step('unlock page titled "Unlock"',
         lambda: expect(page.get_by_role("heading", name="Unlock")).to_be_visible())  # fmt: skip
    step("type the password", lambda: page.get_by_label("Master password").fill(PASSWORD))
    step("unlock", lambda: page.get_by_role("button", name="Unlock", exact=True).click())
    step("unlocked (the Chat link shows)",
         lambda: expect(page.get_by_role("link", name="Chat")).to_be_visible())  # fmt: skip


def load_demo(page: Page) -> None:
    step("open the Library page", lambda: go(page, "Library"))
    step("select the demo model", lambda: choose_model(page))
    step("click Load", lambda: page.get_by_role("button", name="Load", exact=True).click())
    step(
        f'"is loaded (llama.cpp" within {LOAD_TIMEOUT_MS // 1000} s',
        lambda: expect(page.get_by_text("is loaded (llama.cpp")).to_be_visible(
            timeout=LOAD_TIMEOUT_MS
        ),
    )


def content(page: Page, index: int) -> str:
    """The text of chat message index, without its avatar."""
    message = page.get_by_test_id("stChatMessage").nth(index)
    return message.get_by_test_id("stChatMessageContent").inner_text().strip()


def conversation(page: Page) -> Locator:
    return page.get_by_role("combobox", name="Conversation", exact=True)


def chat(page: Page) -> tuple[str, bool]:
    """Ask the question; the stored reply and whether it was seen while streaming."""
    step("open the Chat page", lambda: go(page, "Chat"))
    step("the demo model is the chat's model", lambda: choose_model(page))
    box = page.get_by_test_id("stChatInputTextArea")
    step("type the question", lambda: box.fill(QUESTION))
    step("send it with Enter", lambda: box.press("Enter"))
    step(
        f"reply text (at least {MIN_REPLY_CHARS} characters, not the queue notice)",
        lambda: page.wait_for_function(REPLY_SHOWN_JS, arg=MIN_REPLY_CHARS,
                                       timeout=REPLY_TIMEOUT_MS),
    )  # fmt: skip
    stop = page.get_by_test_id("stChatInputStopButton")
    streaming = stop.is_visible()
    stored = re.compile(r"· 2 messages$")
    step(
        'the reply ends and is stored (the conversation has "2 messages")',
        lambda: expect(conversation(page)).to_have_value(stored, timeout=IDLE_TIMEOUT_MS),
    )
    step("no Stop button left", lambda: expect(stop).to_be_hidden())
    step("the run is over", lambda: wait_idle(page))
    question = page.get_by_test_id("stChatMessage").nth(0)
    step("the question is the first message", lambda: expect(question).to_contain_text(QUESTION))
    text = step("read the stored reply", lambda: content(page, 1))
    if len(text) < MIN_REPLY_CHARS:
        raise StepFailed(f"the stored reply is empty or too short: {text!r}")
    return text, streaming


def history(page: Page, expected_reply: str) -> None:
    step("the Chat page", lambda: wait_idle(page))
    step("the demo model is the chat's model", lambda: choose_model(page))
    step(
        "the earlier conversation resumes by itself",
        lambda: expect(conversation(page)).to_have_value(f"{QUESTION} · 2 messages"),
    )
    messages = page.get_by_test_id("stChatMessage")
    step("the earlier question is shown",
         lambda: expect(messages.nth(0)).to_contain_text(QUESTION))  # fmt: skip
    step("the earlier reply is shown", lambda: expect(messages.nth(1)).to_be_visible())
    text = step("read the resumed reply", lambda: content(page, 1))
    if text != expected_reply:
        raise StepFailed(f"the resumed reply differs: {text!r}, before: {expected_reply!r}")


def journey(page: Page, phase: str, url: str, state: Path) -> str:
    if phase == "chat":
        set_up(page, url)
        load_demo(page)
        reply, streaming = chat(page)
        state.write_text(json.dumps({"reply": reply}))
        seen = "seen while streaming" if streaming else "complete when first seen"
        return f"set up, loaded the demo, reply ({seen}): {reply[:80]!r}"
    try:
        expected = json.loads(state.read_text())["reply"]
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"no reply from the chat phase in {state}: {exc}") from exc
    unlock(page, url)
    history(page, expected)
    return f"unlocked again; the conversation resumed with the same reply ({len(expected)} chars)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["chat", "history"])
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--artifacts", type=Path, required=True, help="screenshots go here")
    parser.add_argument("--state", type=Path, required=True, help="the reply, between phases")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"browser ({args.phase}): {CHROMIUM} is missing: apt-get install chromium",
              file=sys.stderr)  # fmt: skip
        return 1
    args.artifacts.mkdir(parents=True, exist_ok=True)
    shot = args.artifacts / f"container-{args.phase}.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        off_origin = OffOrigin(context, args.url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            summary = journey(page, args.phase, args.url, args.state)
            if off_origin.seen:
                urls = ", ".join(dict.fromkeys(off_origin.seen))
                raise StepFailed(f"requests off the app's origin {off_origin.app}: {urls}")
        except StepFailed as exc:
            boxes = alerts(page)
            page.screenshot(path=str(shot), full_page=True)
            print(f"browser ({args.phase}) failed at: {exc}", file=sys.stderr)
            if boxes:
                print(f"  the page shows: {boxes}", file=sys.stderr)
            print(f"  screenshot: {shot}", file=sys.stderr)
            return 1
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"browser ({args.phase}): {summary}; screenshot {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
