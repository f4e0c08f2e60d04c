"""`elipc mcp --agent NAME [--key FILE]`: an MCP server on stdio for one agent.

The process is the agent: no tool takes a sender or an agent name (an MCP tool that did would
let one agent post as another), and in secure mode every send is signed with --key. It works
on the local database or through a server, like every other command. The `mcp` SDK is an
optional extra, imported here only, when the command runs.

No `from __future__ import annotations` here: the SDK reads the tools' annotations to build
their schemas, and the SDK's types are imported inside `build_server`, where a postponed
annotation could not find them.
"""

import argparse
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

from elipc.cli.context import CommandError, Context
from elipc.cli.system import Clock
from elipc.config import DEFAULT_WAIT_TIMEOUT, MAX_WAIT_TIMEOUT, prepare_db_location
from elipc.model import (
    UNSIGNED,
    ElipcError,
    Message,
    Page,
    Rejected,
    check_channel_for_sending,
    check_content,
    check_name,
)

if TYPE_CHECKING:
    import sqlite3

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mcp.server.mcpserver import MCPServer

    from elipc.cli.remote import Remote

MISSING_EXTRA = "elipc mcp needs the mcp extra: pip install 'elipc[mcp]'"
# An answer stays well under Claude Code's MCP output limit (about 25,000 tokens).
MAX_ANSWER_MESSAGES = 50
MAX_ANSWER_CHARS = 60_000
# A waiting call looks for news this often (locally: PRAGMA data_version; remotely: one
# long-poll each), and says it is still waiting (progress) as often.
COMMIT_POLL_S = 0.01
PROGRESS_EVERY_S = 10.0
T = TypeVar("T")
Answer = dict[str, Any]


class Mailbox(Protocol):
    """One agent's view of the queue, in blocking calls (the server runs them in threads)."""

    def send(self, channel: str, content: str) -> Answer: ...
    def read(self, channel: str, limit: int) -> Answer: ...
    def wait_once(self, channel: str, limit: int, seconds: float,
                  cancelled: threading.Event) -> Answer: ...
    def ack(self, channel: str, up_to: int) -> Answer: ...
    def history(self, channel: str, after_id: int, limit: int) -> Answer: ...
    def channels(self) -> Answer: ...
    def agents(self) -> Answer: ...


# -- answers --------------------------------------------------------------------------------


def fit(messages: list[Message]) -> list[Message]:
    """The longest run of `messages` whose contents fit in one answer (at least one)."""
    kept: list[Message] = []
    size = 0
    for message in messages[:MAX_ANSWER_MESSAGES]:
        size += len(message.content)
        if kept and size > MAX_ANSWER_CHARS:
            break
        kept.append(message)
    return kept


def page_answer(channel: str, messages: list[Message], more: bool) -> Answer:
    """A page of messages as a tool's answer; content too long for one answer is cut and
    says so (its length, and the command that prints it whole)."""
    return {"channel": channel, "messages": [_shape(channel, m) for m in messages],
            "more": more}


def _shape(channel: str, message: Message) -> dict[str, object]:
    shape = message.as_json()
    if len(message.content) > MAX_ANSWER_CHARS:
        shape.update(content=message.content[:MAX_ANSWER_CHARS], truncated=True,
                     content_length=len(message.content),
                     full=f"elipc history {channel} --after-id {message.id - 1} --limit 1")
    return shape


def _explain(reason: str, key_file: str | None, agent: str) -> str:
    if not key_file:
        return f"{reason}: start elipc mcp with --key <the agent's private key file>"
    if reason == "invalid signature":
        return f"{reason}: {key_file} is not the registered key of '{agent}'"
    return reason


# -- on the local database ------------------------------------------------------------------


class LocalMailbox:
    """The agent's mailbox on the local database: one connection, one call at a time."""

    def __init__(self, conn: "sqlite3.Connection", ctx: Context, agent: str,
                 key: "Ed25519PrivateKey | None") -> None:
        from elipc.operations import Policy

        self.conn, self.clock, self.agent, self.key = conn, ctx.clock, agent, key
        self.key_file, self.limit = ctx.args.key, ctx.settings.max_content_bytes
        self.policy = Policy.from_settings(ctx.settings)
        self.lock = threading.Lock()

    def send(self, channel: str, content: str) -> Answer:
        """Store a message from the agent (signed with its key when it has one)."""
        from elipc import identity
        from elipc.operations import accept_message, forget_expired

        channel, content = check_channel_for_sending(channel), check_content(content, self.limit)
        now = self.clock.time()
        signed = (identity.sign_send(self.key, channel, self.agent, content, int(now))
                  if self.key else UNSIGNED)
        with self.lock:
            try:
                accepted = accept_message(self.conn, channel, self.agent, content, signed, now,
                                          self.policy)
            except Rejected as e:
                raise CommandError(_explain(str(e), self.key_file, self.agent)) from None
            if signed.nonce:
                forget_expired(self.conn, now, self.policy)
        return {"id": accepted.id, "channel": channel}

    def read(self, channel: str, limit: int) -> Answer:
        """Unread messages; the watermark moves past them in the same transaction."""
        from elipc import store

        channel = check_name(channel, "channel")
        with self.lock, store.transaction(self.conn):
            page = store.unread_page(self.conn, channel, self.agent, limit, advance=False)
            kept = fit(page.messages)
            if kept:
                store.acknowledge(self.conn, channel, self.agent, kept[-1].id)
        return page_answer(channel, kept, page.more or len(kept) < len(page.messages))

    def wait_once(self, channel: str, limit: int, seconds: float,
                  cancelled: threading.Event) -> Answer:
        """Read; if nothing is unread, sleep until another process commits (then read again)
        or `seconds` pass. Once `cancelled` is set, nothing more is read."""
        from elipc import store

        deadline = self.clock.monotonic() + seconds
        while not cancelled.is_set():
            with self.lock:
                version = store.data_version(self.conn)
            answer = self.read(channel, limit)
            if answer["messages"]:
                return answer
            while self._unchanged(version) and self.clock.monotonic() < deadline:
                if cancelled.is_set():
                    break
                self.clock.sleep(COMMIT_POLL_S)
            if self.clock.monotonic() >= deadline:
                break
        return page_answer(check_name(channel, "channel"), [], False)

    def _unchanged(self, version: int) -> bool:
        from elipc import store

        with self.lock:
            return store.data_version(self.conn) == version

    def ack(self, channel: str, up_to: int) -> Answer:
        """Move the watermark to `up_to` (never backwards)."""
        from elipc import store

        channel = check_name(channel, "channel")
        with self.lock:
            return {"channel": channel,
                    "watermark": store.acknowledge(self.conn, channel, self.agent, up_to)}

    def history(self, channel: str, after_id: int, limit: int) -> Answer:
        """A channel's messages after `after_id`, moving nothing."""
        from elipc import store

        channel = check_name(channel, "channel")
        with self.lock:
            page = store.history_page(self.conn, channel, after_id, limit)
        return _history_answer(channel, page)

    def channels(self) -> Answer:
        """Every channel with its message count and last message time."""
        from elipc import store

        with self.lock:
            return {"channels": store.list_channels(self.conn)}

    def agents(self) -> Answer:
        """The directory: operators and agents with their public keys."""
        from elipc import store

        with self.lock:
            return {"agents": [a.as_json() for a in store.list_agents(self.conn)]}


def _history_answer(channel: str, page: Page) -> Answer:
    kept = fit(page.messages)
    return page_answer(channel, kept, page.more or len(kept) < len(page.messages))


def serve_local(ctx: Context) -> None:
    """`elipc mcp` on the local database."""
    from elipc import store

    agent, key = _agent_and_key(ctx.args)
    notice = prepare_db_location(ctx.settings)
    if notice:
        ctx.console.note(notice)
    try:
        conn = store.open_database(ctx.settings.db_path, check_same_thread=False)
    except ElipcError as e:
        raise CommandError(f"{ctx.settings.db_path}: {e}") from None
    try:
        _run(LocalMailbox(conn, ctx, agent, key), ctx.clock)
    finally:
        conn.close()


def _agent_and_key(args: argparse.Namespace) -> "tuple[str, Ed25519PrivateKey | None]":
    agent = check_name(args.agent, "agent")
    if not args.key:
        return agent, None
    from elipc import identity

    return agent, identity.load_private_key(args.key)


# -- over HTTP ------------------------------------------------------------------------------


class RemoteMailbox:
    """The agent's mailbox through a server: each call on a connection of its own."""

    def __init__(self, remote: "Remote", agent: str) -> None:
        self.remote, self.agent = remote, agent

    @contextlib.contextmanager
    def _connection(self) -> "Iterator[Remote]":
        from elipc.cli.transport import HttpTransport

        remote = self.remote.fork()
        try:
            yield remote
        finally:
            if remote.transport is not self.remote.transport:
                assert isinstance(remote.transport, HttpTransport)  # fork makes only these
                remote.transport.close()

    def send(self, channel: str, content: str) -> Answer:
        """Send as the agent (signed by the Api when it has the key)."""
        channel = check_channel_for_sending(channel)
        with self._connection() as remote:
            accepted = remote(remote.api.send(channel, content, self.agent))
        return {"id": accepted.id, "channel": channel}

    def read(self, channel: str, limit: int) -> Answer:
        """Unread messages, acknowledged once the answer is built."""
        return self.wait_once(channel, limit, 0.0, threading.Event())

    def wait_once(self, channel: str, limit: int, seconds: float,
                  cancelled: threading.Event) -> Answer:
        """One read, long-polling up to `seconds` for a first message; acknowledged only if
        the call was not cancelled meanwhile."""
        channel = check_name(channel, "channel")
        with self._connection() as remote:
            page = remote(remote.api.read(channel, self.agent, wait=seconds > 0,
                                          timeout=seconds if seconds > 0 else None,
                                          limit=limit, ack="manual"))
            kept = [] if cancelled.is_set() else fit(page.messages)
            answer = page_answer(channel, kept, page.more or len(kept) < len(page.messages))
            if kept:
                remote(remote.api.ack(channel, kept[-1].id, self.agent))
        return answer

    def ack(self, channel: str, up_to: int) -> Answer:
        """Move the watermark to `up_to`."""
        channel = check_name(channel, "channel")
        with self._connection() as remote:
            return {"channel": channel,
                    "watermark": remote(remote.api.ack(channel, up_to, self.agent))}

    def history(self, channel: str, after_id: int, limit: int) -> Answer:
        """A channel's messages after `after_id`, moving nothing."""
        channel = check_name(channel, "channel")
        with self._connection() as remote:
            return _history_answer(channel, remote(remote.api.history(channel, after_id, limit)))

    def channels(self) -> Answer:
        """Every channel with its message count and last message time."""
        with self._connection() as remote:
            return {"channels": remote(remote.api.channels())}

    def agents(self) -> Answer:
        """The directory, with public keys and did:keys."""
        with self._connection() as remote:
            return {"agents": remote(remote.api.agents())}


def serve_remote(remote: "Remote", args: argparse.Namespace) -> None:
    """`elipc mcp` through a server (the Api already carries --key)."""
    _run(RemoteMailbox(remote, check_name(args.agent, "agent")), remote.clock)


# -- the MCP server -------------------------------------------------------------------------


def _run(mailbox: Mailbox, clock: Clock) -> None:
    build_server(mailbox, clock).run("stdio")


def build_server(mailbox: Mailbox, clock: Clock) -> "MCPServer[Any]":
    """The MCP server whose tools act on `mailbox`; its blocking calls run in threads."""
    try:
        import anyio.to_thread
        from mcp.server.mcpserver import Context as ToolContext
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from pydantic import Field
    except ImportError:
        raise CommandError(MISSING_EXTRA) from None
    from elipc import __version__

    async def call(function: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)
        except ElipcError as e:
            raise ToolError(str(e)) from None

    Channel = Annotated[str, Field(description="the channel's name")]
    Limit = Annotated[int, Field(ge=1, le=MAX_ANSWER_MESSAGES,
                                 description="at most this many messages")]
    server: MCPServer[Any] = MCPServer("elipc", version=__version__, instructions=INSTRUCTIONS)

    @server.tool(description=DESCRIPTIONS["send"])
    async def send(channel: Channel, content: Annotated[str, Field(
            description="the message text")]) -> Answer:
        return await call(mailbox.send, channel, content)

    @server.tool(description=DESCRIPTIONS["read"])
    async def read(channel: Channel, limit: Limit = MAX_ANSWER_MESSAGES) -> Answer:
        return await call(mailbox.read, channel, limit)

    @server.tool(description=DESCRIPTIONS["wait"])
    async def wait(channel: Channel, ctx: ToolContext[Any, Any],
                   timeout: Annotated[float, Field(ge=0, le=MAX_WAIT_TIMEOUT, description=(
                       "seconds to wait for a first message"))] = DEFAULT_WAIT_TIMEOUT,
                   limit: Limit = MAX_ANSWER_MESSAGES) -> Answer:
        cancelled = threading.Event()
        deadline = clock.monotonic() + timeout
        try:
            while True:
                left = max(0.0, deadline - clock.monotonic())
                await ctx.report_progress(timeout - left, timeout, f"waiting on {channel}")
                answer = await call(mailbox.wait_once, channel, limit,
                                    min(left, PROGRESS_EVERY_S), cancelled)
                if answer["messages"] or clock.monotonic() >= deadline:
                    return answer
        finally:
            cancelled.set()  # a cancelled wait's thread reads nothing more

    @server.tool(description=DESCRIPTIONS["ack"])
    async def ack(channel: Channel, up_to: Annotated[int, Field(ge=0, description=(
            "the id of the last message handled"))]) -> Answer:
        return await call(mailbox.ack, channel, up_to)

    @server.tool(description=DESCRIPTIONS["history"])
    async def history(channel: Channel, after_id: Annotated[int, Field(ge=0, description=(
            "only messages with a higher id"))] = 0,
            limit: Limit = MAX_ANSWER_MESSAGES) -> Answer:
        return await call(mailbox.history, channel, after_id, limit)

    @server.tool(description=DESCRIPTIONS["channels"])
    async def channels() -> Answer:
        return await call(mailbox.channels)

    @server.tool(description=DESCRIPTIONS["agents"])
    async def agents() -> Answer:
        return await call(mailbox.agents)

    return server


INSTRUCTIONS = (
    "elipc is a message queue between agents. You are one agent: what you send is from you, "
    "and you read through your own watermark per channel (what you have read stays read). "
    "Use wait to block until a message comes; history to look back without moving anything.")

DESCRIPTIONS = {
    "send": "Send a message on a channel, from this agent (signed with its key in secure "
            "mode). Answers the message's id.",
    "read": "Your unread messages on a channel, oldest first; does not block. Moves your "
            "watermark past every message it returns. `more` says more are unread: read "
            f"again. At most {MAX_ANSWER_MESSAGES} messages or about {MAX_ANSWER_CHARS:,} "
            "characters per answer.",
    "wait": "Like read, but when nothing is unread it blocks until a message arrives or "
            f"`timeout` seconds pass (default {DEFAULT_WAIT_TIMEOUT:g}, at most "
            f"{MAX_WAIT_TIMEOUT:g}); a timeout answers no messages, not an error. Returns at "
            "once when something is unread. Moves your watermark past what it returns; a "
            "cancelled wait moves nothing.",
    "ack": "Move your watermark on a channel to message id `up_to` (never backwards), "
           "marking everything up to it read without reading it. Does not block.",
    "history": "A channel's messages after `after_id`, oldest first, whoever they were for. "
               "Moves no watermark; does not block. `more` says more follow: ask again with "
               "after_id set to the last id.",
    "channels": "Every channel with its message count and last message time. Moves nothing.",
    "agents": "The directory: operators and registered agents, with their public keys. "
              "Moves nothing.",
}
