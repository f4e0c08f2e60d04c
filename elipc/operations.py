"""The rules every write follows, as functions over a database connection.

The CLI calls them on its own connection; the server runs them in its writer thread (inside a
batch transaction). Checking and storing in one transaction leaves no gap in which the
directory could change between the check and the write. No Twisted import here.
"""

from __future__ import annotations

from typing import Any

from elipc import store
from elipc.model import ElipcError


class Rejected(ElipcError):
    """The request is well-formed but not allowed (secure mode refused it).

    `kind` names the refusal for security events: signature_required, unknown_sender,
    invalid_signature.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def accept_message(
    db: Any, channel: str, sender: str, content: str, signature: str, now: float
) -> int:
    """Store a message if the directory allows it; return its id or raise Rejected.

    Open mode stores any message (a signature, if given, is kept as el-ipc did). Secure mode
    requires a signature by the sender's registered key over el-ipc's payload.
    """
    with store.transaction(db):
        if store.is_secure(db):
            check_sender_signature(db, channel, sender, content, signature)
        return store.insert_message(db, channel, sender, content, signature, now)


def check_sender_signature(
    db: Any, channel: str, sender: str, content: str, signature: str
) -> None:
    """Raise Rejected unless `signature` is `sender`'s registered key over the message."""
    if not signature:
        raise Rejected("signature required (secure mode active)", "signature_required")
    agent = store.get_agent(db, sender)
    if agent is None:
        raise Rejected(f"unknown sender: {sender}", "unknown_sender")
    from elipc import identity  # cryptography loads only when a signature is checked

    if not identity.verify(agent.public_key, identity.send_payload(channel, sender, content),
                           signature):
        raise Rejected("invalid signature", "invalid_signature")
