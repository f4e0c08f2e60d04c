"""The HTTP reference in docs/http-api.md stays true to the app."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Server

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "docs", "http-api.md")
ROUTE_HEADING = re.compile(r"^### `(GET|POST|PUT|DELETE) (/\S*)`$", re.MULTILINE)


class HttpDocTests(SynchronousTestCase):
    """Every route documented exists with its method, and every route is documented."""

    def documented(self) -> set[tuple[str, str]]:
        with open(DOC) as f:
            return set(ROUTE_HEADING.findall(f.read()))

    def served(self) -> set[tuple[str, str]]:
        from elipc.server.web import HttpApi

        routes = set()
        for rule in HttpApi.app.url_map.iter_rules():
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((method, rule.rule))
        return routes

    def test_documented_routes_exist(self) -> None:
        """Each `### METHOD /path` heading names a route the app serves."""
        documented = self.documented()
        self.assertTrue(documented, "no routes found in the doc")
        self.assertEqual(documented - self.served(), set())

    def test_served_routes_are_documented(self) -> None:
        """No route is served without a section in the doc."""
        self.assertEqual(self.served() - self.documented(), set())

    def test_documented_routes_answer(self) -> None:
        """A documented route never answers 404 or 405 for its own method."""
        server = Server(self)
        for method, path in self.documented():
            pending = server.http.request(method, server.url(path), data=b"{}")
            server.http.flush()
            self.assertNotIn(self.successResultOf(pending).code, (404, 405), (method, path))


SECURITY_DOC = os.path.join(os.path.dirname(DOC), "security.md")


class SecurityDocTests(SynchronousTestCase):
    """The worked example in docs/security.md is what elipc's own helpers produce."""

    def test_worked_example(self) -> None:
        """The documented payload, signatures and did:key come out of elipc's helpers."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from elipc import identity

        with open(SECURITY_DOC) as f:
            doc = f.read()
        key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        send = identity.send_payload("ops", "herald", 1767225600, "Zm9vYmFyLWJhei0xMjM0",
                                     "deploy done")
        read = identity.read_payload("ops", "herald", 1767225600, "cmVhZC1ub25jZS0wMDAx")
        self.assertIn(f"these {len(send)} bytes", doc)
        self.assertIn(send.decode().replace("\n", "\\n"), doc)
        for payload in (send, read):
            self.assertIn(identity.sign(key, payload), doc)
        self.assertIn(identity.did_key(identity.public_pem(key.public_key())), doc)
        self.assertIn(identity.private_pem(key).splitlines()[1], doc)
