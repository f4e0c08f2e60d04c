"""`elipc mcp --agent NAME [--key FILE]`: an MCP server on stdio for one agent.

The process is the agent: no tool takes a sender or an agent name (an MCP tool that did would
let one agent post as another), and in secure mode every send is signed with --key. It works
on the local database or through a server (mailbox.py), like every other command. The `mcp`
SDK is an optional extra, imported here only, when the command runs.

No `from __future__ import annotations` here: the SDK reads the tools' annotations to build
their schemas, and the SDK's types are imported inside `build_server`, where a postponed
annotation could not find them.
"""

import argparse
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from elipc.cli.context import CommandError, Context
from elipc.cli.mailbox import (
    MAX_ANSWER_CHARS,
    MAX_ANSWER_MESSAGES,
    MAX_LIST_ENTRIES,
    Answer,
    LocalMailbox,
    Mailbox,
    RemoteMailbox,
)
from elipc.cli.system import Clock
from elipc.config import DEFAULT_WAIT_TIMEOUT, MAX_WAIT_TIMEOUT, prepare_db_location
from elipc.locations import redact
from elipc.model import ElipcError, check_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mcp.server.mcpserver import MCPServer

    from elipc.cli.remote import Remote

MISSING_EXTRA = "elipc mcp needs the mcp extra: pip install 'elipc[mcp]'"
# A waiting call says it is still waiting (progress) this often.
PROGRESS_EVERY_S = 10.0
T = TypeVar("T")


def serve_local(ctx: Context) -> None:
    """`elipc mcp` on the local database."""
    from elipc import store

    agent, key = _agent_and_key(ctx.args)
    notice = prepare_db_location(ctx.settings)
    if notice:
        ctx.console.note(notice)
    try:
        conn = store.open_database(ctx.settings.database, check_same_thread=False)
    except ElipcError as e:
        raise CommandError(f"{redact(ctx.settings.database)}: {e}") from None
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

    After = Annotated[str, Field(description=(
        "only names after this one (the last name of the previous answer when it said more)"))]

    @server.tool(description=DESCRIPTIONS["channels"])
    async def channels(after: After = "") -> Answer:
        return await call(mailbox.channels, after)

    @server.tool(description=DESCRIPTIONS["agents"])
    async def agents(after: After = "") -> Answer:
        return await call(mailbox.agents, after)

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
    "channels": "Channels with their message count and last message time, in name order. "
                "Moves nothing; does not block. `more` says more follow: ask again with "
                f"after set to the last channel's name (at most {MAX_LIST_ENTRIES} a page).",
    "agents": "The directory: operators and registered agents with their public keys, in "
              "name order. Moves nothing; does not block. `more` says more follow: ask again "
              "with after set to the last name.",
}
