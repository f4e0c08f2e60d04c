"""What one CLI run is (arguments, settings, streams, clock), and what local and remote
commands share before either starts: the message content a send carries. Cheap to import:
the remote path loads this, not the store.
"""

from __future__ import annotations

import argparse

from elipc.cli.output import Console
from elipc.cli.system import Clock
from elipc.config import Settings
from elipc.model import ElipcError, check_content


class CommandError(ElipcError):
    """A command cannot do what was asked; the message says why."""


# The commands that act as one agent: --agent, else IPC_AGENT; its key --key, else
# IPC_KEY_FILE (only when the agent is IPC_AGENT: that key is IPC_AGENT's).
AGENT_COMMANDS = ("follow", "mcp", "inbox")


class Context:
    """One run of one command: its arguments, its settings, its streams and its clock."""

    __slots__ = ("args", "settings", "console", "clock")

    def __init__(self, args: argparse.Namespace, settings: Settings, console: Console,
                 clock: Clock) -> None:
        self.args, self.settings, self.console, self.clock = args, settings, console, clock


def resolve_agent(ctx: Context) -> bool:
    """Fill in an agent command's agent (and its key, and follow's channels) from the
    settings; False when there is nothing to do: a hook or `follow --if-configured` with
    nothing configured (the Claude Code plugin runs both whether or not the user set them)."""
    args, settings = ctx.args, ctx.settings
    optional = getattr(args, "hook", None) is not None or getattr(args, "if_configured", False)
    args.agent = args.agent or settings.agent or None
    if args.command in ("follow", "inbox"):
        args.channels = args.channels or list(settings.channels)
    if optional and not (args.agent and getattr(args, "channels", True)):
        return False
    if not args.agent:
        raise CommandError(f"{args.command} acts as an agent: pass --agent NAME or set "
                           "IPC_AGENT")
    if not args.key and settings.key_file and args.agent == settings.agent:
        args.key = settings.key_file
    if args.command == "follow" and not args.channels:
        raise CommandError("follow needs channels: name them or set IPC_CHANNELS")
    return True


def message_content(ctx: Context) -> str:
    """The message to send (the words, or stdin for `-`), checked against the limit."""
    limit = ctx.settings.max_content_bytes
    return check_content(_content(ctx.args.words, limit, ctx.console), limit)


def _content(words: list[str], limit: int, console: Console) -> str:
    if words != ["-"]:
        return " ".join(words)
    # `-` reads the message from stdin: multi-line text, or more than argv can carry.
    data = console.stdin.read(limit + 1)
    if len(data) > limit:
        raise CommandError(f"content is over the limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("content is not valid UTF-8") from None


def explain_refused_send(reason: str, key_file: str | None, sender: str, no_key: str) -> str:
    """A secure-mode refusal of a local send, with what to do about it: `no_key` when no key
    was given, or which key is wrong."""
    if not key_file:
        return f"{reason}: {no_key}"
    if reason == "invalid signature":
        return f"{reason}: {key_file} is not the registered key of '{sender}'"
    return reason
