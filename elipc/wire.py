"""The fields of a request body or its signature headers, read into domain values, for every
front that takes them (the Klein server, el's sidecar plugin). No Twisted: the sidecar runs
under the user's own python3.
"""

from __future__ import annotations

from typing import Any

from elipc.identity import IdentityError, decode_signature, parse_public_key
from elipc.model import (
    UNSIGNED,
    Conflict,
    ElipcError,
    InvalidInput,
    Rejected,
    Replayed,
    Signed,
    StorageError,
    TooLarge,
    Unauthenticated,
    check_nonce,
    check_timestamp,
)

# 64 bytes are 86 base64 characters and "==".
UNPADDED_SIGNATURE_CHARS = 86

# The HTTP status of every domain error, most specific first (the first match wins).
STATUS: tuple[tuple[type[ElipcError], int], ...] = (
    (TooLarge, 413),
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (Replayed, 409),
    (Rejected, 403),
    (Conflict, 409),
    (StorageError, 503),
)


def status_of(error: ElipcError) -> int:
    """The HTTP status for `error` (500 for a domain error nobody placed: a bug)."""
    return next((status for kind, status in STATUS if isinstance(error, kind)), 500)


def required(body: dict[str, Any], field: str) -> Any:
    """A send's or ack's required field (el-ipc's message when one is missing)."""
    value = body.get(field)
    if value is None or value == "":
        raise InvalidInput("channel, sender, and content required")
    return value


def signature(value: Any, field: str) -> str:
    """A base64 Ed25519 signature, as sent."""
    if not isinstance(value, str) or decode_signature(value) is None:
        raise InvalidInput(f"{field} must be base64 of a 64-byte Ed25519 signature")
    return value


def send_signature(body: dict[str, Any]) -> Signed:
    """A send's signature fields: none, el-ipc's signature alone, or elipc/2's three (a null
    field is an absent one; an empty signature is none)."""
    sig, timestamp, nonce = body.get("signature"), body.get("timestamp"), body.get("nonce")
    if sig in (None, ""):
        if timestamp is not None or nonce is not None:
            raise InvalidInput("timestamp and nonce come with a signature")
        return UNSIGNED
    if (timestamp is None) != (nonce is None):
        raise InvalidInput("timestamp and nonce go together")
    if timestamp is None:
        return Signed(signature(sig, "signature"))
    return Signed(signature(sig, "signature"), body_timestamp(timestamp), check_nonce(nonce))


def whole_number(value: Any) -> int | None:
    """A JSON integer as JSON Schema has it (46 or 46.0), or None for anything else (a
    string, a boolean, a fraction)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value if isinstance(value, int) else None


def body_timestamp(value: Any) -> int:
    """A body's timestamp: a JSON integer (not a string, not a boolean) of Unix seconds."""
    seconds = whole_number(value)
    if seconds is None:
        raise InvalidInput("timestamp must be integer Unix seconds")
    return check_timestamp(seconds)


def read_signature(timestamp: str | None, nonce: str | None,
                   sig: str | None) -> Signed | None:
    """A signed read's or ack's X-Elipc-Timestamp, -Nonce and -Signature headers: each one
    given must be well formed (InvalidInput otherwise); fewer than the three is no signature
    (None: refused in secure mode, where reads must be signed, of no concern in open mode)."""
    if sig is not None and len(sig) == UNPADDED_SIGNATURE_CHARS:
        sig += "=="  # base64 without its padding, as header values often travel
    checked = (None if timestamp is None else check_timestamp(timestamp),
               None if nonce is None else check_nonce(nonce),
               None if sig is None else signature(sig, "X-Elipc-Signature"))
    if checked[0] is None or checked[1] is None or checked[2] is None:
        return None
    return Signed(checked[2], checked[0], checked[1])


def public_key(value: Any) -> str:
    """A PEM Ed25519 public key, kept exactly as sent: the operator signed these very
    characters."""
    if not isinstance(value, str):
        raise InvalidInput("public_key must be a PEM string")
    try:
        parse_public_key(value)
    except IdentityError:
        raise InvalidInput("public_key is not an Ed25519 public key (PEM)") from None
    return value
