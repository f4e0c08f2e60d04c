"""The A2A agent card (/.well-known/agent-card.json): A2A 1.0's fields, el-ipc's for old
readers, and the operator's JWS signatures when they still match.

The card is built from Settings and the directory. An operator signs it locally
(`elipc card sign --key operator.key`): two JWS (RFC 7515, alg EdDSA, kid the operator's
did:key) with detached payloads, both over RFC 8785 canonical JSON of the card without
`signatures`:
- the first over the card's A2A 1.0 fields with empty values left out, which is what an A2A
  client (a2a-sdk) rebuilds from the card it parsed and checks;
- the second over the whole card, el-ipc's `url`, `authentication` and `did` included.
The database keeps the signatures; the server never holds a private key. A stored signature
that no longer matches the card (its settings or its operator changed) is not served.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from elipc import __version__
from elipc.config import Settings
from elipc.model import ElipcError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from elipc.model import Agent

Card = dict[str, Any]
PROTOCOL_VERSION = "1.0"
# The card's fields in A2A 1.0 (lf.a2a.v1.AgentCard), `signatures` aside.
A2A_FIELDS = frozenset({
    "name", "description", "supportedInterfaces", "provider", "version", "documentationUrl",
    "capabilities", "securitySchemes", "securityRequirements", "defaultInputModes",
    "defaultOutputModes", "skills", "iconUrl",
})
CACHE_SECONDS = 300


def build_card(settings: Settings, operator_public_key: str | None,
               streaming: bool = True) -> Card:
    """The card this server serves (without signatures): A2A 1.0, plus el-ipc's `url`,
    `authentication` and, once an operator exists, `did` (its did:key)."""
    schemes: dict[str, Any] = {
        "ed25519": {"apiKeySecurityScheme": {
            "location": "header", "name": "X-Elipc-Signature",
            "description": (
                "Not a static key. In secure mode (once an operator exists) each send carries "
                "an Ed25519 signature by the sender's registered key in its body, and each "
                "read or ack one by the reader's key in X-Elipc-Signature with "
                "X-Elipc-Timestamp and X-Elipc-Nonce; see /openapi.json and docs/security.md."
            )}},
    }
    requirement: dict[str, Any] = {}
    if settings.api_key:
        schemes["bearer"] = {"httpAuthSecurityScheme": {
            "scheme": "Bearer", "description": "IPC_API_KEY, required on every request"}}
        requirement["bearer"] = {"list": []}
    if operator_public_key:
        requirement["ed25519"] = {"list": []}
    card: Card = {
        "name": settings.agent_name,
        "description": settings.agent_desc,
        "version": __version__,
        "supportedInterfaces": [{"url": settings.agent_url, "protocolBinding": "HTTP+JSON",
                                 "protocolVersion": PROTOCOL_VERSION}],
        "provider": {"organization": settings.agent_name, "url": settings.agent_url},
        "documentationUrl": f"{settings.agent_url}/openapi.json",
        "capabilities": {"streaming": streaming, "pushNotifications": False},
        "securitySchemes": schemes,
        "securityRequirements": [{"schemes": requirement}] if requirement else [],
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{
            "id": "ipc",
            "name": "Inter-Agent Messaging",
            "description": ("Send and receive messages on named channels; each agent reads "
                            "each message once, with long-poll, event streams and "
                            "Ed25519-signed senders."),
            "tags": ["ipc", "messaging", "ed25519"],
        }],
        # el-ipc's card, for readers from before A2A 0.3.
        "url": settings.agent_url,
        "authentication": {"schemes": ["Ed25519Signature"]},
    }
    if not card["securityRequirements"]:
        del card["securityRequirements"]
    if operator_public_key:
        from elipc.identity import did_key

        card["did"] = did_key(operator_public_key)
    return card


def served_card(settings: Settings, operators: list[Agent], stored: object,
                streaming: bool = True) -> tuple[Card, bool]:
    """The card as served, with its stored signatures while they still match it; and
    whether stored signatures were left out because they no longer do (stale)."""
    card = build_card(settings, operators[0].public_key if operators else None, streaming)
    if stored is None:
        return card, False
    if signed_by(card, stored, operators) is None:
        return card, True
    card["signatures"] = stored
    return card, False


RESIGN = "re-sign it: elipc card sign --key <an operator's key file>"


# -- signatures ------------------------------------------------------------------------------


def _without_empty(value: Any) -> Any:
    # As a2a-sdk rebuilds a parsed card: "", [] and {} left out, all the way down.
    if isinstance(value, dict):
        kept = {k: c for k, v in value.items() if (c := _without_empty(v)) is not None}
        return kept or None
    if isinstance(value, list):
        items = [c for v in value if (c := _without_empty(v)) is not None]
        return items or None
    return None if value == "" else value


def payloads(card: Card) -> tuple[bytes, bytes]:
    """What the two signatures cover: the A2A fields (empty values left out), and the whole
    card; both without `signatures`, in RFC 8785 canonical JSON."""
    import rfc8785

    unsigned = {k: v for k, v in card.items() if k != "signatures"}
    a2a = _without_empty({k: v for k, v in unsigned.items() if k in A2A_FIELDS}) or {}
    return rfc8785.dumps(a2a), rfc8785.dumps(unsigned)


def key_id(public_key_pem: str) -> str:
    """The JWS `kid` of an operator: its did:key, as a DID URL of its one key."""
    from elipc.identity import did_key

    did = did_key(public_key_pem)
    return f"{did}#{did.removeprefix('did:key:')}"


def sign_card(card: Card, key: Ed25519PrivateKey, public_key_pem: str) -> list[dict[str, str]]:
    """The card's two JWS signatures by `key` (whose public half is `public_key_pem`)."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    header = {"alg": "EdDSA", "typ": "JOSE", "kid": key_id(public_key_pem)}
    signatures = []
    for payload in payloads(card):
        with warnings.catch_warnings():  # joserfc calls EdDSA deprecated (RFC 9864); A2A uses it
            warnings.simplefilter("ignore")
            compact = jws.serialize_compact(header, payload, OKPKey.import_key(key),
                                            algorithms=["EdDSA"])
        protected, _, signature = jws.detach_content(compact).split(".")
        signatures.append({"protected": protected, "signature": signature})
    return signatures


def signed_by(card: Card, signatures: object, operators: Iterable[Agent]) -> str | None:
    """The operator whose key made both of `signatures` over this very card, or None (a
    signature of another card, or of anyone else, or not one at all)."""
    if not (isinstance(signatures, list) and len(signatures) == 2
            and all(isinstance(s, dict) for s in signatures)):
        return None
    by_kid = {}
    for operator in operators:
        try:
            by_kid[key_id(operator.public_key)] = operator
        except ElipcError:
            continue  # an entry el-ipc stored without a usable key
    expected = payloads(card)
    signer = None
    for signature, payload in zip(signatures, expected):
        verified = _verify(signature, payload, by_kid)
        if verified is None or (signer is not None and verified.name != signer):
            return None
        signer = verified.name
    return signer


def _verify(signature: dict[str, Any], payload: bytes, by_kid: dict[str, Agent]) -> Agent | None:
    import base64

    from joserfc import jws
    from joserfc.errors import JoseError
    from joserfc.jwk import OKPKey

    protected, value = signature.get("protected"), signature.get("signature")
    if not isinstance(protected, str) or not isinstance(value, str):
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
        kid = header.get("kid") if isinstance(header, dict) else None
        operator = by_kid.get(kid) if isinstance(kid, str) else None
        if operator is None or header.get("alg") != "EdDSA":
            return None
        from elipc.identity import parse_public_key

        public = OKPKey.import_key(parse_public_key(operator.public_key))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jws.deserialize_compact(f"{protected}..{value}", public, payload=payload,
                                    algorithms=["EdDSA"])
    except (ValueError, TypeError, JoseError):
        return None
    return operator
