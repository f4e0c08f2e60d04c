"""The CLI's remote mode (`--server URL` or IPC_SERVER_URL): the same commands through the
treq client, printing exactly what the local mode prints. Imported only in remote mode, so
the local path never loads Twisted.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from elipc import identity
from elipc.client import Client, ClientError
from elipc.config import MAX_WAIT_TIMEOUT
from elipc.model import ElipcError, Message, check_channel_for_sending, check_name
from elipc.output import note_more_waiting, print_agents, print_json, print_messages, print_sent

REMOTE_COMMANDS = ("send", "read", "channels", "agents", "agent-card", "history", "register")


def run(args: argparse.Namespace, server_url: str, content: str | None = None) -> None:
    """Run one command against `server_url`; exits the process with its status."""
    react(lambda reactor: Deferred.fromCoroutine(_main(reactor, args, server_url, content)))


async def _main(reactor: Any, args: argparse.Namespace, server_url: str,
                content: str | None) -> None:
    key = identity.load_private_key(args.key) if getattr(args, "key", None) else None
    client = Client(server_url, key=key, clock=reactor,
                    api_key=os.environ.get("IPC_API_KEY") or None)
    try:
        await COMMANDS[args.command](client, args, content)
    except ClientError as e:
        _fail(e.message)
    except ConnectionError as e:
        _fail(f"cannot reach {server_url}: {e}")
    except ElipcError as e:
        _fail(str(e))


def _fail(message: str) -> None:
    print(f"elipc: {message}", file=sys.stderr)
    raise SystemExit(1)


async def _send(client: Client, args: argparse.Namespace, content: str | None) -> None:
    channel = check_channel_for_sending(args.channel)
    sender = check_name(args.sender, "sender")
    assert content is not None  # read and checked by cli.py, as in local mode
    answer = await client.send(channel, content, sender)
    print_sent(answer["id"], channel, client.key is not None)


async def _read(client: Client, args: argparse.Namespace, content: str | None) -> None:
    channel, agent = check_name(args.channel, "channel"), check_name(args.agent, "agent")
    remaining = args.timeout if args.wait else 0.0
    while True:  # the server holds a long-poll for at most 300 s: ask again until done
        wait = min(remaining, MAX_WAIT_TIMEOUT)
        page = await client.read(channel, agent, wait=args.wait, timeout=wait,
                                 limit=args.limit, ack="manual")
        remaining -= wait
        if page.messages or remaining <= 0:
            break
    shapes = page.messages
    if args.verify and shapes:
        shapes = await _verified(client, channel, shapes)
    print_messages(shapes)
    if page.messages:
        # Only after printing: a reader killed before this point gets them again.
        await client.ack(channel, page.messages[-1]["id"], agent)
    if page.more:
        note_more_waiting(channel)


async def _verified(client: Client, channel: str,
                    shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {a["name"]: a["public_key"] for a in await client.agents()}
    return [identity.marked_verified(channel, Message.from_json(channel, shape),
                                     keys.get(shape["sender"])) for shape in shapes]


async def _channels(client: Client, args: argparse.Namespace, content: str | None) -> None:
    print_json(await client.channels(), indent=2)


async def _agents(client: Client, args: argparse.Namespace, content: str | None) -> None:
    print_agents(await client.agents())


async def _agent_card(client: Client, args: argparse.Namespace, content: str | None) -> None:
    print_json(await client.agent_card(), indent=2)


async def _history(client: Client, args: argparse.Namespace, content: str | None) -> None:
    page = await client.history(check_name(args.channel, "channel"), args.after_id, args.limit)
    print_messages(page.messages)
    if page.more:
        note_more_waiting(args.channel)


async def _register(client: Client, args: argparse.Namespace, content: str | None) -> None:
    public = identity.load_public_key_text(args.pubkey)
    operator_key = identity.load_private_key(args.key)
    answer = await client.register(check_name(args.name, "agent name"), public,
                                   check_name(args.operator, "operator"), operator_key,
                                   args.identity or "")
    print_json(answer)


COMMANDS = {
    "send": _send, "read": _read, "channels": _channels, "agents": _agents,
    "agent-card": _agent_card, "history": _history, "register": _register,
}
