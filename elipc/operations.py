"""The rules every write follows, as functions over a database connection.

The CLI calls them on its own connection; the server runs them in its writer thread (inside a
batch transaction). Checking and storing in one transaction leaves no gap in which the
directory could change between the check and the write. No Twisted import here; the
cryptography library is loaded only when a signature is checked.
"""


from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from elipc import store
from elipc.config import DEFAULT_REPLAY_WINDOW
from elipc.model import (
    SECURITY_CHANNEL,
    Accepted,
    Agent,
    Conflict,
    Rejected,
    Replayed,
    Signed,
    Unauthenticated,
)

# An idempotency key is remembered for a day: longer than any client retries a send.
IDEMPOTENCY_WINDOW_S = 24 * 3600.0
RETENTION_BATCH = 1000


class Policy(NamedTuple):
    """How strict signature checks are: the replay window and whether el-ipc's replayable
    signatures are still accepted."""

    window: float = DEFAULT_REPLAY_WINDOW
    strict: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> "Policy":
        """The policy a Settings object describes."""
        return cls(settings.replay_window, settings.strict_signatures)

    def nonce_horizon(self, now: float) -> float:
        """Nonces seen before this time can be forgotten: a timestamp that old fails the
        window check anyway (twice the window, for clocks that disagree either way)."""
        return now - 2 * self.window


@contextmanager
def _refusals_about(**context: str) -> Iterator[None]:
    # A refusal carries who and where it was about, for its security event.
    try:
        yield
    except Rejected as refusal:
        refusal.context = {**{k: v for k, v in context.items() if v}, **refusal.context}
        raise


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
    with _refusals_about(sender=sender, channel=channel), store.transaction(db):
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
    if signed.nonce is None or signed.timestamp is None:
        if policy.strict:
            raise Rejected("strict signatures: sign the elipc/2 payload with a timestamp and "
                           "nonce", "replayable_signature")
        payload = identity.legacy_send_payload(channel, sender, content)
    else:
        _check_fresh(signed.timestamp, now, policy)
        payload = identity.send_payload(channel, sender, signed.timestamp, signed.nonce, content)
    _verified(db, sender, "sender", payload, signed.signature, "signature")
    return signed.nonce is None


def authorize_read(db: Any, channel: str, agent: str, signed: Signed | None, now: float,
                   policy: Policy, up_to: int | None = None) -> None:
    """In secure mode, require `agent`'s elipc/2 read signature (its ack signature when
    `up_to` is given; for the security channel, an operator's) before anything reads or
    moves as `agent`. Records the nonce."""
    from elipc import identity

    def payload(timestamp: int, nonce: str) -> bytes:
        if up_to is None:
            return identity.read_payload(channel, agent, timestamp, nonce)
        return identity.ack_payload(channel, agent, up_to, timestamp, nonce)
    _authorize_reader(db, [channel], agent, signed, now, policy, payload, "read")


def authorize_stream(db: Any, channels: list[str], agent: str, signed: Signed | None,
                     now: float, policy: Policy) -> None:
    """authorize_read for an event stream of several channels: in secure mode `agent`'s
    elipc/2 stream signature over all of them (operators only for the security channel)."""
    from elipc import identity

    def payload(timestamp: int, nonce: str) -> bytes:
        return identity.stream_payload(channels, agent, timestamp, nonce)
    _authorize_reader(db, channels, agent, signed, now, policy, payload, "stream")


def _authorize_reader(db: Any, channels: list[str], agent: str, signed: Signed | None,
                      now: float, policy: Policy, payload: Callable[[int, str], bytes],
                      what: str) -> None:
    # The one check behind reads, acks and streams: fresh, by `agent`'s key over `payload`,
    # an operator's for the security channel, its nonce never seen before.
    with _refusals_about(agent=agent, channel=",".join(channels)), store.transaction(db):
        if not store.is_secure(db):
            return
        if signed is None or signed.timestamp is None or signed.nonce is None:
            raise Unauthenticated(f"signed {what} required (secure mode active): send "
                                  "X-Elipc-Timestamp, X-Elipc-Nonce and X-Elipc-Signature",
                                  "read_signature_required")
        _check_fresh(signed.timestamp, now, policy)
        entry = _verified(db, agent, "reader", payload(signed.timestamp, signed.nonce),
                          signed.signature, "read_signature")
        if SECURITY_CHANNEL in channels and not entry.is_operator:
            raise Rejected(f"only operators may read {SECURITY_CHANNEL}", "security_channel")
        if not store.remember_nonce(db, f"read:{agent}", signed.nonce, now):
            raise Rejected("replayed read nonce", "replayed_read_nonce")


def register(db: Any, name: str, agent_identity: str, public_key: str, operator: str,
             signed: Signed, now: float, policy: Policy) -> None:
    """Register (or re-register) `name` with `public_key`, authorized by `operator`'s
    elipc/2 register signature at `signed.timestamp`."""
    from elipc import identity

    assert signed.timestamp is not None
    with _refusals_about(agent=name, operator=operator), store.transaction(db):
        _check_fresh(signed.timestamp, now, policy)
        payload = identity.register_payload(name, agent_identity, signed.timestamp, public_key)
        entry = _verified(db, operator, "operator", payload, signed.signature,
                          "operator_signature")
        if not entry.is_operator:
            raise Rejected(f"'{operator}' is not an operator", "not_an_operator")
        if not store.remember_nonce(db, f"register:{operator}", signed.signature, now):
            raise Replayed("replayed registration: this one was already applied",
                           "replayed_registration")
        try:
            store.register_agent(db, name, agent_identity, public_key, operator, now,
                                 signed.timestamp, signed.signature)
        except Conflict as e:
            raise Replayed(str(e), "stale_registration") from None


def _verified(db: Any, name: str, role: str, payload: bytes, signature: str,
              signed_what: str) -> Agent:
    """The directory entry `name`, whose key must have made `signature` over `payload`.

    Both refusals do the same work on the request's own bytes: an unknown name is checked
    against a key nobody holds, so response times do not tell which names exist.
    """
    from elipc import identity

    entry = store.get_agent(db, name)
    # An unknown name gets an entry too (building one is part of the work), with a key
    # nobody holds.
    checked = entry or Agent(name, "", _DUMMY_PUBLIC_KEY, "agent", None, 0.0)
    valid = identity.verify(checked.public_key, payload, signature)
    if entry is None:
        what = {"reader": "agent"}.get(role, role)
        raise Rejected(f"unknown {what}: {name}", f"unknown_{role}")
    if not valid:
        raise Rejected(f"invalid {signed_what.replace('_', ' ')}", f"invalid_{signed_what}")
    return entry


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


def forget_expired(db: Any, now: float, policy: Policy) -> None:
    """Forget nonces past the replay horizon and idempotency keys older than a day."""
    with store.transaction(db):
        store.forget_nonces(db, policy.nonce_horizon(now))
        store.forget_idempotency(db, now - IDEMPOTENCY_WINDOW_S)


RetentionStep = Callable[[Any], int]


def retention(cutoff: float,
              batch: int = RETENTION_BATCH) -> Generator[RetentionStep, int, int]:
    """Delete the messages stored before `cutoff`, a batch at a time: yields each batch's
    operation (run it on a connection, send back how many it deleted) and returns the total.
    The server runs one batch per writer turn, so sends keep flowing in between; the CLI
    runs them back to back (`run_retention`)."""
    deleted = 0
    while True:
        count = yield lambda db: store.delete_messages_before(db, cutoff, batch)
        deleted += count
        if count < batch:
            return deleted


def run_retention(db: Any, cutoff: float, batch: int = RETENTION_BATCH) -> int:
    """`retention` on one connection, batch after batch; return how many went."""
    steps = retention(cutoff, batch)
    try:
        step = next(steps)
        while True:
            step = steps.send(step(db))
    except StopIteration as done:
        return int(done.value)
