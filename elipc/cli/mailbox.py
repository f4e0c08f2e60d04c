"""An agent's mailbox for `elipc mcp`: blocking calls on the local database or through a
server, each answering a JSON-able dict under the MCP output limit. No MCP here: the server in
mcp.py runs these in threads.
"""

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from elipc.cli.commands import COMMIT_POLL_S
from elipc.cli.context import CommandError, Context, explain_refused_send
from elipc.model import (
    UNSIGNED,
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

    from elipc.cli.remote import Remote

# An answer stays well under Claude Code's MCP output limit (about 25,000 tokens).
MAX_ANSWER_MESSAGES = 50
MAX_ANSWER_CHARS = 60_000
MAX_LIST_ENTRIES = 200
Answer = dict[str, Any]


class Mailbox(Protocol):
    """One agent's view of the queue, in blocking calls (the server runs them in threads)."""

    def send(self, channel: str, content: str) -> Answer: ...
    def read(self, channel: str, limit: int) -> Answer: ...
    def wait_once(self, channel: str, limit: int, seconds: float,
                  cancelled: threading.Event) -> Answer: ...
    def ack(self, channel: str, up_to: int) -> Answer: ...
    def history(self, channel: str, after_id: int, limit: int) -> Answer: ...
    def channels(self, after: str) -> Answer: ...
    def agents(self, after: str) -> Answer: ...


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
    return {"channel": channel, "messages": [m.as_cut_json(MAX_ANSWER_CHARS) for m in messages],
            "more": more}


def listing(kind: str, key: str, entries: list[dict[str, Any]], after: str) -> Answer:
    """A page of a directory-like list (channels, agents) in name order, after the name
    `after`: at most MAX_LIST_ENTRIES or about MAX_ANSWER_CHARS of JSON; `more` says more
    follow (ask again with after set to the last name)."""
    entries = sorted((e for e in entries if str(e[key]) > after), key=lambda e: str(e[key]))
    kept: list[dict[str, Any]] = []
    size = 0
    for entry in entries[:MAX_LIST_ENTRIES]:
        size += len(json.dumps(entry))
        if kept and size > MAX_ANSWER_CHARS:
            break
        kept.append(entry)
    return {kind: kept, "more": len(kept) < len(entries)}


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
                raise CommandError(explain_refused_send(
                    str(e), self.key_file, self.agent,
                    "start elipc mcp with --key <the agent's private key file>")) from None
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
                self.clock.sleep(COMMIT_POLL_S)  # as read --wait
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

    def channels(self, after: str) -> Answer:
        """Channels with their message count and last message time, by name after `after`."""
        from elipc import store

        with self.lock:
            return listing("channels", "channel", store.list_channels(self.conn), after)

    def agents(self, after: str) -> Answer:
        """The directory (operators and agents with their public keys), by name."""
        from elipc import store

        with self.lock:
            entries = [a.as_json() for a in store.list_agents(self.conn)]
        return listing("agents", "name", entries, after)


def _history_answer(channel: str, page: Page) -> Answer:
    kept = fit(page.messages)
    return page_answer(channel, kept, page.more or len(kept) < len(page.messages))


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

    def channels(self, after: str) -> Answer:
        """Channels with their message count and last message time, by name after `after`."""
        with self._connection() as remote:
            return listing("channels", "channel", remote(remote.api.channels()), after)

    def agents(self, after: str) -> Answer:
        """The directory, with public keys and did:keys, by name after `after`."""
        with self._connection() as remote:
            return listing("agents", "name", remote(remote.api.agents()), after)
