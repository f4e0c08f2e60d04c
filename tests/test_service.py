"""The tap's options: what `twist elipc ...` turns into Settings."""

from __future__ import annotations

import os

import treq
from twisted.web.client import HTTPConnectionPool
from twisted.internet import reactor
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from elipc import store
from elipc.model import StorageError
from elipc.server.broker import Broker
from elipc.server.service import Connections, Listener, Options, StorageService, makeService
from tests.helpers import raw_rows, temp_dir


class OptionsTests(SynchronousTestCase):
    """Options parse into Settings, falling back to the environment, refusing bad values."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_port_number_binds_loopback(self) -> None:
        """A bare port number listens on 127.0.0.1 only."""
        settings = self.parse("--port", "9999")["settings"]
        self.assertEqual(settings.listen, "tcp:9999:interface=127.0.0.1:backlog=1024")
        self.assertEqual(settings.port, 9999)

    def test_endpoint_string(self) -> None:
        """Any Twisted endpoint string is used as given."""
        settings = self.parse("--port", "unix:/tmp/elipc.sock")["settings"]
        self.assertEqual(settings.listen, "unix:/tmp/elipc.sock")

    def test_security_and_retention(self) -> None:
        """--strict-signatures, --replay-window, --retention and --linger reach Settings."""
        settings = self.parse("--strict-signatures", "--replay-window", "60",
                              "--retention", "7d", "--linger", "0.3")["settings"]
        self.assertEqual((settings.strict_signatures, settings.replay_window,
                          settings.retention, settings.linger), (True, 60.0, 7 * 86400, 0.3))

    def test_bad_values(self) -> None:
        """Unusable values are usage errors naming the option."""
        for argv in (("--retention", "soon"), ("--linger", "-1"), ("--replay-window", "x")):
            with self.assertRaises(UsageError) as caught:
                self.parse(*argv)
            self.assertIn(argv[0].lstrip("-").split("-")[0], str(caught.exception))


class ServiceTreeTests(TestCase):
    """makeService's tree starts storage, broker and listener, and stops them in reverse."""

    def setUp(self) -> None:
        self.path = os.path.join(temp_dir(self), "ipc.db")
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--db", self.path])
        self.service = makeService(options, reactor)
        self.children = list(self.service)
        self.addCleanup(self.stop)

    def stop(self) -> object:
        """Stop what a test started; close the pools of a server that never started."""
        if self.service.running:
            return self.service.stopService()
        self.children[1].database.close()
        return None

    def test_children_in_order(self) -> None:
        """Connections, storage, the broker, then the listener (so it is stopped first)."""
        self.assertEqual([type(child) for child in self.children],
                         [Connections, StorageService, Broker, Listener])

    async def test_stop_answers_long_polls_then_closes(self) -> None:
        """Stopping a live server answers a pending long-poll with [] after the port closes,
        and leaves the database closed with the message sent before it."""
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.service.startService()
        port = await self.children[3]._waitingForPort
        base = f"http://127.0.0.1:{port.getHost().port}"
        sent = await treq.post(f"{base}/send", json={"channel": "c", "sender": "a",
                                                     "content": "kept"}, pool=pool)
        self.assertEqual(await sent.json(), {"ok": True, "id": 1})
        read = await treq.get(f"{base}/messages?channel=c&agent=r", pool=pool)
        self.assertEqual(len(await read.json()), 1)  # read it: the next one waits
        polling = treq.get(f"{base}/messages?channel=c&agent=r&wait=true&timeout=30", pool=pool)
        while not len(self.children[2].waiters):
            await deferLater(reactor, 0.01)
        await self.service.stopService()
        response = await polling
        self.assertEqual(await response.json(), [])
        with self.assertRaises(ConnectError):
            await treq.get(f"{base}/health", persistent=False)
        self.assertEqual(raw_rows(self.path, "SELECT content FROM messages"), [("kept",)])
        self.assertFalse(self.children[1].database._writer.running)
        self.assertEqual(self.children[0].site.open_channels, set())
        with self.assertRaises(StorageError):  # a request still on its way gets a 503
            await self.children[1].database.read(store.is_secure)
