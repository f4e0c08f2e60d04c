"""The treq client against the real app in memory: at-least-once delivery end to end."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from elipc import __version__, store
from elipc.client import Client, ClientError, Unreachable
from elipc.config import REQUEST_TIMEOUT
from elipc.model import Accepted, Message, Page
from tests.helpers import Keyholder, Server, raw_rows


class LossyNetwork:
    """The network between client and server: it can refuse connections, hang without an
    answer, or deliver a request and then lose the response (the server did the work; the
    client never hears)."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.refuse = 0
        self.hang = 0
        self.lose_responses = 0
        self.requests = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        if self.hang:
            self.hang -= 1
            return Deferred()
        if self.refuse:
            self.refuse -= 1
            return Deferred.fromCoroutine(_raise(ConnectionRefusedError()))
        pending = self.http.request(method, url, **kwargs)
        if self.lose_responses:
            self.lose_responses -= 1
            pending.addCallback(lambda _: _raise_now(ResponseNeverReceived([])))
        return pending

    def content(self, response: Any) -> Deferred[bytes]:
        return self.http.content(response)


async def _raise(error: Exception) -> None:
    raise error


def _raise_now(error: Exception) -> None:
    raise error


class ClientCase(SynchronousTestCase):
    """A server in memory and a client on a lossy network to it."""

    environ: dict[str, str] = {}

    def setUp(self) -> None:
        self.server = Server(self, **self.environ)
        self.network = LossyNetwork(self.server.http)
        self.client = self.make_client("agent")

    def make_client(self, agent: str, key: Any = None) -> Client:
        return Client("http://127.0.0.1:9876", http=self.network, agent=agent, key=key,
                      clock=self.server.clock)

    def drive(self, coroutine: Any) -> Any:
        """Drive a client call to its end: pump the wire and let backoff timers pass."""
        return self.settle(Deferred.fromCoroutine(coroutine))

    def settle(self, result: Deferred[Any]) -> Any:
        """Pump the wire and let timers pass until `result` has fired; return its value."""
        for _ in range(50):
            self.server.http.flush()
            if result.called:
                break
            self.server.clock.advance(5)
        return self.successResultOf(result)

    def stored(self, channel: str = "c") -> list[str]:
        return [c for (c,) in raw_rows(self.server.path, "SELECT content FROM messages "
                                                         "WHERE channel = ? ORDER BY id",
                                       (channel,))]


class SendTests(ClientCase):
    """Sends are retried through failures and stored exactly once."""

    def test_send(self) -> None:
        """A send returns Accepted with its id (no duplicate) and stores the message."""
        self.assertEqual(self.drive(self.client.send("c", "hello")), Accepted(1))
        self.assertEqual(self.stored(), ["hello"])

    def test_lost_response_is_stored_once(self) -> None:
        """A send whose response was lost is retried and stored once, reported duplicate."""
        self.network.lose_responses = 1
        answer = self.drive(self.client.send("c", "only once"))
        self.assertEqual(answer, Accepted(1, duplicate=True))
        self.assertEqual(self.stored(), ["only once"])

    def test_refused_connections_are_retried(self) -> None:
        """Refused connections are retried with backoff until the server answers."""
        self.network.refuse = 3
        self.assertEqual(self.drive(self.client.send("c", "eventually")).id, 1)

    def test_gives_up(self) -> None:
        """After its retries the client raises ConnectionError, not a hang."""
        self.network.refuse = 100
        result = Deferred.fromCoroutine(self.client.send("c", "never"))
        for _ in range(20):
            self.server.clock.advance(10)
        self.assertIsInstance(self.failureResultOf(result, Unreachable).value, ConnectionError)

    def test_hung_request_times_out_and_is_retried(self) -> None:
        """A request with no answer times out after REQUEST_TIMEOUT and is tried again."""
        self.network.hang = 1
        result = Deferred.fromCoroutine(self.client.send("c", "late"))
        self.server.clock.advance(REQUEST_TIMEOUT - 1)
        self.assertNoResult(result)
        self.assertEqual(self.network.requests, 1)
        self.assertEqual(self.settle(result), Accepted(1))
        self.assertEqual(self.network.requests, 2)

    def test_cancel_stays_a_cancel(self) -> None:
        """A caller's cancel ends the call at once: no retry, no timeout, nothing sent."""
        self.network.hang = 1
        result = Deferred.fromCoroutine(self.client.send("c", "never mind"))
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.server.clock.advance(10 * REQUEST_TIMEOUT)
        self.server.http.flush()
        self.assertEqual((self.network.requests, self.stored()), (1, []))

    def test_refusal_is_typed(self) -> None:
        """A 4xx is a ClientError with the status and the server's message."""
        result = Deferred.fromCoroutine(self.client.send("elipc/x", "no"))
        self.server.http.flush()
        error = self.failureResultOf(result, ClientError).value
        self.assertEqual(error.status, 400)
        self.assertIn("reserved", error.message)

    def test_signed_send_lost_response(self) -> None:
        """In secure mode the retry reuses the signature and is still stored once."""
        herald = Keyholder("herald")
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.add_operator(conn, "op", Keyholder("op").public, 1.0)
        store.register_agent(conn, "herald", "", herald.public, "op", 2.0)
        client = self.make_client("herald", herald.key)
        self.network.lose_responses = 1
        self.assertTrue(self.drive(client.send("c", "signed once")).duplicate)
        self.assertEqual(self.stored(), ["signed once"])


class DeliveryTests(ClientCase):
    """Acknowledged reads: nothing is lost between the server and the agent."""

    def setUp(self) -> None:
        super().setUp()
        for content in ("one", "two"):
            self.drive(self.client.send("c", content))

    def contents(self, page: Page) -> list[str]:
        return [m.content for m in page.messages]

    def test_lost_read_response_is_redelivered(self) -> None:
        """A read whose response is lost is answered again, then acknowledged once."""
        self.network.lose_responses = 1
        page = self.drive(self.client.read("c"))
        self.assertEqual(self.contents(page), ["one", "two"])
        self.assertEqual(self.drive(self.client.ack("c", page.messages[-1].id)), 2)
        self.assertEqual(self.drive(self.client.read("c")).messages, [])

    def test_killed_between_read_and_ack(self) -> None:
        """An agent that dies after reading, before acknowledging, gets the messages again."""
        self.drive(self.client.read("c"))
        restarted = self.make_client("agent")
        self.assertEqual(self.contents(self.drive(restarted.read("c"))), ["one", "two"])

    def test_ack_cannot_skip_ahead(self) -> None:
        """Acknowledging past the last message is refused (409)."""
        result = Deferred.fromCoroutine(self.client.ack("c", 99))
        self.server.http.flush()
        self.assertEqual(self.failureResultOf(result, ClientError).value.status, 409)

    def test_listen_acknowledges_after_handler(self) -> None:
        """listen hands each batch over and acknowledges it only after the handler is done."""
        batches: list[list[str]] = []
        done: Deferred[None] = Deferred()

        def handler(messages: list[Message]) -> Deferred[None]:
            batches.append([m.content for m in messages])
            return done

        listening = Deferred.fromCoroutine(self.client.listen("c", handler))
        self.server.http.flush()
        self.assertEqual(batches, [["one", "two"]])
        self.assertEqual(raw_rows(self.server.path, "SELECT COUNT(*) FROM watermarks")[0][0], 0)
        done.callback(None)
        self.server.http.flush()
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        self.assertEqual(store.watermark(conn, "c", "agent"), 2)
        self.drive(self.client.send("c", "three"))
        self.server.http.flush()
        self.assertEqual(batches[-1], ["three"])
        listening.cancel()
        self.server.http.flush()

    def test_failing_handler_leaves_batch_unacknowledged(self) -> None:
        """A handler that raises stops listen; the batch is delivered again next time."""
        def broken(messages: list[Message]) -> None:
            raise RuntimeError("agent crashed")

        result = Deferred.fromCoroutine(self.client.listen("c", broken))
        self.server.http.flush()
        self.failureResultOf(result, RuntimeError)
        self.assertEqual(self.contents(self.drive(self.client.read("c"))), ["one", "two"])


class PaginationTests(ClientCase):
    """Pages walk a large channel with no gap and no duplicate."""

    def setUp(self) -> None:
        super().setUp()
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.insert_messages(conn, [("big", "s", f"m{i}", "", None, None)
                                     for i in range(25_000)], 1.0)

    def test_acknowledged_pages(self) -> None:
        """25,000 messages, 1,000 a page, each acknowledged: every id once, in order."""
        seen: list[int] = []
        while True:
            page = self.drive(self.client.read("big", limit=1000))
            if not page.messages:
                break
            seen += [m.id for m in page.messages]
            self.drive(self.client.ack("big", seen[-1]))
            self.assertEqual(page.more, len(seen) < 25_000)
        self.assertEqual(seen, list(range(1, 25_001)))

    def test_auto_pages_never_pass_what_was_returned(self) -> None:
        """With the default ack=auto, each page moves the watermark just past itself."""
        first = self.drive(self.client.read("big", limit=10, ack="auto"))
        second = self.drive(self.client.read("big", limit=10, ack="auto"))
        self.assertEqual([m.id for m in first.messages + second.messages],
                         list(range(1, 21)))

    def test_history_moves_nothing(self) -> None:
        """History walks by after_id with no agent and moves no watermark."""
        seen: list[int] = []
        page = Page([], True)
        while page.more:
            page = self.drive(self.client.history("big", after_id=seen[-1] if seen else 0,
                                                limit=5000))
            seen += [m.id for m in page.messages]
        self.assertEqual(seen, list(range(1, 25_001)))
        self.assertEqual(raw_rows(self.server.path, "SELECT COUNT(*) FROM watermarks")[0][0], 0)


class RetentionTests(ClientCase):
    """Retention deletes what is older than its window and nothing newer."""

    environ = {"IPC_RETENTION": "7d"}

    def test_prune_keeps_the_window(self) -> None:
        """Messages older than 7 days go; those inside the window all stay."""
        now = self.server.clock.seconds()
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        for age_days in (30, 8, 7.01, 6.99, 1, 0):
            store.insert_message(conn, "c", "s", f"{age_days}d", "", now - age_days * 86400)
        deleted = self.drive(self.server.broker.apply_retention())
        self.assertEqual(deleted, 3)
        self.assertEqual(self.stored(), ["6.99d", "1d", "0d"])
        health = self.drive(self.client.health())
        self.assertEqual(health["oldest_id"], 4)

    def test_large_prune_in_batches(self) -> None:
        """More than one batch of old messages is deleted completely."""
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.insert_messages(conn, [("c", "s", "old", "", None, None)] * 2500, 1.0)
        self.assertEqual(self.drive(self.server.broker.apply_retention()), 2500)


class DirectoryTests(ClientCase):
    """The read-only endpoints and registration through the client."""

    def test_views(self) -> None:
        """channels, agents, health and the agent card come back as the server sent them."""
        self.drive(self.client.send("c", "x"))
        self.assertEqual(self.drive(self.client.channels())[0]["channel"], "c")
        self.assertEqual(self.drive(self.client.agents()), [])
        self.assertEqual(self.drive(self.client.health())["status"], "ok")
        self.assertEqual(self.drive(self.client.agent_card())["version"], __version__)

    def test_register(self) -> None:
        """register signs locally and the new agent appears in the directory."""
        op = Keyholder("op")
        conn = store.open_database(self.server.path)
        self.addCleanup(conn.close)
        store.add_operator(conn, "op", op.public, 1.0)
        carol = Keyholder("carol")
        answer = self.drive(self.client.register("carol", carol.public, "op", op.key))
        self.assertTrue(answer["ok"])
        self.assertIn("carol", [a["name"] for a in self.drive(self.client.agents())])



