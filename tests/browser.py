"""Helpers for the console's browser tests: a real `twist elipc` per scenario kind, shared by
the tests of one process, and one headless Chromium (Debian's, driven by Playwright for
Python: no browser download), started on first use and stopped when the process exits.

Playwright's sync API runs an asyncio loop that stays "running" in the thread that started
it (asyncio.run elsewhere in the process would then fail), so everything Playwright does
happens on one thread of its own: a scenario is handed to it and its result or failure
handed back (Shared.run). No Twisted reactor runs there. Under pytest-xdist each worker that
runs a browser test starts its own server and browser.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib.util
import os
import queue
import threading
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.helpers import cli_env
from tests.test_e2e import BIN, START_TIMEOUT_S, free_port, stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the screenshots go (gitignored); ELIPC_TEST_OUTPUT moves it.
OUTPUT = os.path.join(os.environ.get("ELIPC_TEST_OUTPUT") or os.path.join(REPO, "test-output"),
                      "console")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here (one line naming what to install), or None."""
    if chromium_path() is None:
        return "no Chromium: install it (apt-get install chromium) to run the console's browser tests"
    if importlib.util.find_spec("playwright") is None:
        return "no Playwright for Python: pip install -e '.[test]'"
    return None


class LiveServer:
    """`twist elipc` on a free 127.0.0.1 port over a fresh database, stopped by pid."""

    def __init__(self, **env: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="elipc-console-")
        self.db = os.path.join(self.dir, "ipc.db")
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self._log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "twist"), "--log-format=text", "elipc", "--port",
             str(self.port)], env=cli_env(self.db, IPC_RATE_LIMIT="0", **self.env),
            cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not listen: {self.log()}")

    def log(self) -> str:
        with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self._log.close()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


T = TypeVar("T")


class Shared:
    """The process's browser (on its own thread) and servers, made on first use, gone at
    exit."""

    # A daemon thread of our own, not an executor: executors refuse work once the
    # interpreter starts exiting, and the browser is closed from atexit.
    work: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
    thread: threading.Thread | None = None
    playwright: Any = None
    browser: Any = None
    servers: dict[str, LiveServer] = {}

    @classmethod
    def run(cls, scenario: Callable[[], T], timeout: float = 300) -> T:
        """Run `scenario` on the browser's thread; return what it returns, raise what it
        raises."""
        if cls.thread is None:
            cls.thread = threading.Thread(target=cls._serve, name="playwright", daemon=True)
            cls.thread.start()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        cls.work.put((scenario, done))
        return done.result(timeout)

    @classmethod
    def _serve(cls) -> None:
        while True:
            scenario, done = cls.work.get()
            try:
                done.set_result(scenario())
            except BaseException as e:  # handed back to the test's thread
                done.set_exception(e)

    @classmethod
    def get_browser(cls) -> Any:
        """The browser (call it on the browser's thread)."""
        if cls.browser is None:
            from playwright.sync_api import sync_playwright

            cls.playwright = sync_playwright().start()
            cls.browser = cls.playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
            atexit.register(lambda: cls.run(cls.close, 60))
        return cls.browser

    @classmethod
    def server(cls, kind: str, prepare: Any, **env: str) -> LiveServer:
        """The server of `kind`, its database prepared by `prepare(server)` before it starts."""
        if kind not in cls.servers:
            server = LiveServer(**env)
            atexit.register(server.stop)
            prepare(server)
            server.start()
            cls.servers[kind] = server
        return cls.servers[kind]

    @classmethod
    def close(cls) -> None:
        if cls.browser is not None:
            cls.browser.close()
            cls.playwright.stop()
            cls.browser = cls.playwright = None


class Page:
    """A fresh browser context and page, with every console error and page error kept."""

    def __init__(self, base: str, scheme: str = "light", width: int = 1280,
                 height: int = 800) -> None:
        self.base = base
        self.context = Shared.get_browser().new_context(
            color_scheme=scheme, viewport={"width": width, "height": height},
            service_workers="block")
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def open(self, route: str = "") -> Any:
        self.page.goto(f"{self.base}/console/{route}")
        return self.page

    def shoot(self, name: str) -> None:
        """Screenshots of what is on screen now in both themes: OUTPUT/name-light.png and
        OUTPUT/name-dark.png."""
        os.makedirs(OUTPUT, exist_ok=True)
        for scheme in ("light", "dark"):
            self.page.emulate_media(color_scheme=scheme)
            self.page.wait_for_timeout(100)  # let the theme's transition settle
            self.page.screenshot(path=os.path.join(OUTPUT, f"{name}-{scheme}.png"))
        self.page.emulate_media(color_scheme="light")

    def close(self) -> None:
        self.context.close()
