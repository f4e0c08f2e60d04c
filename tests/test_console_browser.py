"""The console in a real headless Chromium against a real `twist elipc`: it loads with no
console errors, lists the channels, shows a CLI send live, pages history back, searches,
shows delivery state moving, the directory and the security events as the API gives them,
keeps hostile content as text, and asks for the API key before anything loads. Each view is
photographed in both themes (tests/browser.py's OUTPUT).

Skipped, with one line naming what to install, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from elipc import store
from tests.browser import LiveServer, Page, Shared, missing
from tests.helpers import Keyholder, run_cli

API_KEY = "console-test-key"
HOSTILE = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 1">'
           '<b>bold?</b>')
HISTORY = 800  # more than the page keeps (600): scrolling back drops the newest


def api(server: LiveServer, path: str, headers: dict[str, str] | None = None,
        body: Any = None) -> Any:
    """One request to the server, as a client would make it; the JSON answer (or error)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.base + path, data=data, headers=headers or {},
                                     method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def seed_open(server: LiveServer) -> None:
    """Channels to look at: a long history, hostile content, a word to find, readers behind."""
    db = store.open_database(server.db)
    try:
        rows = [("history", "scribe", f"entry {i}", "", None, None) for i in range(HISTORY)]
        rows += [("xss", "mallory", HOSTILE, "", None, None),
                 ("search-me", "finder", "the zanzibarquux is here", "", None, None)]
        rows += [(f"team-{i:02}", "lead", f"hello team {i}", "", None, None) for i in range(30)]
        rows += [("delivery", "boss", f"task {i}", "", None, None) for i in range(5)]
        rows += [("long", "poet", "verse\n" * 200, "", None, None)]
        ids = store.insert_messages(db, rows, time.time() - 60)
        last = ids[-2]  # the last message on "delivery"
        store.acknowledge(db, "delivery", "laggard", last - 4)
        store.acknowledge(db, "delivery", "keeper", last)
    finally:
        db.close()


def seed_secure(server: LiveServer) -> None:
    """An operator, a registered agent, and one message that agent signed."""
    for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "herald"),
                 ("register", "herald", "--pubkey", "herald.pub", "--as", "op", "--key",
                  "op.key"),
                 ("send", "signed", "herald", "signed by herald", "--key", "herald.key")):
        result = run_cli(server.db, *args, cwd=server.dir)
        assert result.code == 0, result.err


class ConsoleCase(SynchronousTestCase):
    """A page on a shared server; every test ends with no console error."""

    kind = "open"

    def setUp(self) -> None:
        reason = missing()
        if reason:
            raise SkipTest(reason)
        if self.kind == "open":
            self.server = Shared.server("open", seed_open)
        else:
            self.server = Shared.server("secure", seed_secure, IPC_API_KEY=API_KEY)

    def browse(self, scenario: Any) -> None:
        """Run `scenario` on the browser's thread with a fresh page (self.view, self.page),
        then check that the page logged no error."""
        def run() -> None:
            self.view = Page(self.server.base)
            self.page = self.view.page
            try:
                scenario()
                self.assertEqual(self.view.errors, [], self.view.errors)
            finally:
                self.view.close()
        Shared.run(run)

    def assert_labelled(self) -> None:
        """Every field has a label and every button a name a screen reader can say."""
        nameless = self.page.evaluate("""() => [...document.querySelectorAll(
            'input, textarea, select, button')].filter((node) => node.offsetParent !== null)
            .filter((node) => node.tagName === 'BUTTON'
              ? !(node.textContent.trim() || node.getAttribute('aria-label'))
              : !(node.labels.length || node.getAttribute('aria-label')))
            .map((node) => node.outerHTML.slice(0, 80))""")
        self.assertEqual(nameless, [])

    def expect(self, target: Any) -> Any:
        from playwright.sync_api import expect

        return expect(target)


class OpenConsoleTests(ConsoleCase):
    """Open mode: every view, live messages, paging, search, delivery, hostile content."""

    def test_channels_live_send_and_hostile_content(self) -> None:
        """The channels appear and filter; a message sent with the CLI shows within 2 s of
        its commit; content with markup stays text and runs nothing."""
        self.browse(self.channels_live_send_and_hostile_content)

    def channels_live_send_and_hostile_content(self) -> None:
        page = self.view.open()
        self.expect(page.locator('#channel-list li[data-channel="team-29"]')).to_be_visible()
        self.assertGreaterEqual(page.locator("#channel-list li").count(), 35)
        self.expect(page.locator('[data-figure="long-polls"]')).to_be_visible()
        self.view.shoot("channels")
        page.fill("#channel-filter", "team-0")
        self.expect(page.locator("#channel-list li")).to_have_count(10)
        page.fill("#channel-filter", "")
        page.click('#channel-list a:has-text("xss")')
        message = page.locator(".message .content").first
        self.expect(message).to_have_text(HOSTILE)
        self.assertEqual(page.locator(".messages script, .messages img, .messages b").count(), 0)
        self.assertIsNone(page.evaluate("window.__pwned"))
        self.expect(page.locator(".live")).to_have_text("live")
        sent = run_cli(self.server.db, "send", "xss", "cli-agent", "from the command line")
        self.assertEqual(sent.code, 0, sent.err)
        self.expect(page.locator(".message .content", has_text="from the command line")) \
            .to_be_visible(timeout=2000)
        self.expect(page.locator('#channel-list li[data-channel="xss"] .count')).to_have_text("2")
        self.expect(page.locator('[data-figure="rate"]')).to_have_text(re.compile(r"^\d+\.\d msg/s$"))
        self.assert_labelled()
        self.view.shoot("channel")

    def test_scrolling_back_pages_history(self) -> None:
        """The newest page shows first; scrolling up loads older pages until the first
        message, the page keeping a window of them (the newest dropped, then paged in again
        on the way down)."""
        self.browse(self.scrolling_back_pages_history)

    def scrolling_back_pages_history(self) -> None:
        page = self.view.open("#/c/history")
        messages, timeline = page.locator(".message"), page.locator(".timeline")
        self.expect(messages.last).to_contain_text(f"entry {HISTORY - 1}")
        self.assertLess(messages.count(), HISTORY)
        beginning = page.get_by_text("The beginning of the channel.")
        for _ in range(12):  # each scroll to the top brings one older page
            timeline.evaluate("node => { node.scrollTop = 0; }")
            page.wait_for_timeout(300)
            if beginning.is_visible():
                break
        self.expect(beginning).to_be_visible()
        self.expect(page.locator(".message .content").first).to_have_text("entry 0")
        self.assertLessEqual(messages.count(), 600)
        self.assertEqual(page.locator(".message", has_text=f"entry {HISTORY - 1}").count(), 0)
        self.expect(page.locator(".jump")).to_be_visible()
        for _ in range(12):  # and each scroll to the bottom one newer page
            timeline.evaluate("node => { node.scrollTop = node.scrollHeight; }")
            page.wait_for_timeout(300)
            if page.locator(".message", has_text=f"entry {HISTORY - 1}").count():
                break
        self.expect(messages.last).to_contain_text(f"entry {HISTORY - 1}")
        self.expect(page.locator(".jump")).to_be_hidden()

    def test_search_links_into_the_channel(self) -> None:
        """Search (reached with the / key) finds a message by a word; its result opens the
        channel at that message."""
        self.browse(self.search_links_into_the_channel)

    def search_links_into_the_channel(self) -> None:
        page = self.view.open()
        self.expect(page.locator("#channel-list li").first).to_be_visible()
        page.keyboard.press("/")
        self.expect(page.locator("#q")).to_be_focused()
        page.fill("#q", "zanzibarquux")
        page.keyboard.press("Enter")
        result = page.locator(".result")
        self.expect(result).to_have_count(1)
        self.expect(result.locator("mark")).to_have_text("zanzibarquux")
        self.view.shoot("search")
        result.locator("a.result-link").click()
        self.expect(page.locator(".message.anchor .content")).to_have_text(
            "the zanzibarquux is here")

    def test_delivery_state_moves_when_an_agent_reads(self) -> None:
        """Each reader's watermark and pending count show, and move when the agent reads."""
        self.browse(self.delivery_state_moves_when_an_agent_reads)

    def delivery_state_moves_when_an_agent_reads(self) -> None:
        page = self.view.open("#/c/delivery")
        laggard = page.locator('.delivery tr[data-agent="laggard"] td[data-pending]')
        self.expect(laggard).to_have_attribute("data-pending", "4")
        self.expect(page.locator('.delivery tr[data-agent="keeper"] td[data-pending]')) \
            .to_have_attribute("data-pending", "0")
        read = run_cli(self.server.db, "read", "delivery", "laggard")
        self.assertEqual(read.code, 0, read.err)
        self.expect(laggard).to_have_attribute("data-pending", "0", timeout=5000)

    def test_security_events_and_long_content(self) -> None:
        """The security view shows the events and counts /security gives; long content is
        folded until unfolded."""
        self.browse(self.security_events_and_long_content)

    def security_events_and_long_content(self) -> None:
        api(self.server, "/register", body={"name": "x", "operator_key": "oops"})
        for _ in range(100):  # the event is written after the refusal is answered
            expected = api(self.server, "/security")
            if expected["events"]:
                break
            time.sleep(0.05)
        self.assertTrue(expected["events"])
        page = self.view.open("#/security")
        events = page.locator(".event")
        self.expect(events).to_have_count(len(expected["events"]))
        self.expect(events.first.locator(".kind")).to_have_text(expected["events"][0]["kind"])
        for kind, count in expected["counts"].items():
            self.expect(page.locator(f'.counts-table tr[data-kind="{kind}"] td')) \
                .to_have_text(str(count))
        self.view.shoot("security")
        page.goto(f"{self.server.base}/console/#/c/long")
        content = page.locator(".message .content")
        self.expect(content).to_have_class("content folded")
        page.click("button.fold")
        self.expect(content).to_have_class("content")

    def test_phone_width(self) -> None:
        """At phone width the channel list is the channels view, a channel fills the page."""
        self.browse(self.phone_width)

    def phone_width(self) -> None:
        phone = Page(self.server.base, width=390, height=800)
        try:
            page = phone.open()
            self.expect(page.locator("#channel-list li").first).to_be_visible()
            self.assertFalse(page.locator("main").is_visible())
            phone.shoot("phone-channels")
            page.click('#channel-list a:has-text("delivery")')
            self.expect(page.locator(".message").first).to_be_visible()
            self.assertFalse(page.locator("#sidebar").is_visible())
            phone.shoot("phone-channel")
            self.assertEqual(phone.errors, [])
        finally:
            phone.close()


class SecureConsoleTests(ConsoleCase):
    """Secure mode behind an API key: the key first, then the directory, the operator's
    security view and signed compose, all signed in the page."""

    kind = "secure"

    def sign_in_with_key(self, page: Any) -> None:
        self.expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#key-input", API_KEY)
        page.click('#key-form button[type="submit"]')
        self.expect(page.locator("#key-dialog")).to_be_hidden()

    def test_nothing_loads_until_the_key_is_given(self) -> None:
        """With IPC_API_KEY set the page asks for the key before any API request, then
        loads; the key never appears in a URL."""
        self.browse(self.nothing_loads_until_the_key_is_given)

    def nothing_loads_until_the_key_is_given(self) -> None:
        page = self.view.open()
        self.expect(page.locator("#key-dialog")).to_be_visible()
        page.wait_for_timeout(500)
        api_calls = [u for u in self.view.requests if "/console/" not in u]
        self.assertEqual(api_calls, [])
        self.assertEqual(page.locator("#channel-list li").count(), 0)
        self.view.shoot("api-key")
        self.sign_in_with_key(page)
        self.expect(page.locator('#channel-list li[data-channel="signed"]')).to_be_visible()
        self.assertFalse([u for u in self.view.requests if API_KEY in u])
        # A key gone stale in the tab (the server's key changed): asked again, and the page
        # comes back to life with the right one, without a reload.
        page.evaluate("sessionStorage.setItem('elipc.apiKey', 'stale')")
        page.reload()
        self.sign_in_with_key(page)
        self.expect(page.locator('#channel-list li[data-channel="signed"]')).to_be_visible()
        # Chromium logs the stale key's refusal itself; that 401 is this test's point.
        refused = [e for e in self.view.errors if "status of 401" in e]
        self.assertEqual(len(refused), 1, self.view.errors)
        self.view.errors.remove(refused[0])

    def test_agents_view_shows_the_directory(self) -> None:
        """Every entry /agents lists appears with its role, registrar, did:key and
        fingerprint."""
        self.browse(self.agents_view_shows_the_directory)

    def agents_view_shows_the_directory(self) -> None:
        expected = api(self.server, "/agents", {"Authorization": f"Bearer {API_KEY}"})
        page = self.view.open()
        self.sign_in_with_key(page)
        page.keyboard.press("a")
        for agent in expected:
            row = page.locator(f'tr[data-agent="{agent["name"]}"]')
            self.expect(row.locator(".role")).to_have_text(agent["role"])
            self.expect(row.locator(".did")).to_have_text(agent["did"])
            self.expect(row.locator(".fingerprint")).to_have_text(agent["fingerprint"])
            self.expect(row.locator("td").nth(1)).to_have_text(agent["registered_by"] or "—")
        self.view.shoot("agents")

    def test_operator_security_view_and_signed_compose(self) -> None:
        """An operator signs in with their key file (in the page) and sees the events the
        API gives an operator; an agent's key signs a message that appears verified."""
        self.browse(self.operator_security_view_and_signed_compose)

    def operator_security_view_and_signed_compose(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        api(self.server, "/send", headers, {"channel": "signed", "sender": "herald",
                                            "content": "forged", "signature": "A" * 86 + "=="})
        page = self.view.open()
        self.sign_in_with_key(page)
        page.click('#channel-list a:has-text("signed")')
        self.expect(page.locator(".message .mark")).to_have_text("verified")
        page.set_input_files('.compose input[type="file"]',
                             os.path.join(self.server.dir, "herald.key"))
        page.fill(".compose input[autocomplete=username]", "herald")
        page.click('.compose button:has-text("Use this key")')
        page.fill("#compose-text", "signed in the browser")
        page.keyboard.press("Control+Enter")
        fresh = page.locator(".message", has_text="signed in the browser")
        self.expect(fresh.locator(".mark")).to_have_text("verified")
        self.view.shoot("compose-secure")
        page.click('.compose button:has-text("Forget the key")')
        page.keyboard.press("e")
        self.expect(page.get_by_text("In secure mode the security events are for operators."))\
            .to_be_visible()
        self.assert_labelled()
        page.set_input_files('.security input[type="file"]', os.path.join(self.server.dir, "op.key"))
        page.fill(".security input[autocomplete=username]", "op")
        page.click('.security button:has-text("Use this key")')
        operator = Keyholder("op", os.path.join(self.server.dir, "op.key"))
        signed = {k: v[0] for k, v in operator.read_headers("elipc/security",
                                                            int(time.time())).items()}
        expected = api(self.server, "/security?agent=op", {**headers, **signed})
        kinds = [e["kind"] for e in expected["events"]]
        self.assertIn("invalid_signature", kinds)
        self.expect(page.locator(".event .kind")).to_have_text(kinds)
        self.assert_labelled()
        self.view.shoot("security-operator")
