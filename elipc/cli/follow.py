"""`elipc follow CHANNEL... --agent NAME`: every new message as one JSON line, until stopped.

What a Claude Code monitor (or any line-reading supervisor) runs. Each line is written and
flushed before the watermark moves past that one message, so a follower killed at any point
loses nothing: at most the message it was printing comes again (at least once). Locally it
wakes on another process's commit within about 10 ms; remotely it long-polls each channel
and reconnects with capped backoff.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from elipc.model import Message, check_name

if TYPE_CHECKING:
    from elipc.cli.context import Context
    from elipc.cli.output import Console
    from elipc.cli.remote import Remote

# Content longer than this (in characters) is cut in the line, which says so and how to get
# the whole message: a monitor's event should stay a readable size.
MAX_LINE_CONTENT = 16 * 1024
FOLLOW_PAGE = 100
# Remote: how long each long-poll asks to be held, and the longest pause between reconnects.
FOLLOW_POLL_S = 60.0
MAX_RECONNECT_DELAY_S = 30.0

Verify = Callable[[str, Message], bool]


def line(channel: str, message: Message, verified: bool | None = None) -> str:
    """One message as one JSON line: its channel and id, sender, content, timestamps and
    signature fields; over-long content cut, with `truncated`, its full length and the
    command that prints it whole."""
    shape: dict[str, Any] = {"channel": channel, **message.as_cut_json(MAX_LINE_CONTENT)}
    if verified is not None:
        shape["verified"] = verified
    return json.dumps(shape) + "\n"


class Printer:
    """Writes lines to the console, one at a time, counting them against --count."""

    def __init__(self, console: Console, count: int) -> None:
        self.console = console
        self.left = count or -1
        self.lock = threading.Lock()

    @property
    def done(self) -> bool:
        """Whether --count lines have been written."""
        return self.left == 0

    def write(self, text: str) -> None:
        """Write and flush one line (before its message is acknowledged)."""
        with self.lock:
            self.console.raw(text)
            self.left -= 1


def channels_of(args: argparse.Namespace) -> tuple[list[str], str]:
    """The channels to follow and the agent following them, checked."""
    channels = [check_name(channel, "channel") for channel in args.channels]
    return channels, check_name(args.agent, "agent")


# -- on the local database ----------------------------------------------------------------


def follow_local(ctx: Context) -> None:
    """Follow on the local database: print each unread message, then move past it; sleep
    until another process commits when nothing is unread."""
    from elipc import store
    from elipc.cli.commands import await_commit, open_database

    channels, agent = channels_of(ctx.args)
    conn = open_database(ctx)
    verify = _local_verifier(conn) if ctx.args.verify else None
    printer = Printer(ctx.console, ctx.args.count)
    while not printer.done:
        version = store.data_version(conn)
        if _drain_local(conn, channels, agent, printer, verify):
            continue
        await_commit(ctx.clock, conn, version, float("inf"))


def _drain_local(conn: Any, channels: list[str], agent: str, printer: Printer,
                 verify: Verify | None) -> bool:
    from elipc import store

    delivered = False
    for channel in channels:
        page = store.unread_page(conn, channel, agent, FOLLOW_PAGE, advance=False)
        for message in page.messages:
            if printer.done:
                return True
            printer.write(line(channel, message, verify(channel, message) if verify else None))
            store.acknowledge(conn, channel, agent, message.id)
            delivered = True
    return delivered


def _local_verifier(conn: Any) -> Verify:
    from elipc import identity, store

    def verified(channel: str, message: Message) -> bool:
        entry = store.get_agent(conn, message.sender)
        return bool(identity.marked_verified(channel, message,
                                             entry.public_key if entry else None)["verified"])
    return verified


# -- over HTTP ------------------------------------------------------------------------------


def follow_remote(remote: Remote, args: argparse.Namespace) -> None:
    """Follow through a server: one long-polling reader per channel, each acknowledging a
    message once its line is out; an unreachable server is retried with capped backoff, a
    refusal (a bad signature, say) ends the follow with its error."""
    channels, agent = channels_of(args)
    printer = Printer(remote.console, args.count)
    failures: list[BaseException] = []
    if len(channels) == 1:
        _follow_channel(remote, channels[0], agent, printer, args.verify)
        return
    threads = [threading.Thread(target=_guarded, daemon=True, args=(
        failures, remote.fork(), channel, agent, printer, args.verify))
        for channel in channels]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and not failures and not printer.done:
        threads[0].join(0.1)
    if failures:
        raise failures[0]


def _guarded(failures: list[BaseException], remote: Remote, channel: str, agent: str,
             printer: Printer, verify: bool) -> None:
    try:
        _follow_channel(remote, channel, agent, printer, verify)
    except BaseException as e:  # reported by the main thread, which exits with it
        failures.append(e)


def _follow_channel(remote: Remote, channel: str, agent: str, printer: Printer,
                    verify: bool) -> None:
    from elipc.cli.remote import RemoteError

    keys: dict[str, str | None] = {}
    delay = 0.0
    while not printer.done:
        try:
            page = remote(remote.api.read(channel, agent, wait=True, timeout=FOLLOW_POLL_S,
                                          limit=FOLLOW_PAGE, ack="manual"))
            for message in page.messages:
                if printer.done:
                    return
                mark = _remote_verified(remote, keys, channel, message) if verify else None
                printer.write(line(channel, message, mark))
                remote(remote.api.ack(channel, message.id, agent))
            delay = 0.0
        except RemoteError as e:
            if not e.unreachable:
                raise
            delay = min(MAX_RECONNECT_DELAY_S, max(1.0, delay * 2))
            remote.console.note(f"elipc: {e}; trying again in {delay:g} s")
            remote.clock.sleep(delay)


def _remote_verified(remote: Remote, keys: dict[str, str | None], channel: str,
                     message: Message) -> bool:
    from elipc import identity

    if message.sender not in keys:  # a sender not seen yet: the directory may know it now
        keys.update({a["name"]: a["public_key"] for a in remote(remote.api.agents())})
    return bool(identity.marked_verified(channel, message,
                                         keys.get(message.sender))["verified"])
