"""The console's benchmark: a real `twist elipc` and a real headless Chromium, and a table.

    make bench-console    (or: .venv/bin/python bench/console.py [--quick]; `make bench` runs
                          bench/run.py and then this)

- first paint with 1,000 channels (100,000 messages): the page's first contentful paint,
  and the time until all 1,000 channels are listed (both from navigation start);
- a send to the message on screen: from starting `elipc send` (a local CLI process writing
  the database; the server notices the commit) to the message in the page, and from an
  HTTP POST /send to the message in the page;
- the server's cost of 50 open consoles on a channel receiving 50 messages a second: its CPU
  and memory with no console and with 50. A console here is a client making the page's
  requests (tests/test_console_browser.py holds the page to them): the channel's history
  stream read as it comes, GET /activity each second and GET /delivery each two. Fifty real
  pages would share this machine's cores with the server and measure Chromium instead.

Needs Chromium (apt-get install chromium) and Playwright for Python (the test extra) for the
first two; the third needs neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import (  # noqa: E402
    BASE_ENV,
    BIN,
    Connection,
    Server,
    ms,
    open_streams,
    percentile,
    print_table,
)

from tests.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402


def preload_channels(db_path: str, channels: int, each: int) -> None:
    """`channels` channels of `each` messages, written the fast way."""
    subprocess.run([os.path.join(BIN, "elipc"), "channels"], env={**BASE_ENV,
                   "IPC_DB_PATH": db_path}, check=True, capture_output=True)
    conn = sqlite3.connect(db_path)
    now = time.time()
    conn.executemany(
        "INSERT INTO messages (channel, sender, content, created_at) VALUES (?, ?, ?, ?)",
        ((f"channel-{c:04}", f"agent-{c % 17}", f"message {i} on channel {c}",
          now - 3600 + c + i / each) for c in range(channels) for i in range(each)))
    conn.commit()
    conn.close()


def browser() -> tuple[Any, Any]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(executable_path=chromium_path(),
                                                  args=CHROMIUM_ARGS, headless=True)


def first_paint(server: Server, rounds: int) -> dict[str, str]:
    playwright, chromium = browser()
    paints, listed = [], []
    try:
        for _ in range(rounds):
            # bypass_csp: wait_for_function evaluates its text, which the console's CSP forbids.
            context = chromium.new_context(viewport={"width": 1280, "height": 800},
                                           bypass_csp=True)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/console/")
            page.wait_for_function(
                "document.querySelectorAll('#channel-list li').length >= 1000", timeout=60_000)
            listed.append(page.evaluate("performance.now()") / 1000)
            paints.append(page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0].startTime") / 1000)
            context.close()
    finally:
        chromium.close()
        playwright.stop()
    return {"console, 1,000 channels (100,000 msgs): first contentful paint p50":
            ms(percentile(paints, 50)),
            "  all 1,000 channels listed p50 / max": f"{ms(percentile(listed, 50))} / "
                                                     f"{ms(max(listed))}"}


ARRIVALS = """() => {
  window.__arrived = {};
  new MutationObserver((changes) => {
    const now = performance.timeOrigin + performance.now();
    for (const change of changes) for (const node of change.addedNodes) {
      const text = node.querySelector && node.querySelector('.content');
      if (text && !(text.textContent in window.__arrived)) window.__arrived[text.textContent] = now;
    }
  }).observe(document.querySelector('.messages'), {childList: true});
}"""


def send_to_screen(server: Server, db_path: str, rounds: int) -> dict[str, str]:
    playwright, chromium = browser()
    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    cli, http = [], []
    try:
        page = chromium.new_page(bypass_csp=True)
        page.goto(f"http://127.0.0.1:{server.port}/console/#/c/latency")
        page.wait_for_selector(".live.on")
        page.evaluate(ARRIVALS)
        for i in range(rounds):
            started = time.time()
            subprocess.run([os.path.join(BIN, "elipc"), "send", "latency", "bench",
                            f"cli {i}"], env=env, check=True, capture_output=True)
            page.wait_for_function(f"'cli {i}' in window.__arrived")
            cli.append(page.evaluate(f"window.__arrived['cli {i}']") / 1000 - started)
            started = time.time()
            post_once(server.port, f"http {i}")
            page.wait_for_function(f"'http {i}' in window.__arrived")
            http.append(page.evaluate(f"window.__arrived['http {i}']") / 1000 - started)
            time.sleep(0.05)
    finally:
        chromium.close()
        playwright.stop()
    return {"CLI send (process start) to the message on screen, p50 / p95":
            f"{ms(percentile(cli, 50))} / {ms(percentile(cli, 95))}",
            "HTTP POST /send to the message on screen, p50 / p95":
            f"{ms(percentile(http, 50))} / {ms(percentile(http, 95))}"}


def post_once(port: int, content: str) -> None:
    # Blocking: Playwright's sync API keeps an asyncio loop running in this thread.
    body = json.dumps({"channel": "latency", "sender": "bench", "content": content})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/send", body.encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def consoles_cost(server: Server, consoles: int, rate: int, seconds: float) -> tuple[float, float]:
    """The server's CPU (percent of one core) and memory (MB) while `consoles` consoles
    watch the channel "busy" that receives `rate` messages a second for `seconds`."""
    watchers = await open_streams(server.port, ["/stream?channel=busy&after_id=0"] * consoles)
    pollers = [await Connection.open(server.port) for _ in range(consoles)]
    stop = asyncio.Event()

    async def console(conn: Connection, offset: float) -> None:
        await asyncio.sleep(offset)
        last = (await conn.request("GET", "/activity"))[1]["last_id"]
        tick = 0
        while not stop.is_set():
            last = (await conn.request("GET", f"/activity?after_id={last}"))[1]["last_id"]
            if tick % 2 == 0:
                await conn.request("GET", "/delivery?channel=busy")
            tick += 1
            await asyncio.sleep(1.0)

    async def sender() -> None:
        conn = await Connection.open(server.port)
        i = 0
        started = time.perf_counter()
        while not stop.is_set():
            await conn.request("POST", "/send", {"channel": "busy", "sender": "load",
                                                 "content": f"busy {i}"})
            i += 1
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        conn.close()

    tasks = [asyncio.ensure_future(console(c, i / max(1, consoles)))
             for i, c in enumerate(pollers)]
    tasks.append(asyncio.ensure_future(sender()))
    await asyncio.sleep(3.0)  # settled: every console past its first requests
    cpu, wall = cpu_seconds(server.proc.pid), time.perf_counter()
    await asyncio.sleep(seconds)
    used = (cpu_seconds(server.proc.pid) - cpu) / (time.perf_counter() - wall) * 100
    memory = server.rss_mb()
    stop.set()
    await asyncio.gather(*tasks)
    for conn in pollers:
        conn.close()
    for stream in watchers:
        stream.close()
    return used, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds, seconds = (3, 5.0) if args.quick else (10, 20.0)
    work = tempfile.mkdtemp(prefix="elipc-bench-console-")
    rows: dict[str, str] = {}
    try:
        for consoles in (0, 50):
            db = os.path.join(work, f"busy{consoles}.db")
            server = Server(db, db + ".log")
            try:
                cpu, memory = asyncio.run(consoles_cost(server, consoles, 50, seconds))
            finally:
                server.stop()
            rows[f"busy channel (50 msgs/s), {consoles} consoles: server CPU / RSS"] = \
                f"{cpu:.1f}% of a core / {memory:.0f} MB"
        if chromium_path() is None:
            rows["console in a browser"] = "skipped: no Chromium (apt-get install chromium)"
        else:
            db = os.path.join(work, "thousand.db")
            preload_channels(db, 1000, 100)
            server = Server(db, db + ".log")
            try:
                rows.update(first_paint(server, rounds))
                rows.update(send_to_screen(server, db, rounds * 3))
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()
