"""The HTTP reference in docs/http-api.md stays true to the app."""

from __future__ import annotations

import json
import os
import re
from typing import Any

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


OPENAPI_DOC = os.path.join(os.path.dirname(DOC), "openapi.json")


class OpenApiTests(SynchronousTestCase):
    """The OpenAPI description, the Klein routes and docs/http-api.md agree."""

    def setUp(self) -> None:
        """The description of a server on default settings."""
        from elipc.config import Settings
        from elipc.server.openapi import describe

        self.description = describe(Settings.load({}))

    def operations(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(METHOD, path) -> operation."""
        return {(method.upper(), path): op
                for path, ops in self.description["paths"].items()
                for method, op in ops.items()}

    def test_routes_are_described(self) -> None:
        """Every route served is described, and every described operation is served."""
        self.assertEqual(set(self.operations()), HttpDocTests().served())

    def test_query_parameters(self) -> None:
        """Each operation's query parameters are exactly those its route accepts."""
        from elipc.server.routing import QUERY_PARAMS

        for key, op in self.operations().items():
            described = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            self.assertEqual(described, set(QUERY_PARAMS[key]), key)

    def test_doc_names_every_parameter(self) -> None:
        """docs/http-api.md's section of each route names each of its query parameters."""
        with open(DOC) as f:
            doc = f.read()
        for (method, path), op in self.operations().items():
            heading = f"### `{method} {path}`"
            section = doc.split(heading, 1)[1].split("\n### ", 1)[0]
            for param in op.get("parameters", []):
                if param["in"] == "query":
                    self.assertIn(f"`{param['name']}`", section, (method, path))

    def test_docs_copy_is_current(self) -> None:
        """docs/openapi.json is the description (python -m elipc.server.openapi)."""
        with open(OPENAPI_DOC) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(self.description)))

    def test_served_description(self) -> None:
        """GET /openapi.json serves the description of that server: its limits, and the
        bearer scheme once an API key is set."""
        server = Server(self, IPC_API_KEY="k", IPC_MAX_WAIT="5")
        pending = server.http.get(server.url("/openapi.json"),
                                  headers={"Authorization": "Bearer k"})
        server.http.flush()
        served = json.loads(self.successResultOf(server.http.content(
            self.successResultOf(pending))))
        self.assertEqual(served["security"], [{"bearer": []}])
        timeout = next(p for p in served["paths"]["/messages"]["get"]["parameters"]
                       if p["name"] == "timeout")
        self.assertEqual(timeout["schema"]["maximum"], 5.0)
        self.assertNotIn("security", self.description)


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
