"""The CLI's remote mode (`--server URL` or IPC_SERVER_URL): the same commands through
protocol.py over a socket, printing exactly what the local mode prints. No Twisted: a
remote command starts as fast as a local one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from elipc.cli.follow import follow_remote
from elipc.cli.inbox import inbox_remote
from elipc.cli.output import Console
from elipc.cli.system import Clock
from elipc.cli.transport import HttpTransport, Transport, perform
from elipc.config import MAX_WAIT_TIMEOUT, Settings
from elipc.model import (
    ElipcError,
    Message,
    Page,
    check_channel_for_sending,
    check_identity,
    check_name,
)
from elipc.protocol import Api, Call, ClientError, RetryPolicy, Unreachable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REMOTE_COMMANDS = ("send", "read", "channels", "agents", "agent-card", "history", "register",
                   "follow", "mcp", "inbox", "card")
T = TypeVar("T")


class RemoteError(ElipcError):
    """A remote command failed; the message is the one line to print (the server's refusal,
    or why the server could not be reached: then `unreachable`)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Remote:
    """One remote run: the Api for this command's key, a transport, a clock, a console."""

    def __init__(self, api: Api, transport: Transport, clock: Clock, console: Console,
                 server_url: str) -> None:
        self.api, self.transport, self.clock = api, transport, clock
        self.console, self.server_url = console, server_url
        self.policy = RetryPolicy()

    def __call__(self, call: Call[T]) -> T:
        """Run `call`; a refusal or an unreachable server is a RemoteError saying so."""
        try:
            return perform(call, self.transport, self.policy, self.clock)
        except ClientError as e:
            raise RemoteError(e.message) from None
        except Unreachable as e:
            raise RemoteError(f"cannot reach {self.server_url}: {e}", unreachable=True) from None

    def fork(self) -> Remote:
        """The same run on a connection of its own (for another thread)."""
        transport = (HttpTransport(self.server_url) if isinstance(self.transport, HttpTransport)
                     else self.transport)
        return Remote(self.api, transport, self.clock, self.console, self.server_url)


def run_remote(args: argparse.Namespace, settings: Settings, content: str | None,
               console: Console, clock: Clock, transport: Transport | None = None) -> None:
    """Run one command against settings.server_url (send takes its checked `content`);
    a failure raises an ElipcError whose message is the line to print."""
    if args.command not in REMOTE_COMMANDS:
        raise RemoteError(f"{args.command} works on the local database only; "
                          "unset --server / IPC_SERVER_URL")
    own = transport is None
    carrier = HttpTransport(settings.server_url) if transport is None else transport
    api = Api(key=_key(args), api_key=settings.api_key or None, time=clock.time)
    try:
        COMMANDS[args.command](Remote(api, carrier, clock, console, settings.server_url),
                               args, content)
    finally:
        if own and isinstance(carrier, HttpTransport):
            carrier.close()


def _key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    """The agent's key that signs sends and reads (register's --key is an operator's)."""
    if not getattr(args, "key", None) or args.command in ("register", "card"):
        return None
    from elipc import identity

    return identity.load_private_key(args.key)


def _send(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    channel = check_channel_for_sending(args.channel)
    sender = check_name(args.sender, "sender")
    if content is None:
        raise RemoteError("send needs the message content")
    accepted = remote(remote.api.send(channel, content, sender))
    remote.console.sent(accepted.id, channel, remote.api.key is not None)


def _read(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    """Print unread messages, and only then acknowledge them: a reader whose output fails
    (or that is killed before) gets them again."""
    channel, agent = check_name(args.channel, "channel"), check_name(args.agent, "agent")
    page = _long_poll(remote, args, channel, agent)
    if args.verify and page.messages:
        remote.console.messages(_verified(remote, channel, page.messages))
    else:
        remote.console.messages([m.as_json() for m in page.messages])
    if page.last_id is not None:
        remote(remote.api.ack(channel, page.last_id, agent))
    if page.more:
        remote.console.more_waiting(channel)


def _long_poll(remote: Remote, args: argparse.Namespace, channel: str, agent: str) -> Page:
    """One read; with --wait, long-polls (the server holds each at most MAX_WAIT_TIMEOUT)
    until a message comes or --timeout passes."""
    deadline = remote.clock.monotonic() + (args.timeout if args.wait else 0.0)
    while True:
        wait = min(max(0.0, deadline - remote.clock.monotonic()), MAX_WAIT_TIMEOUT)
        page = remote(remote.api.read(channel, agent, wait=args.wait,
                                      timeout=wait if args.wait else None,
                                      limit=args.limit, ack="manual"))
        if page.messages or remote.clock.monotonic() >= deadline:
            return page


def _verified(remote: Remote, channel: str, messages: list[Message]) -> list[dict[str, Any]]:
    from elipc import identity

    keys = {a["name"]: a["public_key"] for a in remote(remote.api.agents())}
    return [identity.marked_verified(channel, m, keys.get(m.sender)) for m in messages]


def _channels(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    remote.console.json(remote(remote.api.channels()), indent=2)


def _agents(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    agents = remote(remote.api.agents())
    remote.console.agents(agents)


def _agent_card(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    remote.console.json(remote(remote.api.agent_card()), indent=2)


def _card(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    # The card as the server serves it, signed here: the key never leaves this process.
    from elipc import identity
    from elipc.agentcard import key_id, sign_card

    key = identity.load_private_key(args.key)
    public = identity.public_pem(key.public_key())
    card = {k: v for k, v in remote(remote.api.agent_card()).items() if k != "signatures"}
    answer = remote(remote.api.sign_card(sign_card(card, key, public)))
    remote.console.json({**answer, "kid": key_id(public)})


def _history(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    channel = check_name(args.channel, "channel")
    page = remote(remote.api.history(channel, args.after_id, args.limit))
    remote.console.messages([m.as_json() for m in page.messages])
    if page.more:
        remote.console.more_waiting(channel)


def _register(remote: Remote, args: argparse.Namespace, content: str | None) -> None:
    from elipc import identity

    name = check_name(args.name, "agent name")
    operator = check_name(args.operator, "operator")
    agent_identity = check_identity(args.identity)
    public = identity.load_public_key_text(args.pubkey)
    operator_key = identity.load_private_key(args.key)
    remote.console.json(remote(remote.api.register(name, public, operator, operator_key,
                                                   agent_identity)))


def _mcp(remote: Remote, args: argparse.Namespace) -> None:
    from elipc.cli.mcp import serve_remote  # the mcp SDK loads only here

    serve_remote(remote, args)


Command = Callable[[Remote, argparse.Namespace, "str | None"], None]
COMMANDS: dict[str, Command] = {
    "send": _send, "read": _read, "channels": _channels, "agents": _agents,
    "agent-card": _agent_card, "card": _card, "history": _history, "register": _register,
    "follow": lambda remote, args, content: follow_remote(remote, args),
    "mcp": lambda remote, args, content: _mcp(remote, args),
    "inbox": lambda remote, args, content: inbox_remote(remote, args),
}
