"""The A2A agent card: A2A 1.0 as a2a-sdk reads and validates it, signed by an operator (JWS
verified by a JOSE library and by a2a-sdk), never served with a stale signature, cacheable."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import warnings
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from elipc import identity
from elipc.agentcard import key_id, payloads
from tests.clirun import run_cli
from tests.helpers import Server
from tests.test_e2e import ServerCase
from tests.test_remote_cli import RemoteCase


def seed(db: str, folder: str) -> str:
    """Operator op in `db`; return its key file."""
    result = run_cli(db, "seed", "op", "--out", "op", cwd=folder)
    assert result.code == 0, result.err
    return os.path.join(folder, "op.key")


def jose_verified(card: dict[str, Any], public_key_pem: str) -> bool:
    """Both signatures verify with joserfc, payloads rebuilt from the card as served."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    key = OKPKey.import_key(identity.parse_public_key(public_key_pem))
    for signature, payload in zip(card["signatures"], payloads(card)):
        header = json.loads(base64.urlsafe_b64decode(signature["protected"] + "=="))
        assert header == {"alg": "EdDSA", "typ": "JOSE", "kid": key_id(public_key_pem)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jws.deserialize_compact(f"{signature['protected']}..{signature['signature']}",
                                    key, payload=payload, algorithms=["EdDSA"])
    return True


class ResolverTests(ServerCase):
    """A real `twist elipc`, its card fetched by a2a-sdk's own resolver."""

    def test_a2a_sdk_resolves_validates_and_verifies(self) -> None:
        """A2ACardResolver parses the signed card, validate_proto_required_fields finds
        every required field, a2a-sdk's signature verifier accepts it, and joserfc verifies
        both signatures; el-ipc's fields are still there for old readers."""
        key = seed(self.db, self.dir)
        self.assertEqual(run_cli(self.db, "card", "sign", "--key", key, cwd=self.dir,
                                 IPC_AGENT_URL=self.base).code, 0)
        self.twist(IPC_AGENT_URL=self.base)
        raw, parsed = asyncio.run(self.resolve())
        self.assertEqual(parsed.supported_interfaces[0].protocol_binding, "HTTP+JSON")
        self.assertEqual(parsed.supported_interfaces[0].protocol_version, "1.0")
        self.assertTrue(parsed.capabilities.streaming)
        self.assertEqual(len(parsed.signatures), 2)
        public = identity.public_pem(identity.load_private_key(key).public_key())
        self.assertTrue(jose_verified(raw, public))
        self.assertEqual((raw["url"], raw["did"]), (self.base, identity.did_key(public)))
        self.assertEqual(raw["authentication"], {"schemes": ["Ed25519Signature"]})

    async def resolve(self) -> tuple[dict[str, Any], Any]:
        import httpx
        from a2a.client import A2ACardResolver
        from a2a.utils.proto_utils import validate_proto_required_fields
        from a2a.utils.signing import create_signature_verifier

        def key_for(kid: str | None, jku: str | None) -> Any:
            public = identity.public_pem(identity.load_private_key(
                os.path.join(self.dir, "op.key")).public_key())
            assert kid == key_id(public)
            return identity.parse_public_key(public)

        async with httpx.AsyncClient() as client:
            raw = (await client.get(f"{self.base}/.well-known/agent-card.json")).json()
            resolver = A2ACardResolver(client, self.base)
            verifier = create_signature_verifier(key_for, ["EdDSA"])
            parsed = await resolver.get_agent_card(signature_verifier=verifier)
        validate_proto_required_fields(parsed)
        return raw, parsed


class ServedCardTests(SynchronousTestCase):
    def setUp(self) -> None:
        """A server in memory named Herald, with an operator."""
        self.server = Server(self, IPC_AGENT_NAME="Herald")
        self.dir = os.path.dirname(self.server.path)
        self.key = seed(self.server.path, self.dir)

    def get(self, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        http = self.server.http
        pending = http.get(self.server.url("/.well-known/agent-card.json"), headers=headers)
        http.flush()
        response = self.successResultOf(pending)
        return response.code, self.successResultOf(http.content(response)), response.headers

    def sign(self, **env: str) -> None:
        result = run_cli(self.server.path, "card", "sign", "--key", self.key, cwd=self.dir,
                         **env)
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.json()["signed_by"], "op")

    def test_signed_when_it_matches(self) -> None:
        """Signed with the server's own settings, the card is served with its signatures."""
        self.sign(IPC_AGENT_NAME="Herald")
        card = json.loads(self.get()[1])
        self.assertTrue(jose_verified(card, self.public()))

    def test_stale_signature_is_not_served(self) -> None:
        """Signed for another card (another name), the signatures are left out, and the
        server says once how to re-sign."""
        self.sign(IPC_AGENT_NAME="Someone else")
        said: list[str] = []
        observer = lambda event: said.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for _ in range(2):
            card = json.loads(self.get()[1])
            self.assertNotIn("signatures", card)
        self.assertEqual(card["name"], "Herald")
        stale = [line for line in said if "no longer matches" in line]
        self.assertEqual(len(stale), 1, said)
        self.assertIn("elipc card sign --key", stale[0])

    def test_etag_and_cache(self) -> None:
        """An ETag and max-age; If-None-Match with it gets 304 and no body; a new
        signature makes a new ETag."""
        status, _, headers = self.get()
        etag = headers.getRawHeaders("etag")[0]
        self.assertEqual(headers.getRawHeaders("cache-control"), ["max-age=300"])
        status, body, _ = self.get({"If-None-Match": etag})
        self.assertEqual((status, body), (304, b""))
        self.assertEqual(self.get({"If-None-Match": '"other"'})[0], 200)
        self.sign(IPC_AGENT_NAME="Herald")
        self.assertNotEqual(self.get()[2].getRawHeaders("etag")[0], etag)

    def test_refused_signatures(self) -> None:
        """POST /card/signatures with signatures that are not an operator's over this card
        is 403 and keeps nothing."""
        http = self.server.http
        pending = http.post(self.server.url("/card/signatures"), json={"signatures": [
            {"protected": "e30", "signature": "AAAA"}, {"protected": "e30", "signature": "A"}]})
        http.flush()
        self.assertEqual(self.successResultOf(pending).code, 403)
        self.assertNotIn("signatures", json.loads(self.get()[1]))

    def public(self) -> str:
        return identity.public_pem(identity.load_private_key(self.key).public_key())


class RemoteSignTests(RemoteCase):
    def test_sign_through_the_server(self) -> None:
        """`elipc --server URL card sign` signs the card the server serves, here, and the
        server keeps it; a key that is no operator's is refused."""
        self.local("seed", "op", "--out", self.file("op"))
        signed = json.loads(self.remote("card", "sign", "--key", self.file("op.key")).out)
        self.assertEqual(signed["signed_by"], "op")
        card = json.loads(self.remote("agent-card").out)
        public = identity.public_pem(identity.load_private_key(self.file("op.key")).public_key())
        self.assertTrue(jose_verified(card, public))
        self.local("keygen", "--out", self.file("stranger"))
        self.assertIn("not an operator's", self.refused("card", "sign", "--key",
                                                        self.file("stranger.key")))
