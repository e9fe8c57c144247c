"""A full journey (set-up, load the demo model, chat) run inside the offline namespace.

Used by test_offline_proof.py: `python tests/offline_journey.py URL`. The browser's own
requests are recorded too (tests/browser.py's Guard): one to any host but the app's, a
console error or a Streamlit exception box ends the journey with exit status 1.
"""

from __future__ import annotations

import sys

from playwright.sync_api import expect, sync_playwright

from tests.browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, VIEWPORT, Guard, origin


def main(url: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        guard = Guard(context, {origin(url)})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_label("Master password").fill(PASSWORD)
        page.get_by_label("Confirm the password").fill(PASSWORD)
        page.get_by_role("button", name="Create vault", exact=True).click()
        page.get_by_role("link", name="Library").click()
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.get_by_text("is loaded (llama.cpp")).to_be_visible(timeout=120_000)
        page.get_by_role("link", name="Import").click()
        expect(page.get_by_text("Drop-in folder")).to_be_visible()
        page.get_by_role("link", name="Chat").click()
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("What is the capital of France?")
        box.press("Enter")
        reply = page.get_by_test_id("stChatMessage").nth(1)
        expect(reply).to_contain_text("Paris", timeout=120_000)
        found = guard.problems()
        browser.close()
    if found:
        sys.exit("the browser saw:\n- " + "\n- ".join(found))
    print(f"journey done ({len(guard.requests)} requests, all to {origin(url)})")


if __name__ == "__main__":
    main(sys.argv[1])
