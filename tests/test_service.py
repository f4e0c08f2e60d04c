"""The tap's options: what `twist elipc ...` turns into Settings."""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from elipc.server.service import Options


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
