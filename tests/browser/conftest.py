"""Browser tests of the operator console: Playwright (Python) driving Debian's Chromium headless against the
real ``hcrm-gateway demo`` started as a subprocess on a free port.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright install``: the browser
is the system one, ``HCRM_CHROMIUM`` overrides its path). ``HCRM_BROWSER_DEMO_CMD`` replaces the command
that starts the demo (default ``python -m gateway demo``), e.g. to test an installed wheel. Screenshots and
the demo's log go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("HCRM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TOKEN = "console-test-token-3c9e81f0a4"
DEMO_START_TIMEOUT = 40.0
_URL_RE = re.compile(r"API at (http://[0-9.]+:[0-9]+)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium against the demo (tests/browser)")


@dataclass
class Demo:
    url: str
    token: str
    process: subprocess.Popen
    log_lines: list[str] = field(default_factory=list)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def command(self, *args: str) -> list[str]:
        """An ``hcrm-gateway`` sub-command line for the same installation as the demo."""
        return [*_base_command(), *args]


def _base_command() -> list[str]:
    override = os.environ.get("HCRM_BROWSER_DEMO_CMD")
    return shlex.split(override) if override else [sys.executable, "-m", "gateway"]


def _drain(stream, lines: list[str], log_path: Path) -> None:
    """Read the demo's output to the end (its log shares stdout: an unread pipe would block the daemon)."""
    with log_path.open("w", encoding="utf-8") as log:
        for line in stream:
            lines.append(line)
            log.write(line)
            log.flush()


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Iterator[Demo]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = tmp_path_factory.mktemp("console-demo")
    cmd = [*_base_command(), "demo", "--port", "0", "--data", str(data), "--token", TOKEN, "--latency", "0.3"]
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=_drain, args=(process.stdout, lines, ARTIFACTS / "console-demo.log"), daemon=True
    )
    reader.start()
    url = None
    deadline = time.monotonic() + DEMO_START_TIMEOUT
    while url is None and time.monotonic() < deadline and process.poll() is None:
        for line in list(lines):
            if match := _URL_RE.search(line):
                url = match.group(1)
                break
        time.sleep(0.05)
    try:
        if url is None:
            pytest.fail(
                f"the demo did not announce its URL within {DEMO_START_TIMEOUT:g} s (exit code "
                f"{process.poll()}); its output:\n" + "".join(lines[-40:])
            )
        page = httpx.get(url + "/", timeout=5)
        if page.status_code != 200 or "text/html" not in page.headers.get("Content-Type", ""):
            pytest.fail(
                f"the demo does not serve the console at / (HTTP {page.status_code}): api.console_routes "
                "must be listed in api.app.FEATURE_ROUTE_MODULES"
            )
        yield Demo(url, TOKEN, process, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set HCRM_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is not installed: pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh tab (own sessionStorage) at 1280x800; screenshot saved after the test; uncaught script
    errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    try:
        tab.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=False)
    finally:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def log_in(page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("navigation", name="Sections").wait_for()
    page.locator("#conn-status", has_text="Event stream: live").wait_for()


class DroppingProxy:
    """A TCP relay in front of the demo that can cut every connection and refuse new ones: a network drop
    as the browser sees it (the socket resets; nothing closes it cleanly)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepting = True
        self.closed = False
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.accepting:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: RST, like a dead link
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> None:
        """Cut every open connection and refuse new ones until ``restore``."""
        self.accepting = False
        with self.lock:
            victims, self.sockets = self.sockets, set()
        for s in victims:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.closed = True
        self.drop()
        self.listener.close()
        self.thread.join(timeout=2)
