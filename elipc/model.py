"""The domain's shapes and rules: messages, agents, and what a valid name or content is.

No Twisted import: the CLI's local path loads this module on every call.
"""

from __future__ import annotations

from typing import Any

MAX_NAME_CHARS = 256


class ElipcError(Exception):
    """A failure elipc explains to its user in one line (CLI: stderr and exit 1; HTTP: 4xx)."""


class InvalidInput(ElipcError, ValueError):
    """A name, content or other value breaks elipc's rules; the message says which and why."""


class Message:
    """One stored message, rendered in el-ipc's JSON shape (plus verification fields)."""

    __slots__ = ("id", "channel", "sender", "content", "created_at", "signature",
                 "signed_timestamp", "nonce")

    def __init__(
        self, id: int, channel: str, sender: str, content: str, created_at: float,
        signature: str, signed_timestamp: int | None = None, nonce: str | None = None,
    ) -> None:
        self.id = id
        self.channel = channel
        self.sender = sender
        self.content = content
        self.created_at = created_at
        self.signature = signature or ""
        self.signed_timestamp = signed_timestamp
        self.nonce = nonce

    @classmethod
    def from_json(cls, channel: str, shape: dict[str, Any]) -> Message:
        """The message a server answered as `as_json`, on `channel`."""
        return cls(shape["id"], channel, shape["sender"], shape["content"], shape["timestamp"],
                   shape.get("signature", ""), shape.get("signed_timestamp"), shape.get("nonce"))

    def as_json(self) -> dict[str, object]:
        """el-ipc's shape (id, sender, content, timestamp, `signed` when signed), plus what a
        reader needs to verify: signature, and for elipc/2 signatures signed_timestamp, nonce.
        """
        shape: dict[str, object] = {
            "id": self.id,
            "sender": self.sender,
            "content": self.content,
            "timestamp": self.created_at,
        }
        if self.signature:
            shape["signed"] = True
            shape["signature"] = self.signature
        if self.nonce is not None:
            shape["signed_timestamp"] = self.signed_timestamp
            shape["nonce"] = self.nonce
        return shape


class Agent:
    """A directory entry: an operator or an agent an operator registered."""

    __slots__ = ("name", "identity", "public_key", "role", "registered_by", "created_at",
                 "registration_ts", "registration_signature")

    def __init__(
        self, name: str, identity: str, public_key: str, role: str,
        registered_by: str | None, created_at: float, registration_ts: int = 0,
        registration_signature: str = "",
    ) -> None:
        self.name = name
        self.identity = identity
        self.public_key = public_key
        self.role = role
        self.registered_by = registered_by
        self.created_at = created_at
        self.registration_ts = registration_ts
        self.registration_signature = registration_signature

    @property
    def is_operator(self) -> bool:
        """Whether this entry may authorize registrations."""
        return self.role == "operator"

    def as_json(self) -> dict[str, object]:
        """el-ipc's `/agents` shape plus the public key (never anything private)."""
        return {
            "name": self.name,
            "identity": self.identity,
            "role": self.role,
            "registered_by": self.registered_by,
            "created_at": self.created_at,
            "public_key": self.public_key,
        }


def check_name(value: object, what: str) -> str:
    """Return `value` if it is a valid channel or agent name (1 to 256 characters, no controls)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInput(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if not value.isprintable() and any(_is_control(c) for c in value):
        raise InvalidInput(f"{what} must not contain control characters")
    _check_utf8(value, what)
    return value


RESERVED_PREFIX = "elipc/"
SECURITY_CHANNEL = "elipc/security"


def check_channel_for_sending(value: object) -> str:
    """A channel a client may send to: a valid name outside the reserved `elipc/` space.

    Reserving the prefix also keeps el-ipc's signed payload (which starts with the channel)
    from ever equalling an elipc/2 payload (which starts with `elipc/2 `).
    """
    channel = check_name(value, "channel")
    if channel.startswith(RESERVED_PREFIX):
        raise InvalidInput(f"channel names starting with {RESERVED_PREFIX!r} are reserved")
    return channel


def check_content(value: object, max_bytes: int) -> str:
    """Return `value` if it is non-empty text whose UTF-8 form is at most `max_bytes`."""
    if not isinstance(value, str):
        raise InvalidInput("content must be a string")
    if not value:
        raise InvalidInput("content must not be empty")
    size = len(_check_utf8(value, "content"))
    if size > max_bytes:
        raise InvalidInput(f"content is {size} bytes; the limit is {max_bytes}")
    return value


def check_identity(value: object) -> str:
    """Return `value` if it is a usable secondary identity (may be empty; no control characters)."""
    if value == "" or value is None:
        return ""
    return check_name(value, "identity")


NONCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def check_nonce(value: object) -> str:
    """Return `value` if it is 8 to 64 characters of A-Za-z0-9_-."""
    if not isinstance(value, str) or not 8 <= len(value) <= 64 or not NONCE_CHARS.issuperset(value):
        raise InvalidInput("nonce must be 8 to 64 characters of A-Za-z0-9_-")
    return value


def check_timestamp(value: object) -> int:
    """Return `value` as integer Unix seconds (an int, or a string of digits as in headers)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
        return value
    raise InvalidInput("timestamp must be integer Unix seconds")


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029"


def _check_utf8(value: str, what: str) -> bytes:
    # Lone surrogates come from undecodable bytes in argv or JSON escapes; they are not text.
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid UTF-8") from None
