"""The domain: its values (messages, agents, signatures, pages), the rules for valid names
and content, and every error elipc explains to its user.

Values are typed NamedTuples: immutable, without a per-instance dict, and cheap to define
(dataclasses would add about 20 ms to every CLI start: `import dataclasses` loads inspect,
and each frozen class generates code). Errors say what went wrong in the domain's words; which HTTP status or exit code each
becomes is decided by the web layer and the CLI, not here. No Twisted import: the CLI's local
path loads this module on every call.
"""


from typing import Any, NamedTuple

MAX_NAME_CHARS = 256
RESERVED_PREFIX = "elipc/"
SECURITY_CHANNEL = "elipc/security"


# -- errors ------------------------------------------------------------------------------


class ElipcError(Exception):
    """A failure elipc explains to its user in one line (CLI: stderr and exit 1; HTTP: 4xx)."""


class InvalidInput(ElipcError, ValueError):
    """A name, content or other value breaks elipc's rules; the message says which and why."""


class TooLarge(InvalidInput):
    """Content or a request body is over its size limit."""


class ConfigError(InvalidInput):
    """A setting from the environment, the command line or a query has an unusable value."""


class IdentityError(InvalidInput):
    """A key or key file is missing, unreadable, malformed or not Ed25519."""


class Rejected(ElipcError):
    """A well-formed request that is not allowed: `kind` names it in security events and
    `context` says about whom (sender, agent, channel, operator: names only, no secrets)."""

    def __init__(self, message: str, kind: str, **context: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.context = {name: value for name, value in context.items() if value}


class Unauthenticated(Rejected):
    """Proof of identity is missing altogether."""


class Replayed(Rejected):
    """A nonce or registration already used inside the replay window."""


class StorageError(ElipcError):
    """The database could not do what was asked; the message says why, without SQL."""


class DatabaseGone(StorageError):
    """The file a long-running process opened is no longer the one at its path (deleted or
    replaced): writing on would acknowledge what no reader can find."""


class SchemaTooNew(StorageError):
    """The file was written by a newer elipc whose schema this one does not know."""


class Conflict(ElipcError):
    """A write contradicts what is stored (a name taken, an ack past the last message)."""


# -- values ------------------------------------------------------------------------------


class Message(NamedTuple):
    """One stored message, rendered in el-ipc's JSON shape (plus verification fields)."""

    id: int
    channel: str
    sender: str
    content: str
    created_at: float
    signature: str = ""
    signed_timestamp: int | None = None
    nonce: str | None = None

    @classmethod
    def from_json(cls, channel: str, shape: dict[str, Any]) -> "Message":
        """The message a server answered as `as_json`, on `channel`."""
        return cls(shape["id"], channel, shape["sender"], shape["content"], shape["timestamp"],
                   shape.get("signature") or "", shape.get("signed_timestamp"),
                   shape.get("nonce"))

    def as_cut_json(self, max_chars: int) -> dict[str, object]:
        """`as_json`, with content over `max_chars` cut: then `truncated`, the whole
        `content_length`, and `full`, the command that prints the message whole."""
        shape = self.as_json()
        if len(self.content) > max_chars:
            import shlex  # a channel name may hold spaces or ; for a shell: quoted

            shape.update(content=self.content[:max_chars], truncated=True,
                         content_length=len(self.content),
                         full=f"elipc history {shlex.quote(self.channel)} "
                              f"--after-id {self.id - 1} --limit 1")
        return shape

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


class Page(NamedTuple):
    """Messages oldest first, and whether more are waiting behind them."""

    messages: list[Message]
    more: bool = False

    @property
    def last_id(self) -> int | None:
        """The id of the last message (what acknowledging the page moves to), or None."""
        return self.messages[-1].id if self.messages else None


class Agent(NamedTuple):
    """A directory entry: an operator or an agent an operator registered."""

    name: str
    identity: str
    public_key: str
    role: str
    registered_by: str | None
    created_at: float
    registration_ts: int = 0
    registration_signature: str = ""

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


class Signed(NamedTuple):
    """A signature with its elipc/2 timestamp and nonce (both None for el-ipc's form; an
    empty signature for an unsigned send)."""

    signature: str
    timestamp: int | None = None
    nonce: str | None = None


UNSIGNED = Signed("")


class Accepted(NamedTuple):
    """What a send came to: its id, whether its signature was el-ipc's replayable kind, and
    whether it repeated an earlier send's idempotency key (then nothing new was stored)."""

    id: int
    replayable: bool = False
    duplicate: bool = False


# -- rules -------------------------------------------------------------------------------


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
        raise TooLarge(f"content is {size} bytes; the limit is {max_bytes}")
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
