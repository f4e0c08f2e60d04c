"""`elipc inbox [CHANNEL...] [--agent NAME] [--hook stop]`: how many messages wait, moving
nothing.

Plain, it prints `{"agent", "unread": {channel: count}, "total"}`. As Claude Code's Stop hook
(`--hook stop`, reading the hook's JSON on stdin) it keeps a finishing turn going while
messages wait for the session's agent: it prints `{"decision": "block", "reason": ...}` and
nothing otherwise. The hook is off until an agent and channels are set (IPC_AGENT,
IPC_CHANNELS), and it never blocks a stop that this hook already continued once
(`stop_hook_active`), so a session cannot be kept going forever.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from elipc.cli.context import CommandError, Context
from elipc.model import check_name

if TYPE_CHECKING:
    from elipc.cli.output import Console
    from elipc.cli.remote import Remote

def prepare(ctx: Context) -> bool:
    """Check the channels (named, else IPC_CHANNELS: see resolve_agent) and read the hook's
    input; False when there is nothing to do: a stop this hook already continued once."""
    args = ctx.args
    args.channels = [check_name(c, "channel") for c in args.channels]
    if args.hook is None:
        if not args.channels:
            raise CommandError("inbox needs channels: name them or set IPC_CHANNELS")
        return True
    event = _hook_input(ctx.console.stdin.read())
    return bool(args.agent and args.channels and not event.get("stop_hook_active"))


def _hook_input(data: bytes) -> dict[str, object]:
    if not data.strip():
        return {}
    try:
        event = json.loads(data)
    except ValueError:
        raise CommandError("the hook's input on stdin is not JSON") from None
    if not isinstance(event, dict):
        raise CommandError("the hook's input on stdin is not a JSON object")
    return event


def report(console: Console, args: argparse.Namespace, pending: Callable[[str], int]) -> None:
    """Count each channel's unread with `pending(channel)` and print the report, or, as a
    hook, the decision."""
    unread = {channel: pending(channel) for channel in args.channels}
    total = sum(unread.values())
    if args.hook is None:
        console.json({"agent": args.agent, "unread": unread, "total": total})
    elif total:
        console.json({"decision": "block", "reason": stop_reason(args.agent, unread)})


def stop_reason(agent: str, unread: dict[str, int]) -> str:
    """What the agent is told when its stop is held back: what waits, and how to read it."""
    waiting = ", ".join(f"{count} on {channel}" for channel, count in unread.items() if count)
    total = sum(unread.values())
    first = next(channel for channel, count in unread.items() if count)
    return (f"{total} unread elipc message{'s' if total != 1 else ''} for {agent} ({waiting}). "
            f"Read them before finishing (the elipc MCP tool `read`, or `elipc read {first} "
            f"{agent}`) and act on what they ask.")


def inbox_local(ctx: Context) -> None:
    """The counts from the local database."""
    from elipc import store
    from elipc.cli.commands import open_database

    conn = open_database(ctx)
    report(ctx.console, ctx.args, lambda channel: store.pending_count(conn, channel,
                                                                      ctx.args.agent))


def inbox_remote(remote: Remote, args: argparse.Namespace) -> None:
    """The counts from the server's /health (signed like a read when the agent has a key)."""
    report(remote.console, args,
           lambda channel: int(remote(remote.api.health(channel, args.agent))["pending"]))
