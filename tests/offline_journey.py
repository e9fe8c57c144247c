"""A full journey (set-up, load the demo model, chat) run inside the offline namespace,
then an API call (a key, a streamed /v1/chat/completions).

Used by test_offline_proof.py: `python tests/offline_journey.py URL`. The browser's own
requests are recorded too (tests/browser.py's Guard): one to any host but the app's, a
console error or a Streamlit exception box ends the journey with exit status 1.
"""

from __future__ import annotations

import json
import sys
import urllib.request

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
    api_call(url)


def api_call(url: str) -> None:
    """A key made as `appliance api-keys create` makes it, then a streamed chat."""
    from appliance.api.keys import KeyStore
    from appliance.library.library import Library

    _key, secret = KeyStore().create("offline proof")
    model = Library().entries()[0].id
    body = {"model": model, "stream": True, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as answer:
        events = [line for line in answer.read().decode().splitlines() if line.startswith("data:")]
    text = "".join(
        (json.loads(e[5:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    if events[-1] != "data: [DONE]" or "Paris" not in text:
        sys.exit(f"the API answered {events!r}")
    print(f"api done ({len(events)} events: {text!r})")


if __name__ == "__main__":
    main(sys.argv[1])
