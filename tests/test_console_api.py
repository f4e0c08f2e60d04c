"""The console's routes through the real app in memory (StubTreq): activity, delivery,
search, security events, history backwards, and the console's own files with their headers.
None of the reads moves anything; bad input is a 4xx, never a 500."""

from __future__ import annotations

import os
import re
from typing import Any

from elipc.server.console import TYPES
from tests.helpers import Keyholder, raw_rows
from tests.test_security import SecureCase
from tests.test_web import WebCase

CONSOLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "elipc", "console")


class ActivityTests(WebCase):
    """GET /activity: where to start, then what each channel gained, and the health."""

    def test_start_then_changes(self) -> None:
        """Without after_id only last_id; with it, the channels that gained messages."""
        self.send("a")
        status, start = self.get("/activity")
        self.assertEqual(status, 200)
        self.assertEqual((start["last_id"], start["channels"], start["status"],
                          start["secure_mode"], start["long_polls"], start["streams"]),
                         (1, [], "ok", False, 0, 0))
        self.send("a")
        self.send("b")
        changes = self.get("/activity", after_id=start["last_id"])[1]
        self.assertEqual(changes["last_id"], 3)
        self.assertEqual(sorted((c["channel"], c["added"], c["last_id"])
                                for c in changes["channels"]), [("a", 1, 2), ("b", 1, 3)])

    def test_long_polls_are_counted(self) -> None:
        """A long-poll waiting shows in long_polls; once answered it no longer does."""
        waiting = self.get_later("/messages", channel="c", agent="r", wait="true")
        self.assertEqual(self.get("/activity")[1]["long_polls"], 1)
        self.send("c")
        self.assertEqual(self.answer(waiting)[0], 200)
        self.assertEqual(self.get("/activity")[1]["long_polls"], 0)

    def test_bad_after_id(self) -> None:
        """after_id must be a whole number."""
        for bad in ("-1", "x", "1.5", ""):
            self.assertEqual(self.get("/activity", after_id=bad)[0], 400, bad)


class DeliveryTests(WebCase):
    """GET /delivery: each reader's watermark and pending count, moving nothing."""

    def test_readers_and_pending(self) -> None:
        """An agent that read shows its watermark; what arrived since is pending."""
        self.send("c")
        self.get("/messages", channel="c", agent="reader")
        self.send("c")
        state = self.get("/delivery", channel="c")[1]
        self.assertEqual(state, {"channel": "c", "last_id": 2, "count": 2, "more": False,
                                 "agents": [{"agent": "reader", "watermark": 1, "pending": 1}]})
        self.assertEqual(self.get("/delivery", channel="c")[1], state)
        self.assertEqual(len(self.get("/messages", channel="c", agent="reader")[1]), 1)

    def test_channel_required(self) -> None:
        """No channel, or a bad one: 400."""
        self.assertEqual(self.get("/delivery")[0], 400)
        self.assertEqual(self.get("/delivery", channel="\x01")[0], 400)


class SearchTests(WebCase):
    """GET /search: every word, newest first, filters, pages; text is never syntax."""

    def test_results_and_filters(self) -> None:
        """Results carry their channel, newest first; channel and sender narrow them."""
        self.send("c", "a", "deploy failed")
        self.send("d", "b", "deploy done")
        status, found = self.get("/search", q="deploy")
        self.assertEqual(status, 200)
        self.assertEqual([(m["channel"], m["id"]) for m in found], [("d", 2), ("c", 1)])
        self.assertEqual([m["id"] for m in self.get("/search", q="deploy", channel="c")[1]], [1])
        self.assertEqual([m["id"] for m in self.get("/search", q="deploy", sender="b")[1]], [2])
        self.assertEqual(self.get("/search", q="deploy failed")[1][0]["content"], "deploy failed")

    def test_pages_and_cut_content(self) -> None:
        """X-Elipc-More and before_id page through; long content is cut with its length."""
        for _ in range(3):
            self.send("c", "a", "word " + "x" * 5000)
        response = self.successResultOf(self.get_later("/search", q="word", limit="2"))
        self.assertEqual(response.headers.getRawHeaders("X-Elipc-More"), ["true"])
        page = self.answer(self.get_later("/search", q="word", limit="2"))[1]
        self.assertEqual([m["id"] for m in page], [3, 2])
        self.assertEqual((page[0]["truncated"], page[0]["content_length"],
                          len(page[0]["content"])), (True, 5005, 2000))
        rest = self.get("/search", q="word", before_id="2")[1]
        self.assertEqual([m["id"] for m in rest], [1])

    def test_query_syntax_is_text_and_bad_input_is_400(self) -> None:
        """FTS5 syntax finds nothing or itself, never an error; empty, long or missing q is
        400, and so are bad limits."""
        self.send("c", "a", "plain")
        for text in ['"', "NEAR(", "a OR", "col:x", "*", "^", "(((", "\u0000x"]:
            self.assertEqual(self.get("/search", q=text)[0], 200, text)
        for params in ({}, {"q": ""}, {"q": " "}, {"q": "x" * 501}, {"q": "a", "limit": "0"},
                       {"q": "a", "limit": "201"}, {"q": "a", "before_id": "0"},
                       {"q": "a", "channel": ""}, {"q": "a", "other": "1"}):
            status, body = self.get("/search", **params)
            self.assertEqual(status, 400, params)
            self.assertIn("error", body)


class HistoryBeforeTests(WebCase):
    """GET /history?before_id pages backwards."""

    def test_pages_backwards(self) -> None:
        """The page just before before_id, oldest first, and whether older ones remain."""
        for i in range(5):
            self.send("c", "a", str(i))
        response = self.successResultOf(self.get_later("/history", channel="c", before_id="5",
                                                       limit="2"))
        self.assertEqual(response.headers.getRawHeaders("X-Elipc-More"), ["true"])
        page = self.get("/history", channel="c", before_id="5", limit="2")[1]
        self.assertEqual([m["content"] for m in page], ["2", "3"])
        self.assertEqual(self.get("/history", channel="c", before_id="1")[1], [])

    def test_window_between_two_ids(self) -> None:
        """after_id with before_id bounds the page below; before_id 0 is 400."""
        for i in range(5):
            self.send("c", "a", str(i))
        page = self.get("/history", channel="c", before_id="5", after_id="2")[1]
        self.assertEqual([m["id"] for m in page], [3, 4])
        self.assertEqual(self.get("/history", channel="c", before_id="0")[0], 400)


class OpenSecurityTests(WebCase):
    """GET /security in open mode: anyone reads the events and counts."""

    def test_events_newest_first(self) -> None:
        """Each refusal recorded is an event with its kind, reason and context."""
        for _ in range(2):
            self.post("/register", {"name": "x", "operator_key": "k"})
        status, answer = self.get("/security")
        self.assertEqual(status, 200)
        self.assertEqual((answer["secure_mode"], answer["counts"], answer["more"]),
                         (False, {"private_key_sent": 2}, False))
        self.assertEqual([e["kind"] for e in answer["events"]], ["private_key_sent"] * 2)
        self.assertGreater(answer["events"][0]["id"], answer["events"][1]["id"])
        self.assertEqual(self.get("/security", limit="1")[1]["more"], True)


class SecureConsoleTests(SecureCase):
    """Secure mode: the security events are an operator's signed read; the elipc/ channels
    stay out of delivery and search."""

    def security(self, agent: str | None, signer: Keyholder | None) -> tuple[int, Any]:
        headers = {} if signer is None else signer.read_headers(
            "elipc/security", self.now, agent=agent)
        query = f"?agent={agent}" if agent else ""
        return self.answer(self.http.get(self.server.url(f"/security{query}"),
                                         headers=headers))

    def test_operators_only(self) -> None:
        """No signature: 401; an agent's: 403; the operator's: the events; its nonce is
        spent."""
        self.assertEqual(self.security(None, None)[0], 401)
        self.assertEqual(self.security("herald", self.herald)[0], 403)
        status, answer = self.security("op", self.op)
        self.assertEqual(status, 200, answer)
        self.assertTrue(answer["secure_mode"])
        self.assertIn("read_signature_required", [e["kind"] for e in answer["events"]])
        self.assertIn("security_channel", answer["counts"])
        nonce_rows = raw_rows(self.server.path, "SELECT COUNT(*) FROM nonces "
                                                "WHERE scope = 'read:op'")
        self.assertEqual(nonce_rows, [(1,)])

    def test_reserved_channels_stay_private(self) -> None:
        """Delivery of an elipc/ channel is 403; search never finds its events."""
        self.post("/register", {"name": "x", "operator_key": "never-logged-word"})
        self.assertEqual(self.get("/delivery", channel="elipc/security")[0], 403)
        self.assertEqual(self.get("/search", q="private")[1], [])
        self.assertEqual(self.get("/search", q="private", channel="elipc/security")[0], 403)
        self.assertEqual(self.get("/history", channel="elipc/security", before_id="9")[0], 403)


class ConsoleFilesTests(WebCase):
    """The console's files: served from the package with strict headers, below the key."""

    environ = {"IPC_API_KEY": "k"}

    def fetch(self, path: str, method: str = "GET", **headers: str) -> Any:
        pending = self.http.request(method, self.server.url(path), allow_redirects=False,
                                    headers={k.replace("_", "-"): [v]
                                             for k, v in headers.items()})
        self.http.flush()
        response = self.successResultOf(pending)
        return response, self.successResultOf(self.http.content(response))

    def test_index_with_strict_headers_and_no_key(self) -> None:
        """/console/ is the page, no key needed, under a CSP with no inline script or
        framing; the page knows a key is wanted; the API still wants it."""
        response, body = self.fetch("/console/")
        self.assertEqual(response.code, 200)
        header = response.headers.getRawHeaders
        self.assertEqual(header("Content-Type"), ["text/html; charset=utf-8"])
        policy = header("Content-Security-Policy")[0]
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                          "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"):
            self.assertIn(directive, policy)
        self.assertNotIn("unsafe", policy)
        self.assertEqual((header("X-Content-Type-Options"), header("X-Frame-Options"),
                          header("Referrer-Policy")), (["nosniff"], ["DENY"], ["no-referrer"]))
        self.assertIn(b'data-auth="bearer"', body)
        self.assertIn(b'data-auth="bearer"', self.fetch("/console/index.html")[1])
        self.assertEqual(self.fetch("/channels")[0].code, 401)

    def test_every_file_served_with_its_type_and_cached_by_etag(self) -> None:
        """Each file under elipc/console is served with its content type; If-None-Match
        with its ETag is a 304."""
        for folder, _, names in os.walk(CONSOLE):
            for name in names:
                path = os.path.relpath(os.path.join(folder, name), CONSOLE)
                response, body = self.fetch(f"/console/{path}")
                self.assertEqual(response.code, 200, path)
                self.assertEqual(response.headers.getRawHeaders("Content-Type"),
                                 [TYPES["." + name.rpartition(".")[2]].decode()], path)
                etag = response.headers.getRawHeaders("ETag")[0]
                again = self.fetch(f"/console/{path}", If_None_Match=etag)[0]
                self.assertEqual(again.code, 304, path)

    def test_redirects_and_refusals(self) -> None:
        """/ and /console lead to /console/; an unknown file is a JSON 404; POST is 405."""
        response = self.fetch("/")[0]
        self.assertEqual((response.code, response.headers.getRawHeaders("Location")),
                         (303, ["/console/"]))
        self.assertEqual(self.fetch("/console")[0].code, 301)
        response, body = self.fetch("/console/nothing.js")
        self.assertEqual((response.code, body), (404, b'{"error": "not found"}'))
        self.assertEqual(self.fetch("/console/", "POST")[0].code, 405)
        self.assertEqual(self.fetch("/console/../openapi.json")[0].code, 404)  # files only


class ConsoleSourceTests(WebCase):
    """The console's code never turns data into markup and needs no inline script or style."""

    def test_no_markup_from_strings(self) -> None:
        """No innerHTML, outerHTML, insertAdjacentHTML, document.write, eval or Function in
        the modules; no inline script, style or event handler in the page."""
        sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|"
                           r"\beval\(|new Function|setAttribute\(\"on")
        for folder, _, names in os.walk(CONSOLE):
            for name in names:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    text = f.read()
                if name.endswith(".js"):
                    self.assertIsNone(sinks.search(text), name)
                if name.endswith(".html"):
                    self.assertNotRegex(text, r"<script(?![^>]*\bsrc=)|\sstyle=|\son\w+=|<style")


# The console's views on PostgreSQL (search there is PostgreSQL's own text search).
class ActivityPostgresTests(ActivityTests):
    store = "postgresql"


class DeliveryPostgresTests(DeliveryTests):
    store = "postgresql"


class SearchPostgresTests(SearchTests):
    store = "postgresql"


class HistoryBeforePostgresTests(HistoryBeforeTests):
    store = "postgresql"
