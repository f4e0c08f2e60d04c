"""The rules every write follows, as functions over a database connection.

The CLI calls them on its own connection; the server runs them in its writer thread (inside a
batch transaction). Checking and storing in one transaction leaves no gap in which the
directory could change between the check and the write. No Twisted import here; the
cryptography library is loaded only when a signature is checked.
"""

from __future__ import annotations

from typing import Any

from elipc import store
from elipc.model import SECURITY_CHANNEL, ElipcError


class Rejected(ElipcError):
    """A well-formed request that is not allowed; `status` is its HTTP status (403 unless
    said otherwise) and `kind` names it in security events."""

    status = 403

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Unauthenticated(Rejected):
    """Proof of identity is missing altogether (HTTP 401)."""

    status = 401


class Replayed(Rejected):
    """A nonce (or registration) already used inside the replay window (HTTP 409)."""

    status = 409


class Policy:
    """How strict signature checks are: the replay window and whether el-ipc's replayable
    signatures are still accepted."""

    __slots__ = ("window", "strict")

    def __init__(self, window: float = 300.0, strict: bool = False) -> None:
        self.window = window
        self.strict = strict

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        """The policy a Settings object describes."""
        return cls(settings.replay_window, settings.strict_signatures)


class Signed:
    """A signature with its elipc/2 timestamp and nonce (both None for el-ipc's form)."""

    __slots__ = ("signature", "timestamp", "nonce")

    def __init__(self, signature: str, timestamp: int | None = None,
                 nonce: str | None = None) -> None:
        self.signature = signature
        self.timestamp = timestamp
        self.nonce = nonce


class Accepted:
    """What a send came to: its id, whether its signature was el-ipc's replayable kind, and
    whether it repeated an earlier send's idempotency key (then nothing new was stored)."""

    __slots__ = ("id", "replayable", "duplicate")

    def __init__(self, id: int, replayable: bool = False, duplicate: bool = False) -> None:
        self.id, self.replayable, self.duplicate = id, replayable, duplicate


def accept_message(
    db: Any, channel: str, sender: str, content: str, signed: Signed, now: float,
    policy: Policy, idempotency_key: str | None = None,
) -> Accepted:
    """Store a message if the directory allows it, once per idempotency key.

    Open mode stores any message (a signature, with its timestamp and nonce, is kept for
    readers to verify). Secure mode requires the sender's registered key over the elipc/2
    payload (timestamp in the window, nonce unused), or over el-ipc's payload unless strict.
    A repeat of `sender`'s `idempotency_key` (checked before the nonce, since a retry carries
    the same one) returns the first send's id. Raises Rejected (nothing stored) otherwise.
    """
    with store.transaction(db):
        secure = store.is_secure(db)
        replayable = secure and _check_send(db, channel, sender, content, signed, now, policy)
        if idempotency_key is not None:
            first = store.idempotent_id(db, sender, idempotency_key)
            if first is not None:
                return Accepted(first, replayable, duplicate=True)
        if secure and signed.nonce is not None and not store.remember_nonce(
                db, f"send:{sender}", signed.nonce, now):
            raise Replayed("replayed nonce: this send was already accepted", "replayed_nonce")
        message_id = store.insert_message(db, channel, sender, content, signed.signature, now,
                                          signed.timestamp, signed.nonce)
        if idempotency_key is not None:
            store.remember_idempotency(db, sender, idempotency_key, message_id, now)
        return Accepted(message_id, replayable)


def _check_send(db: Any, channel: str, sender: str, content: str, signed: Signed,
                now: float, policy: Policy) -> bool:
    from elipc import identity

    if not signed.signature:
        raise Rejected("signature required (secure mode active)", "signature_required")
    agent = _known(db, sender, "sender", "unknown_sender")
    if signed.nonce is None or signed.timestamp is None:
        if policy.strict:
            raise Rejected("strict signatures: sign the elipc/2 payload with a timestamp and "
                           "nonce", "replayable_signature")
        payload = identity.legacy_send_payload(channel, sender, content)
    else:
        _check_fresh(signed.timestamp, now, policy)
        payload = identity.send_payload(channel, sender, signed.timestamp, signed.nonce, content)
    if not identity.verify(agent.public_key, payload, signed.signature):
        raise Rejected("invalid signature", "invalid_signature")
    return signed.nonce is None


def authorize_read(db: Any, channel: str, agent: str, signed: Signed | None, now: float,
                   policy: Policy, up_to: int | None = None) -> None:
    """In secure mode, require `agent`'s elipc/2 read signature (its ack signature when
    `up_to` is given; for the security channel, an operator's) before anything reads or
    moves as `agent`. Records the nonce."""
    from elipc import identity

    with store.transaction(db):
        if not store.is_secure(db):
            return
        if signed is None or signed.timestamp is None or signed.nonce is None:
            raise Unauthenticated("signed read required (secure mode active): send "
                                  "X-Elipc-Timestamp, X-Elipc-Nonce and X-Elipc-Signature",
                                  "read_signature_required")
        entry = _known(db, agent, "agent", "unknown_reader")
        _check_fresh(signed.timestamp, now, policy)
        payload = (identity.read_payload(channel, agent, signed.timestamp, signed.nonce)
                   if up_to is None else
                   identity.ack_payload(channel, agent, up_to, signed.timestamp, signed.nonce))
        if not identity.verify(entry.public_key, payload, signed.signature):
            raise Rejected("invalid read signature", "invalid_read_signature")
        if channel == SECURITY_CHANNEL and not entry.is_operator:
            raise Rejected(f"only operators may read {SECURITY_CHANNEL}", "security_channel")
        if not store.remember_nonce(db, f"read:{agent}", signed.nonce, now):
            raise Rejected("replayed read nonce", "replayed_read_nonce")


def register(db: Any, name: str, agent_identity: str, public_key: str, operator: str,
             signed: Signed, now: float, policy: Policy) -> None:
    """Register (or re-register) `name` with `public_key`, authorized by `operator`'s
    elipc/2 register signature at `signed.timestamp`."""
    from elipc import identity

    assert signed.timestamp is not None
    with store.transaction(db):
        _check_fresh(signed.timestamp, now, policy)
        entry = _known(db, operator, "operator", "unknown_operator")
        if not entry.is_operator:
            raise Rejected(f"'{operator}' is not an operator", "not_an_operator")
        payload = identity.register_payload(name, agent_identity, signed.timestamp, public_key)
        if not identity.verify(entry.public_key, payload, signed.signature):
            raise Rejected("invalid operator signature", "invalid_operator_signature")
        if not store.remember_nonce(db, f"register:{operator}", signed.signature, now):
            raise Replayed("replayed registration: this one was already applied",
                           "replayed_registration")
        try:
            store.register_agent(db, name, agent_identity, public_key, operator, now,
                                 signed.timestamp, signed.signature)
        except store.Conflict as e:
            raise Replayed(str(e), "stale_registration") from None


def _known(db: Any, name: str, what: str, kind: str) -> Any:
    entry = store.get_agent(db, name)
    if entry is None:
        _spend_like_a_verify()
        raise Rejected(f"unknown {what}: {name}", kind)
    return entry


def _spend_like_a_verify() -> None:
    # A refusal for an unknown name takes as long as one for a bad signature, so response
    # times do not tell an attacker which names exist.
    from elipc import identity

    identity.verify(_DUMMY_PUBLIC_KEY, b"elipc", "A" * 86 + "==")


def _check_fresh(timestamp: int, now: float, policy: Policy) -> None:
    if abs(now - timestamp) > policy.window:
        raise Rejected(f"stale timestamp: more than {policy.window:g} s from the server's "
                       "clock", "stale_timestamp")


# A valid Ed25519 public key nobody holds the private half of (the W3C did:key test vector).
_DUMMY_PUBLIC_KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAO2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=\n"
    "-----END PUBLIC KEY-----"
)
