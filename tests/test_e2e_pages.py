"""Journeys that click everything: every page, button, menu and form, at least once.

Debian's Chromium against `streamlit run`, as a user at 1400 x 1000. The `page` fixture's
guard (tests/browser.py) fails each journey on any Streamlit exception box, any console
or page error, and any request off the app's origin. Screenshots land in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

from appliance import app_settings
from appliance.api.keys import KeyStore
from appliance.library.library import Library
from appliance.paths import current
from tests.browser import (
    DEMO_ID,
    PASSWORD,
    AppServer,
    choose,
    entries_by_name,
    field,
    free_port,
    go,
    messages,
    register,
    reply_streaming,
    send,
    set_up,
    settle,
    shot,
    unlock,
    wait_idle,
    with_demo,
)
from tests.helpers import make_hf_folder, write_gguf

INFER = "(infer from the file)"
NEW_PASSWORD = "Another-long-passphrase-for-2025!"
STORY = "Write a very long story about a dragon, at least 2000 words."


class Soft:
    """Checks of the UI's known defects (issue 10) that let the journey go on when they
    fail, so that one run reports every defect; the test fails at the end if any did."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        try:
            yield
        except (AssertionError, PlaywrightError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            actual = [line for line in lines[1:] if line.startswith("Actual value")]
            self.failed.append(f"{what}: " + " ".join(lines[:1] + actual[:1]))


@pytest.fixture
def soft() -> Iterator[Soft]:
    checks = Soft()
    yield checks
    if checks.failed:
        pytest.fail("the journey found:\n- " + "\n- ".join(checks.failed), pytrace=False)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as a base model: the same weights without a chat template."""
    from tests.conftest import DEMO_MODEL

    out = tmp_path_factory.mktemp("base") / "SmolLM2-base.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force",
         "--remove-metadata", "tokenizer.chat_template", "--general-name", "SmolLM2-base",
         str(DEMO_MODEL), str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def sidebar(page: Page) -> Locator:
    return page.get_by_test_id("stSidebar")


def main(page: Page) -> Locator:
    return page.get_by_role("main")


def conversation(page: Page) -> Locator:
    return page.get_by_role("combobox", name="Conversation", exact=True)


def shown_count_matches(page: Page) -> None:
    """What the conversation bar says is what the page shows (issue 10.6)."""
    wait_idle(page)
    count = messages(page).count()
    expect(conversation(page)).to_have_value(re.compile(rf"· {count} messages?$"), timeout=5000)


def opened(expander: Locator) -> Locator:
    """The expander, opened (a rerun may have closed it)."""
    wait_idle(page := expander.page)
    details = expander.locator("details").first
    if not details.evaluate("d => d.open"):
        expander.locator("summary").first.click()
        wait_idle(page)
    expect(details).to_have_js_property("open", True)
    return expander


def tick(menu: Locator, label: str) -> None:
    """Tick the checkbox called label (and see it ticked: a rerun may reset it)."""
    box = menu.get_by_role("checkbox", name=label)
    if not box.is_checked():
        menu.get_by_text(label, exact=True).click()
        wait_idle(menu.page)
    expect(box).to_be_checked()


def manage(page: Page) -> Locator:
    """The Manage menu of the open conversation, opened."""
    body = page.get_by_test_id("stPopoverBody")
    if not body.is_visible():
        page.get_by_role("button", name="Manage", exact=True).click()
    expect(body).to_be_visible()
    return body


def content(page: Page, index: int) -> str:
    """The text of message index, without its avatar."""
    return messages(page).nth(index).get_by_test_id("stChatMessageContent").inner_text().strip()


def reply_done(page: Page, index: int = 1, timeout: int = 90_000) -> Locator:
    """Wait until the reply at index has arrived and the page has settled."""
    reply = messages(page).nth(index)
    expect(reply).not_to_be_empty(timeout=timeout)
    settle(page, timeout)
    return reply


def cut(locator: Locator) -> list[str]:
    """The parts of an element whose content is clipped (scrolls or is cut off sideways)."""
    return locator.evaluate(
        """el => [el, ...el.querySelectorAll('*')]
            .filter(e => e.scrollWidth > e.clientWidth + 1
                         && getComputedStyle(e).overflowX !== 'visible')
            .map(e => `${e.tagName.toLowerCase()}.${e.className} (${e.innerText.slice(0, 40)}):`
                      + ` ${e.scrollWidth} px in ${e.clientWidth}`)"""
    )


# ---- Chat --------------------------------------------------------------------------------


def test_chat_page_every_control(
    appliance_home: Path, demo_model: Path, page: Page, soft: Soft
) -> None:
    """Settings, send, Regenerate, New, switch, Rename, both exports, Clear, Delete, Stop."""
    with_demo(appliance_home, demo_model, max_tokens=200)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        expect(main(page).get_by_text(re.compile("conversation starts with your first message"))
               ).to_be_visible()  # fmt: skip

        # Chat settings in the sidebar: every control, and they stick across pages (10.5).
        chat_settings = sidebar(page).get_by_test_id("stExpander").filter(has_text="settings")
        prompt = opened(chat_settings).get_by_label("System prompt", exact=True)
        prompt.fill("You are a helpful assistant. Answer briefly.")
        prompt.press("Control+Enter")
        wait_idle(page)
        for label in ("Temperature", "Top p", "Repeat penalty"):
            slider = opened(chat_settings).get_by_role("slider", name=label)
            slider.focus()
            slider.press("ArrowRight")
            slider.press("ArrowLeft")
            wait_idle(page)
        for label, value in (("Top k", "40"), ("Max tokens", "4000"), ("Seed", "42")):
            box = opened(chat_settings).get_by_label(label, exact=True)
            box.fill(value)
            box.press("Enter")
            wait_idle(page)
        shot(page, "chat-settings")
        go(page, "Library")
        go(page, "Chat")
        with soft("10.5 the system prompt is kept after visiting another page"):
            expect(opened(chat_settings).get_by_label("System prompt", exact=True)).to_have_value(
                "You are a helpful assistant. Answer briefly."
            )
        with soft("10.5 max tokens are kept after visiting another page"):
            expect(chat_settings.get_by_label("Max tokens", exact=True)).to_have_value("4000")

        # Send, then Regenerate: the old reply goes, the count follows (10.6).
        send(page, "What is the capital of France?")
        reply_streaming(page, 1)
        reply_done(page)
        with soft("10.6 the message count after a reply"):
            shown_count_matches(page)
        page.get_by_role("button", name="Regenerate the last reply").click()
        page.wait_for_timeout(300)
        with soft("10.6 during Regenerate the old reply is gone"):
            expect(messages(page)).to_have_count(2, timeout=1000)
        reply_done(page)
        expect(messages(page)).to_have_count(2)
        # The wording depends on llama.cpp's build (its kernels round differently).
        france = content(page, 1)
        assert france
        with soft("10.6 the message count after Regenerate"):
            shown_count_matches(page)
        shot(page, "chat")

        # New (10.1), twice: one new conversation, not a trail of empty ones.
        page.get_by_role("button", name="New", exact=True).click()
        wait_idle(page)
        expect(messages(page)).to_have_count(0)
        page.get_by_role("button", name="New", exact=True).click()
        wait_idle(page)
        send(page, "Say hello.")
        reply_done(page)
        with soft("10.6 the message count in a new conversation"):
            shown_count_matches(page)
        conversation(page).click()
        options = page.get_by_role("option")
        with soft("10.1 New leaves no empty conversations behind"):
            expect(options).to_have_count(2)
        expect(options.filter(has_text="capital of France")).to_have_count(1)

        # Switch back to the first conversation.
        options.filter(has_text="capital of France").click()
        wait_idle(page)
        expect(messages(page).nth(1).get_by_test_id("stChatMessageContent")).to_have_text(france)
        with soft("10.6 the message count after switching"):
            shown_count_matches(page)

        # Manage: Rename (the bar shows the new title at once), both exports.
        menu = manage(page)
        menu.get_by_label("Title").fill("Capitals")
        menu.get_by_role("button", name="Rename", exact=True).click()
        wait_idle(page)
        with soft("10.6 the conversation bar shows the new title"):
            expect(conversation(page)).to_have_value(
                re.compile(r"^Capitals · 2 messages$"), timeout=5000
            )
        shot(page, "chat-manage")
        go(page, "Chat")  # a fresh page for the next steps, whatever the bar showed
        with soft("the open conversation stays open when the Chat link is clicked"):
            expect(conversation(page)).to_have_value(re.compile("^Capitals"), timeout=5000)
        if not conversation(page).input_value().startswith("Capitals"):
            choose(page, "Conversation", re.compile("^Capitals"))
        menu = manage(page)
        with page.expect_download() as md:
            menu.get_by_role("button", name="Export as Markdown").click()
        assert france.splitlines()[0] in Path(md.value.path()).read_text()
        menu = manage(page)
        with page.expect_download() as js:
            menu.get_by_role("button", name="Export as JSON").click()
        exported = json.loads(Path(js.value.path()).read_text())
        assert france.splitlines()[0] in json.dumps(exported, ensure_ascii=False)

        # Clear, then Delete (each asks for the tick first).
        menu = manage(page)
        expect(menu.get_by_role("button", name="Clear messages")).to_be_disabled()
        tick(menu, "I really want to delete")
        menu.get_by_role("button", name="Clear messages").click()
        wait_idle(page)
        expect(messages(page)).to_have_count(0)
        with soft("10.6 the message count after Clear"):
            expect(conversation(page)).to_have_value(re.compile(r"· 0 messages$"))
        menu = manage(page)
        tick(menu, "I really want to delete")
        menu.get_by_role("button", name="Delete conversation").click()
        wait_idle(page)
        expect(conversation(page)).not_to_have_value(re.compile("Capitals"))
        expect(messages(page).first).to_contain_text("Say hello.")

        # Stop: the partial reply is kept and marked at once, Regenerate sits below it (10.6).
        send(page, STORY)
        reply_streaming(page, 3)
        page.get_by_test_id("stChatInputStopButton").click()
        wait_idle(page)
        with soft("10.6 a stopped reply is marked at once"):
            expect(page.get_by_text("Stopped: the reply was cut short.")).to_be_visible()
        regenerate = page.get_by_role("button", name="Regenerate the last reply")
        with soft("10.6 one Regenerate button after Stop"):
            expect(regenerate).to_have_count(1)

        def regenerate_below() -> None:
            last, button = messages(page).last.bounding_box(), regenerate.first.bounding_box()
            assert last and button and button["y"] > last["y"], "Regenerate is above the reply"

        with soft("10.6 Regenerate sits below the stopped reply"):
            regenerate_below()
        with soft("10.6 the message count after Stop"):
            shown_count_matches(page)
        shot(page, "chat-stopped")
        go(page, "Chat")  # what is stored
        expect(page.get_by_text("Stopped: the reply was cut short.")).to_be_visible()
        expect(messages(page)).to_have_count(4)
    finally:
        server.stop()


def test_template_less_model_says_so_and_offers_completion(
    appliance_home: Path, base_model: Path, page: Page
) -> None:
    """A base model without a chat template: the chat page says so, next to the model (10.9)."""
    (appliance_home / "models").mkdir(parents=True, exist_ok=True)
    (appliance_home / "models" / base_model.name).hardlink_to(base_model)
    register(appliance_home / "models" / base_model.name, temperature=0.0, seed=42, max_tokens=24)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        notice = main(page).get_by_text(re.compile("no chat template", re.I))
        expect(notice.first).to_be_visible()
        completion = main(page).get_by_role("switch", name=re.compile("completion", re.I))
        completion.locator("xpath=ancestor::label[1]").click()
        wait_idle(page)
        expect(completion).to_be_checked()
        send(page, "The capital of France is")
        reply_done(page)
        shot(page, "chat-base-model")
    finally:
        server.stop()


# ---- Library -----------------------------------------------------------------------------


def table_row(page: Page, text: str) -> Locator:
    return page.get_by_test_id("stDataFrame").locator("tr").filter(has_text=text)


def test_library_page_every_control(
    appliance_home: Path, demo_model: Path, base_model: Path, page: Page, soft: Soft
) -> None:
    """Load, mark, Switch, Unload, Rename, Save defaults, Remove (hide), Remove with files."""
    with_demo(appliance_home, demo_model)
    (appliance_home / "models" / base_model.name).hardlink_to(base_model)
    base_id = register(appliance_home / "models" / base_model.name)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Library")
        table = page.get_by_test_id("stDataFrame")
        expect(table).to_contain_text("SmolLM2-135M-Instruct")
        expect(table).to_contain_text("SmolLM2-base")
        # sha256 and id are in view at 1400 px (10.8): the grid does not scroll sideways.
        with soft("10.8 the library table fits 1400 px"):
            fits(table)

        choose(page, "Model", re.compile("SmolLM2-135M-Instruct"))
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.get_by_text("is loaded (llama.cpp")).to_be_visible(timeout=90_000)
        expect(sidebar(page)).to_contain_text("SmolLM2-135M-Instruct")
        # The loaded model is marked in the table (10.8).
        with soft("10.8 the loaded model is marked"):
            expect(table_row(page, DEMO_ID)).to_contain_text(re.compile("loaded|●|✓|yes", re.I))
        shot(page, "library")

        # Switch: the label is whole (10.8), the other model becomes the active one.
        choose(page, "Model", re.compile("SmolLM2-base"))
        switch = page.get_by_role("button", name=re.compile("^Switch"))
        expect(switch).to_be_visible()
        with soft("10.8 the Switch button's label is whole"):
            fits(switch)
        switch.click()
        expect(page.get_by_text("SmolLM2-base is loaded")).to_be_visible(timeout=90_000)
        expect(sidebar(page)).to_contain_text("SmolLM2-base", timeout=10_000)
        with soft("10.8 the switched-to model is marked"):
            expect(table_row(page, base_id)).to_contain_text(re.compile("loaded|●|✓|yes", re.I))

        # Unload.
        page.get_by_role("button", name="Unload", exact=True).click()
        wait_idle(page)
        expect(sidebar(page)).to_contain_text("No model loaded", timeout=10_000)

        # Rename: the selectors here and on the Chat page show the new name (10.6).
        page.get_by_label("Display name").fill("Plain SmolLM2")
        page.get_by_role("button", name="Rename", exact=True).click()
        wait_idle(page)
        with soft("10.6 the Library's selector shows the new name"):
            expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value(
                re.compile("Plain SmolLM2")
            )
        expect(table).to_contain_text("Plain SmolLM2")
        go(page, "Chat")
        page.get_by_role("combobox", name="Model", exact=True).click()
        with soft("10.6 the Chat's selector shows the new name"):
            expect(page.get_by_role("option", name=re.compile("Plain SmolLM2"))).to_have_count(1)
        page.keyboard.press("Escape")
        go(page, "Library")

        # Chat defaults: every control, saved to the registry.
        choose(page, "Model", re.compile("Plain SmolLM2"))
        opened(page.get_by_test_id("stExpander").filter(has_text="Chat defaults for this model"))
        form = page.get_by_test_id("stForm").filter(has_text="Save defaults")
        form.get_by_label("System prompt", exact=True).fill("Continue the text.")
        slider = form.get_by_role("slider", name="Temperature")
        slider.focus()
        for _ in range(4):
            slider.press("ArrowRight")
        for label in ("Top p", "Repeat penalty"):
            form.get_by_role("slider", name=label).focus()
            form.get_by_role("slider", name=label).press("ArrowLeft")
        form.get_by_label("Max tokens", exact=True).fill("99")
        form.get_by_label("Top k", exact=True).fill("7")
        form.get_by_label("Seed", exact=True).fill("5")
        form.get_by_role("button", name="Save defaults").click()
        wait_idle(page)
        defaults = field(Library().get(base_id), "defaults")
        assert defaults["system_prompt"] == "Continue the text."
        assert (defaults["max_tokens"], defaults["top_k"], defaults["seed"]) == (99, 7, 5)
        assert defaults["temperature"] == pytest.approx(0.7 + 4 * 0.05)
        assert defaults["top_p"] == pytest.approx(0.90)

        # Remove without its files: typed id, no Enter (10.8); it stays hidden (9.3).
        remove = opened(page.get_by_test_id("stExpander").filter(has_text="Remove this model"))
        confirm_remove(page, remove, base_id, soft)
        expect(table).not_to_contain_text("Plain SmolLM2")
        page.wait_for_timeout(6000)  # longer than a watcher pass and a table refresh
        with soft("9.3 a removed model stays removed"):
            expect(table).not_to_contain_text("SmolLM2-base")
        assert (appliance_home / "models" / base_model.name).exists()

        # Remove the demo with its files.
        choose(page, "Model", re.compile("SmolLM2-135M-Instruct"))
        remove = opened(page.get_by_test_id("stExpander").filter(has_text="Remove this model"))
        tick(remove, "Also delete its files from models/")
        confirm_remove(page, remove, DEMO_ID, soft)
        expect(table.filter(has_text="SmolLM2-135M-Instruct")).to_have_count(0)
        assert not (appliance_home / "models" / demo_model.name).exists()
        shot(page, "library-after-remove")
    finally:
        server.stop()


def confirm_remove(page: Page, remove: Locator, model_id: str, soft: Soft) -> None:
    """Type the id and click Remove, with no Enter in between (10.8)."""
    field = remove.get_by_label(re.compile("Type the id"))
    field.press_sequentially(model_id)
    button = remove.get_by_role("button", name="Remove", exact=True)
    with soft("10.8 Remove works without pressing Enter in the id field"):
        button.click(timeout=5000)
        wait_idle(page)
        return
    field.press("Enter")  # so that the journey goes on
    wait_idle(page)
    button.click()
    wait_idle(page)


def fits(locator: Locator) -> None:
    clipped = cut(locator)
    assert not clipped, "content is cut off: " + "; ".join(clipped)


# ---- Import ------------------------------------------------------------------------------


@pytest.fixture
def openai_server(demo_model: Path) -> Iterator[str]:
    """llama.cpp's server as an OpenAI-compatible one on loopback, serving the demo model."""
    from tests.engine_models import LanServer

    with LanServer(demo_model, alias="smollm2-remote", api_key="journey-key",
                   n_threads=1) as lan:  # fmt: skip
        yield lan.url + "/v1"


def import_tab(page: Page, name: str) -> Locator:
    page.get_by_role("tab", name=name).click()
    return page.get_by_role("tabpanel", name=name)


def test_import_page_every_route(
    appliance_home: Path,
    demo_model: Path,
    page: Page,
    tmp_path: Path,
    openai_server: str,
    soft: Soft,
) -> None:
    """Path (copy, link, in place, a bad path), upload, remote server, drop-in (good, bad)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "demo-copy.gguf").hardlink_to(demo_model)
    tiny = write_gguf(outside / "tiny-copy.gguf", "qwen2", name="Tiny copy")
    folder = make_hf_folder(outside / "hf-model")
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Import")
        tab = import_tab(page, "From a path on this machine")

        def from_path(
            path: Path, mode: str, name: str, header: str, backend: str = INFER, arch: str = ""
        ) -> None:
            box = tab.get_by_role("textbox", name="Path")
            box.fill(str(path))
            box.press("Enter")
            wait_idle(page)
            expect(tab.get_by_text(header).first).to_be_visible()
            tab.get_by_text(mode, exact=True).click()
            for label, value in (("Display name", name), ("Architecture", arch)):
                tab.get_by_label(label).fill(value)
                tab.get_by_label(label).press("Enter")
                wait_idle(page)
            tab.get_by_role("combobox", name=re.compile("^Backend")).click()
            page.get_by_role("option", name=backend, exact=True).click()
            wait_idle(page)
            tab.get_by_role("button", name="Import", exact=True).click()
            expect(tab.get_by_text(f"Added {name}")).to_be_visible(timeout=60_000)
            with soft("the path form starts afresh after an import (no stale name or backend)"):
                expect(tab.get_by_label("Display name")).to_have_value("", timeout=3000)

        box = tab.get_by_role("textbox", name="Path")
        box.fill(str(outside / "nothing-here.gguf"))
        box.press("Enter")
        wait_idle(page)
        expect(tab.get_by_test_id("stAlert")).to_be_visible()
        expect(tab.get_by_role("button", name="Import", exact=True)).to_be_disabled()

        from_path(tiny, "Copy into models/", "Tiny copied", "gguf, qwen2")
        # Backend and architecture chosen by hand, once.
        from_path(outside / "demo-copy.gguf", "Hard link into models/", "Demo linked",
                  "gguf, llama", backend="llama.cpp", arch="llama")  # fmt: skip
        shot(page, "import")
        from_path(folder, "Use in place", "HF in place", "hf-folder, llama")
        assert (appliance_home / "models" / "tiny-copy.gguf").is_file()
        assert (appliance_home / "models" / "demo-copy.gguf").stat().st_ino == (
            demo_model.stat().st_ino
        )
        hf_entry = entries_by_name()["HF in place"]
        assert field(hf_entry, "backend") == "transformers"
        assert field(hf_entry, "external")

        # Upload from the browser.
        tab = import_tab(page, "Upload from the browser")
        upload = write_gguf(tmp_path / "uploaded.gguf", "llama", name="Uploaded")
        tab.locator("input[type=file]").set_input_files(str(upload))
        tab.get_by_label("Display name").fill("Uploaded model")
        tab.get_by_label("Display name").press("Enter")
        wait_idle(page)
        tab.get_by_role("button", name="Add uploaded file").click()
        expect(tab.get_by_text("Added Uploaded model")).to_be_visible(timeout=60_000)
        shot(page, "import-upload")

        # An OpenAI-compatible server: first a wrong address, then the real one.
        tab = import_tab(page, "OpenAI-compatible server")
        url_box = tab.get_by_label("Base URL")
        url_box.fill(f"http://127.0.0.1:{free_port()}/v1")
        url_box.press("Enter")
        wait_idle(page)
        tab.get_by_role("button", name="List its models").click()
        expect(tab.get_by_text(re.compile("connection was refused"))).to_be_visible()
        url_box.fill(openai_server)
        url_box.press("Enter")
        tab.get_by_label("API key (optional)").fill("journey-key")
        tab.get_by_label("API key (optional)").press("Enter")
        wait_idle(page)
        tab.get_by_role("button", name="List its models").click()
        wait_idle(page)
        expect(tab.get_by_text("smollm2-remote").first).to_be_visible()
        tab.get_by_role("button", name="Add to the library").click()
        expect(tab.get_by_text(re.compile("Added .*smollm2-remote"))).to_be_visible()
        shot(page, "import-remote")

        # Drop-in: a good file registers itself, a bad one is rejected with its reason, once.
        models = appliance_home / "models"
        shutil.copy(write_gguf(tmp_path / "dropped.gguf", "qwen2", name="Dropped"),
                    models / "dropped.gguf")  # fmt: skip
        (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 60)
        shutil.copy(tmp_path / "broken.gguf", models / "broken.gguf")
        panel = main(page)
        expect(panel.get_by_text(re.compile("dropped.gguf")).first).to_be_visible(timeout=20_000)
        expect(panel.get_by_text(re.compile("broken.gguf")).first).to_be_visible(timeout=20_000)
        page.wait_for_timeout(5000)  # a few refreshes of the panel
        lines = [t for t in panel.get_by_test_id("stText").all_inner_texts() if "broken.gguf" in t]
        with soft("9.8 each drop-in event is printed once"):
            assert len(lines) == 1, f"the rejection is printed {len(lines)} times: {lines}"
            assert lines[0].count("broken.gguf") == 1, lines[0]
        shot(page, "import-drop-in")

        # Everything is in the Library; the remote model loads and answers through /v1.
        go(page, "Library")
        table = page.get_by_test_id("stDataFrame")
        for name in ("Tiny copied", "Demo linked", "HF in place", "Uploaded model",
                     "smollm2-remote", "dropped"):  # fmt: skip
            expect(table).to_contain_text(name)
        with soft("a remote model has no file to hash: its sha256 is not 'hashing…' for ever"):
            expect(table_row(page, "smollm2-remote")).not_to_contain_text("hashing", timeout=3000)
        choose(page, "Model", re.compile("smollm2-remote"))
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.get_by_text(re.compile("smollm2-remote.* is loaded"))).to_be_visible(
            timeout=60_000
        )
        go(page, "Chat")
        choose(page, "Model", re.compile("smollm2-remote"))
        send(page, "What is the capital of France?")
        reply_done(page)
    finally:
        server.stop()


# ---- Settings ----------------------------------------------------------------------------


def test_settings_page_every_control(appliance_home: Path, demo_model: Path, page: Page) -> None:
    """Auto-lock, keep-alive, threads, context, replies at once, switch rule (saved, kept,
    used), API keys (created, shown once, listed, revoked), password change, Lock."""
    with_demo(appliance_home, demo_model)
    server = AppServer(appliance_home).start()
    try:
        set_up(page, server.url)
        go(page, "Library")  # before any load: the kernels the build ships (12.2)
        expect(main(page).get_by_text("llama.cpp CPU kernels shipped:")).to_be_visible()
        go(page, "Settings")
        form = page.get_by_test_id("stForm").filter(has_text="Save settings")
        fields = {
            "Lock the vault after this many idle minutes.": "45",
            "Unload an idle model after this many minutes": "5",
            "CPU threads for inference": "1",
            "Context size in tokens": "1024",
            "Replies generated at once for a GGUF model": "3",
        }
        for label, value in fields.items():
            form.get_by_label(re.compile("^" + re.escape(label))).fill(value)
        form.get_by_test_id("stNumberInputStepUp").nth(1).click()  # keep-alive 5 -> 6
        form.get_by_test_id("stNumberInputStepDown").nth(4).click()  # replies at once 3 -> 2
        # The switch rule (12.3): two choices, "wait" at first; pick "stop at once".
        rule = form.get_by_role("radiogroup")
        expect(rule.get_by_role("radio")).to_have_count(2)
        expect(rule.get_by_role("radio", name="Wait for the running replies")).to_be_checked()
        form.get_by_text("Stop the running replies at once", exact=True).click()
        expect(rule.get_by_role("radio", name="Stop the running replies at once")).to_be_checked()
        form.get_by_role("button", name="Save settings").click()
        saved_note = page.get_by_text(re.compile("^Saved: "))
        expect(saved_note).to_be_visible()
        for change in ("auto-lock 15 → 45 (now)", "keep-alive 30 → 6 (now)",
                       "switch rule wait → stop at once (now)",
                       "threads auto → 1 (from the next load)",
                       "context auto → 1024 (from the next load)",
                       "replies at once 4 → 2 (from the next load)"):  # fmt: skip
            expect(saved_note).to_contain_text(change)
        shot(page, "settings")
        saved = app_settings.load(current())
        assert (saved["keep_alive_minutes"], saved["n_threads"], saved["n_ctx"]) == (6, 1, 1024)
        assert (saved["parallel_slots"], saved["switch_rule"]) == (2, "cancel")

        # Kept across pages (10.5) and used by the next load.
        go(page, "Chat")
        go(page, "Settings")
        form = page.get_by_test_id("stForm").filter(has_text="Save settings")
        expect(form.get_by_label(re.compile("^Lock the vault"))).to_have_value("45")
        expect(form.get_by_label(re.compile("^Unload an idle model"))).to_have_value("6")
        expect(form.get_by_label(re.compile("^Replies generated at once"))).to_have_value("2")
        expect(form.get_by_role("radio", name="Stop the running replies at once")).to_be_checked()
        go(page, "Library")
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.get_by_text(re.compile(r"is loaded \(llama\.cpp, 1 threads?, context 1024"))
               ).to_be_visible(timeout=90_000)  # fmt: skip
        # Two slots from the settings; the sidebar counts them (12.5); the hardware panel
        # names the kernels the server picked (12.2).
        expect(sidebar(page)).to_contain_text("0 of 2 replies generating", timeout=10_000)
        go(page, "Chat")
        go(page, "Library")
        expect(main(page)).to_contain_text(
            re.compile(r"llama\.cpp CPU kernels: \S+, picked for this CPU when"), timeout=30_000
        )
        go(page, "Settings")

        # API keys (13.3): create one, shown once, listed; revoke it after the confirm step.
        key_form = page.get_by_test_id("stForm").filter(has_text="Create key")
        key_form.get_by_label("Name of the new key").fill("journey editor")
        key_form.get_by_role("button", name="Create key").click()
        expect(page.get_by_text(re.compile("^Key “journey editor” created"))).to_be_visible()
        secret = page.get_by_test_id("stCode").inner_text().strip()
        assert re.fullmatch(r"ols_[A-Za-z0-9_-]{43}", secret), secret
        assert KeyStore(current()).verify(secret).name == "journey editor"
        table = main(page).get_by_test_id("stDataFrame")
        expect(table).to_contain_text("journey editor")
        expect(table).to_contain_text(secret[:12] + "…")
        shot(page, "settings-api-key")
        go(page, "Chat")
        go(page, "Settings")  # shown once: gone when the page is drawn again
        expect(main(page).get_by_text("journey editor").first).to_be_visible()
        expect(page.get_by_test_id("stCode")).to_have_count(0)
        revoke = opened(main(page).get_by_test_id("stExpander").filter(has_text="Revoke journey"))
        revoke.get_by_label("Type the name “journey editor” to confirm").fill("journey")
        revoke.get_by_role("button", name="Revoke").click()
        expect(page.get_by_text(re.compile("to confirm; nothing was revoked"))).to_be_visible()
        assert KeyStore(current()).any()
        revoke = opened(main(page).get_by_test_id("stExpander").filter(has_text="Revoke journey"))
        revoke.get_by_label("Type the name “journey editor” to confirm").fill("journey editor")
        revoke.get_by_role("button", name="Revoke").click()
        expect(page.get_by_text("No API keys yet: the API is off.")).to_be_visible()
        settle(page)  # the rerun after Revoke has ended: no element of the earlier run left
        assert not KeyStore(current()).any() and KeyStore(current()).verify(secret) is None

        # Change the password: wrong current, differing, weak (10.3), then a good one.
        pw_form = page.get_by_test_id("stForm").filter(has_text="Change password")

        def change(old: str, new: str, confirm: str) -> None:
            pw_form.get_by_label("Current password").fill(old)
            pw_form.get_by_label("New password", exact=True).fill(new)
            pw_form.get_by_label("Confirm the new password").fill(confirm)
            pw_form.get_by_role("button", name="Change password").click()
            wait_idle(page)

        change("not the password", NEW_PASSWORD, NEW_PASSWORD)
        expect(page.get_by_text(re.compile("wrong password", re.I))).to_be_visible()
        change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
        expect(page.get_by_text("The new passwords differ")).to_be_visible()
        change(PASSWORD, "password", "password")
        expect(page.get_by_text(re.compile("too weak|stronger", re.I)).first).to_be_visible()
        expect(page.get_by_text("Password changed")).to_have_count(0)
        change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        expect(page.get_by_text("Password changed")).to_be_visible()

        # Lock now; the old password no longer opens, the new one does.
        page.get_by_role("button", name="Lock now").click()
        expect(page.get_by_role("heading", name="Unlock")).to_be_visible()
        expect(page.get_by_role("link", name="Settings")).to_have_count(0)
        unlock(page, password=PASSWORD)
        expect(page.get_by_text(re.compile("wrong password", re.I))).to_be_visible()
        unlock(page, password=NEW_PASSWORD)
        expect(page.get_by_role("link", name="Settings")).to_be_visible()
    finally:
        server.stop()


# ---- Unlock ------------------------------------------------------------------------------


def test_unlock_page_set_up_reload_deep_link_and_throttle(appliance_home: Path, page: Page) -> None:
    """Weak and differing passwords refused (10.3); reload and deep link (10.7); the
    throttle's countdown ends by itself (10.4)."""
    server = AppServer(appliance_home).start()
    try:
        page.goto(server.url)
        expect(page.get_by_role("heading", name="Welcome")).to_be_visible()
        page.get_by_label("Master password", exact=True).fill("password")
        page.get_by_label("Confirm the password", exact=True).fill("password")
        page.get_by_role("button", name="Create vault").click()
        wait_idle(page)
        expect(page.get_by_text(re.compile("too weak|stronger", re.I)).first).to_be_visible()
        expect(page.get_by_role("link", name="Chat")).to_have_count(0)
        assert not (appliance_home / "config" / "settings.json").exists()
        shot(page, "unlock-weak-password")
        page.get_by_label("Master password", exact=True).fill(PASSWORD)
        page.get_by_label("Confirm the password", exact=True).fill(PASSWORD + "!")
        page.get_by_role("button", name="Create vault").click()
        expect(page.get_by_text("The two passwords differ")).to_be_visible()
        page.get_by_label("Confirm the password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Create vault").click()
        expect(page.get_by_role("link", name="Chat")).to_be_visible()

        # A deep link after a reload: the unlock page says why, no "Page not found", and
        # unlocking opens the page asked for.
        page.goto(server.url + "/library")
        expect(page.get_by_role("heading", name="Unlock")).to_be_visible()
        expect(main(page).get_by_text(re.compile("reload", re.I)).first).to_be_visible()
        page.wait_for_timeout(1000)
        expect(page.get_by_text("Page not found")).to_have_count(0)
        shot(page, "unlock")
        unlock(page)
        expect(page.get_by_role("heading", name="Model library")).to_be_visible()
        assert page.url.rstrip("/").endswith("/library"), page.url

        # Seven wrong passwords: each wait ends by itself, without a reload.
        go(page, "Settings")
        page.get_by_role("button", name="Lock now").click()
        button = page.get_by_role("button", name="Unlock", exact=True)
        for attempt in range(7):
            expect(button).to_be_enabled(timeout=15_000)
            unlock(page, password=f"wrong password {attempt}")
            wait_idle(page)
        expect(page.get_by_text("Too many wrong passwords. Try again in")).to_be_visible()
        expect(button).to_be_disabled()
        shot(page, "unlock-throttled")
        expect(button).to_be_enabled(timeout=15_000)
        expect(page.get_by_text("Too many wrong passwords. Try again in")).to_have_count(0)
        unlock(page)
        expect(page.get_by_role("link", name="Chat")).to_be_visible()
    finally:
        server.stop()


# ---- The keyboard alone ------------------------------------------------------------------


def tab_to(page: Page, name: str | re.Pattern[str], most: int = 60) -> None:
    """Press Tab until the focused element's label or text matches name."""
    pattern = name if isinstance(name, re.Pattern) else re.compile(f"^{re.escape(name)}$")
    seen = []
    for _ in range(most):
        page.keyboard.press("Tab")
        label = page.evaluate(
            """() => { const e = document.activeElement; if (!e) return "";
                return (e.getAttribute("aria-label") || e.innerText || e.value || "").trim(); }"""
        )
        seen.append(label)
        if pattern.search(label):
            return
    raise AssertionError(f"Tab never reached {pattern.pattern!r}; focus went: {seen}")


def test_keyboard_only_journey(appliance_home: Path, demo_model: Path, page: Page) -> None:
    """Set-up with Tab between the fields (10.2), load, chat, lock and unlock: keys only."""
    with_demo(appliance_home, demo_model, max_tokens=64)
    server = AppServer(appliance_home).start()
    keys = page.keyboard
    try:
        page.goto(server.url)
        wait_idle(page)
        tab_to(page, "Master password")
        keys.type(PASSWORD)
        tab_to(page, "Confirm the password")  # over the show-password button
        keys.type(PASSWORD)
        tab_to(page, "Create vault")
        keys.press("Enter")
        expect(page.get_by_role("link", name="Chat")).to_be_visible()

        tab_to(page, "Library")
        keys.press("Enter")
        wait_idle(page)
        expect(page.get_by_role("heading", name="Model library")).to_be_visible()
        expect(page.get_by_role("button", name="Load", exact=True)).to_be_visible()  # looking only
        tab_to(page, "Load")
        keys.press("Enter")
        expect(page.get_by_text("is loaded (llama.cpp")).to_be_visible(timeout=90_000)

        tab_to(page, "Chat")
        keys.press("Enter")
        wait_idle(page)
        tab_to(page, re.compile("^Message "))
        keys.type("What is the capital of France?")
        keys.press("Enter")
        reply = reply_done(page).get_by_test_id("stChatMessageContent").inner_text().strip()

        tab_to(page, "Settings")
        keys.press("Enter")
        wait_idle(page)
        tab_to(page, "Lock now")
        keys.press("Enter")
        expect(page.get_by_role("heading", name="Unlock")).to_be_visible()
        tab_to(page, "Master password")
        keys.type(PASSWORD)
        keys.press("Enter")
        expect(page.get_by_role("heading", name="Settings")).to_be_visible()  # where it locked
        tab_to(page, "Chat")
        keys.press("Enter")
        wait_idle(page)
        resumed = messages(page).nth(1).get_by_test_id("stChatMessageContent")
        expect(resumed).to_have_text(reply)  # the conversation resumes
    finally:
        server.stop()


def test_guard_sees_off_origin_requests(page: Page, app_server: AppServer) -> None:
    """The guard itself: a request to another host is recorded and blocked."""
    from tests.browser import GUARDS

    page.goto(app_server.url)
    wait_idle(page)
    page.evaluate("() => fetch('http://192.0.2.1/beacon').catch(() => null)")
    page.evaluate("() => console.error('a console error')")
    guard = GUARDS[-1]
    found = guard.problems()
    assert any("192.0.2.1/beacon" in f for f in found), found
    assert any("a console error" in f for f in found), found
    guard.off_origin.clear()
    guard.console_errors.clear()
