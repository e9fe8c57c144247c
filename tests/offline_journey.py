"""A full journey (set-up, load the demo model, chat) run inside the offline namespace.

Used by test_offline_proof.py: `python tests/offline_journey.py URL`.
"""

from __future__ import annotations

import sys

from playwright.sync_api import expect, sync_playwright

from tests.browser import CHROMIUM, CHROMIUM_ARGS

PASSWORD = "correct horse battery staple"


def main(url: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
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
        browser.close()
    print("journey done")


if __name__ == "__main__":
    main(sys.argv[1])
