"""End-to-end fixtures: the real app under `streamlit run`, driven by Debian's Chromium.

Every page a test opens (the `page` fixture, or `new_page` for a second browser session)
is watched by a `Guard`, which fails the test at teardown on:

- any request the page makes to a host other than the app's own origin (recorded for
  the whole browser context, and aborted so that nothing leaves the box);
- any browser console error and any uncaught page error;
- any Streamlit exception box (`[data-testid="stException"]`), even one that shows only
  for a moment: a MutationObserver in the page reports each one as it appears.

Screenshots go to test-artifacts/screenshots/ (git-ignored); look at them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from appliance.paths import APP_ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = APP_ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1000}
# A strong master password (set-up refuses weak ones); the journeys share it.
PASSWORD = "correct-Horse-battery-staple-42"
DEMO_ID = "smollm2-135m-instruct.q4_1"

# A loaded 2-core machine is slow to re-render; 5 s (Playwright's default) is too tight.
expect.set_options(timeout=20_000)

# Streamlit's frontend finds the server's base path by probing each parent of the page's
# path: a deep link (/library) first asks /library/_stcore/health and host-config, gets a
# 404, then asks /_stcore/...; Chromium logs each 404. Expected, and on the app's origin.
BASE_PATH_PROBE = re.compile(r"^https?://[^/]+/.+/_stcore/(health|host-config)$")

# Reports each Streamlit exception box once, as it appears, through the console.
EXCEPTION_PREFIX = "[guard] Streamlit exception box: "
EXCEPTION_WATCH = """(() => {
    const seen = new WeakSet();
    const report = () => {
        for (const box of document.querySelectorAll('[data-testid="stException"]')) {
            if (seen.has(box)) continue;
            seen.add(box);
            console.error(PREFIX + (box.innerText || "").replace(/\\s+/g, " ").slice(0, 400));
        }
    };
    new MutationObserver(report).observe(document, {childList: true, subtree: true});
})();""".replace("PREFIX", json.dumps(EXCEPTION_PREFIX))


def origin(url: str) -> str | None:
    """host:port of an http(s)/ws(s) URL; None for URLs that never leave the page."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error", "javascript"):
        return None
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(parts.scheme)
    return f"{parts.hostname}:{parts.port or default}"


class Guard:
    """Records what a browser context does that no journey may do (see the module doc).

    `allowed` holds the app's origins ("127.0.0.1:PORT"); it is read at each request, so
    a server started after the guard is covered too.
    """

    def __init__(self, context: BrowserContext, allowed: set[str]) -> None:
        self.context = context
        self.allowed = allowed
        self.requests: list[str] = []
        self.off_origin: list[str] = []
        self.console_errors: list[str] = []
        self.exceptions: list[str] = []
        self.page_errors: list[str] = []
        self.frozen = False
        context.add_init_script(EXCEPTION_WATCH)
        context.on("request", lambda request: self._request(request.url))
        context.route(self._leaves, lambda route: route.abort("blockedbyclient"))
        context.on("page", self._attach)
        for page in context.pages:
            self._attach(page)

    def _leaves(self, url: str) -> bool:
        host = origin(url)
        return host is not None and host not in self.allowed

    def _request(self, url: str) -> None:
        self.requests.append(url)
        if self._leaves(url):
            self.off_origin.append(url)

    def _attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.frozen or self.page_errors.append(str(error)))
        page.on("websocket", lambda ws: self._request(ws.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error" or self.frozen:
            return
        text = message.text
        if text.startswith(EXCEPTION_PREFIX):
            self.exceptions.append(text[len(EXCEPTION_PREFIX) :])
        elif not self._blocked_echo(text) and not self._base_path_probe(message):
            self.console_errors.append(f"{text} ({message.location.get('url', '?')})")

    def _blocked_echo(self, text: str) -> bool:
        """Chromium's console line for a request we aborted: already counted as off-origin."""
        return "ERR_BLOCKED_BY_CLIENT" in text and bool(self.off_origin)

    def _base_path_probe(self, message: ConsoleMessage) -> bool:
        url = message.location.get("url", "")
        return (
            message.text.startswith(
                "Failed to load resource: the server responded with a status of 404"
            )
            and bool(BASE_PATH_PROBE.match(url))
            and origin(url) in self.allowed
        )

    def flush(self) -> None:
        """Deliver the events the browser has sent so far (they arrive with a reply)."""
        for page in self.context.pages:
            with contextlib.suppress(PlaywrightError):
                page.evaluate("0")

    def freeze(self) -> None:
        """Stop counting console and page errors: the server is going away on purpose."""
        self.flush()
        self.frozen = True

    def problems(self) -> list[str]:
        self.flush()
        for page in self.context.pages:  # a box present now, in case the observer missed it
            try:
                boxes = page.locator("[data-testid='stException']").all_inner_texts()
            except PlaywrightError:
                boxes = []
            for text in boxes:
                text = " ".join(text.split())[:400]
                if text not in self.exceptions and not self.frozen:
                    self.exceptions.append(text)
        found = [f"request off the app's origin: {url}" for url in dict.fromkeys(self.off_origin)]
        found += [f"Streamlit exception box: {text}" for text in self.exceptions]
        found += [f"uncaught page error: {text}" for text in self.page_errors]
        found += [f"console error: {text}" for text in self.console_errors]
        return found

    def check(self) -> None:
        found = self.problems()
        assert not found, "the browser saw:\n- " + "\n- ".join(found)


# Every guard of this process, so that stopping a server can freeze them first.
GUARDS: list[Guard] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`streamlit run appliance_server.py` (the UI and the /v1 API) on a free loopback
    port, with its own home; `scheme="https"` with `tls=(cert, key)`.

    `AppServer.origins` holds the origin of every server started in this process: the
    only hosts a guarded page may talk to.
    """

    origins: set[str] = set()

    def __init__(self, home: Path, env: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:  # fmt: skip
        self.home = home
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = home / "streamlit.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> AppServer:
        env = {**os.environ, "APPLIANCE_HOME": str(self.home), **self.extra_env}
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP_ROOT / "appliance_server.py"),
               "--server.port", str(self.port), "--server.address", "127.0.0.1"]  # fmt: skip
        if self.tls:
            cmd += ["--server.sslCertFile", str(self.tls[0]), "--server.sslKeyFile",
                    str(self.tls[1])]  # fmt: skip
        self.home.mkdir(parents=True, exist_ok=True)
        AppServer.origins.add(origin(self.url))
        self.proc = subprocess.Popen(cmd, cwd=APP_ROOT, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                context = ssl._create_unverified_context() if self.tls else None
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1, context=context)
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"streamlit did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        for guard in GUARDS:  # the pages lose their connection now: not an error
            guard.freeze()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def app_server(appliance_home: Path) -> Iterator[AppServer]:
    server = AppServer(appliance_home).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def guarded_page(browser: Browser, allowed: set[str] | None = None) -> tuple[Page, Guard]:
    """A page in a fresh browser context (its own Streamlit session), with its guard."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    guard = Guard(context, AppServer.origins if allowed is None else allowed)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page, guard


@pytest.fixture
def new_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[], Page]]:
    """Open guarded pages (each its own browser session); checked after the test.

    Each page's last state is saved as test-artifacts/screenshots/end-<test>[-n].png."""
    opened: list[tuple[Page, Guard]] = []

    def make() -> Page:
        page, guard = guarded_page(browser)
        GUARDS.append(guard)
        opened.append((page, guard))
        return page

    yield make
    found: list[str] = []
    for n, (page, guard) in enumerate(opened):
        found += guard.problems()
        with contextlib.suppress(PlaywrightError):
            shot(page, f"end-{request.node.name}" + (f"-{n + 1}" if n else ""))
        GUARDS.remove(guard)
        page.context.close()
    if found:
        pytest.fail("the browser saw:\n- " + "\n- ".join(found), pytrace=False)


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
    return new_page()


def shot(page: Page, name: str, folder: Path = SHOTS, full_page: bool = True) -> Path:
    """Save a screenshot as <folder>/<name>.png (test-artifacts/screenshots/ by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.wait_for_timeout(300)
    size = page.viewport_size
    # Streamlit scrolls inside its main area, so a "full page" shot needs a taller window.
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll("
        "'[data-testid=stMain], [data-testid=stSidebarContent]')].map(e => e.scrollHeight), 0)"
    )
    if full_page and size and height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(300)
    try:
        page.screenshot(path=str(path), full_page=full_page)
    finally:
        if size and page.viewport_size != size:
            page.set_viewport_size(size)
    return path


RUNNING = "['running', 'rerunRequested', 'stopRequested']"
IDLE_JS = f"""() => {{
    const app = document.querySelector('[data-testid="stApp"]');
    return !!app && !{RUNNING}.includes(app.dataset.testScriptState);
}}"""


def wait_idle(page: Page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished the current run (the app's script-state mark).

    A click's rerun reaches the server a moment later, so this first gives it 200 ms.
    """
    page.wait_for_timeout(200)
    page.wait_for_function(IDLE_JS, timeout=timeout_ms, polling=100)


def settle(page: Page, timeout_ms: int = 90_000) -> None:
    """Wait until no script run and no reply (the Stop button) for a whole second."""
    page.evaluate("() => { window.__busyAt = Date.now(); }")
    page.wait_for_function(
        f"""() => {{
            const busy = !({IDLE_JS})()
                || !!document.querySelector('[data-testid="stChatInputStopButton"]');
            const now = Date.now();
            if (busy) {{ window.__busyAt = now; return false; }}
            return now - window.__busyAt >= 1000;
        }}""",
        timeout=timeout_ms,
        polling=100,
    )


# ---- steps shared by the journeys and scripts/screenshots --------------------------------


def set_up(page: Page, url: str, password: str = PASSWORD) -> None:
    """First run: choose the master password; the app opens unlocked."""
    page.goto(url)
    page.get_by_label("Master password", exact=True).fill(password)
    page.get_by_label("Confirm the password", exact=True).fill(password)
    page.get_by_role("button", name="Create vault", exact=True).click()
    expect(page.get_by_role("link", name="Chat")).to_be_visible()


def unlock(page: Page, url: str | None = None, password: str = PASSWORD) -> None:
    """Unlock (opening url first when given); does not wait for the result."""
    if url is not None:
        page.goto(url)
    page.get_by_label("Master password", exact=True).fill(password)
    page.get_by_role("button", name="Unlock", exact=True).click()


def go(page: Page, name: str) -> None:
    """Open a page through the navigation's link."""
    page.get_by_role("link", name=name, exact=True).click()
    wait_idle(page)


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def messages(page: Page):
    return page.get_by_test_id("stChatMessage")


def reply_streaming(page: Page, index: int, chars: int = 3, timeout_ms: int = 90_000) -> None:
    """Wait until message index holds reply text (not only a "Loading…" or queue notice)."""
    page.wait_for_function(
        """([i, n]) => {
            const m = document.querySelectorAll('[data-testid="stChatMessage"]')[i];
            if (!m) return false;
            const parts = [...m.querySelectorAll('[data-testid="stMarkdownContainer"]')]
                .filter(e => !e.closest('[data-testid="stAlert"]'));
            return parts.map(e => e.innerText).join("").trim().length >= n;
        }""",
        arg=[index, chars],
        timeout=timeout_ms,
    )


def choose(page: Page, label: str, option: str | re.Pattern[str]) -> None:
    """Pick option in the select box called label (once the page is idle: a rerun
    redraws the box and closes its list)."""
    wait_idle(page)
    box = page.get_by_role("combobox", name=label, exact=True)
    wanted = page.get_by_role("option", name=option).first
    for _ in range(3):
        box.click()
        try:
            wanted.wait_for(timeout=5000)
            break
        except PlaywrightError:
            page.keyboard.press("Escape")
            wait_idle(page)
    wanted.click()
    wait_idle(page)


def field(entry: Any, name: str) -> Any:
    """A field of a library entry (a dict before the typed ModelEntry, an object after)."""
    return entry[name] if isinstance(entry, dict) else getattr(entry, name)


def register(path: Path, **defaults: Any) -> str:
    """Register the model at path (in the current APPLIANCE_HOME); returns its id."""
    from appliance.library.library import Library

    library = Library()
    outcome = library.register(path)
    model_id = field(getattr(outcome, "entry", outcome), "id")
    if defaults:
        library.set_defaults(model_id, defaults)
    return model_id


def entries_by_name() -> dict[str, Any]:
    from appliance.library.library import Library

    return {field(e, "name"): e for e in Library().entries()}


def with_demo(home: Path, demo_model: Path, max_tokens: int = 512, name: str | None = None) -> str:
    """The demo model in the app's models/, answering deterministically; returns its id."""
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / (f"{name}.gguf" if name else demo_model.name)
    target.hardlink_to(demo_model)
    return register(target, temperature=0.0, seed=42, max_tokens=max_tokens,
                    system_prompt="You are a helpful assistant.")  # fmt: skip
