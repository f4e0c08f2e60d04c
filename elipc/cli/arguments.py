"""The CLI's arguments: one parser per command, usage errors as one line (exit 2)."""

from __future__ import annotations

import argparse

from elipc import __version__
from elipc.config import DEFAULT_PAGE, MAX_PAGE, ConfigError, seconds_setting

MAX_CLI_WAIT_S = 24 * 3600.0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")




def _timeout(text: str) -> float:
    try:
        return seconds_setting(text, "the value", MAX_CLI_WAIT_S)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _define(sub: argparse.ArgumentParser, command: str) -> None:
    add = sub.add_argument
    if command == "send":
        add("channel"), add("sender")
        add("words", nargs="+", metavar="message", help="words joined by spaces; - reads stdin")
        add("--key", help="private key file to sign with (required in secure mode)")
    elif command == "read":
        add("channel"), add("agent")
        add("--wait", action="store_true", help="block until a first message arrives")
        add("--timeout", type=_timeout, default=30.0, help="seconds --wait waits (default 30)")
        add("--verify", action="store_true",
            help="check each signature against the directory; adds \"verified\"")
        add("--limit", type=_page_size, default=DEFAULT_PAGE,
            help=f"at most this many (default {DEFAULT_PAGE})")
        add("--key", help="remote mode: the agent's key, to sign the read (secure mode)")
    elif command == "history":
        add("channel")
        add("--after-id", type=int, default=0, help="only messages with a higher id")
        add("--limit", type=_page_size, default=DEFAULT_PAGE,
            help=f"at most this many (default {DEFAULT_PAGE})")
    elif command == "prune":
        add("--older-than", required=True, help="a duration: 7d, 12h, 30m, or seconds")
    elif command in ("seed", "keygen"):
        if command == "seed":
            add("name")
        add("--out", metavar="PREFIX", help="write PREFIX.key (0600) and PREFIX.pub")
        add("--force", action="store_true", help="overwrite existing key files")
    elif command == "register":
        add("name")
        add("--pubkey", required=True, help="the agent's public key file")
        add("--as", dest="operator", required=True, help="the authorizing operator")
        add("--key", required=True, help="the operator's private key file (read locally)")
        add("--identity", default="", help="a secondary identifier (UUID, description)")
    elif command == "serve":
        add("port", nargs="?", help="port number or Twisted endpoint (default IPC_PORT)")


HELP: dict[str, str] = {
    "send": "send <channel> <from> <msg...> [--key F]: send a message",
    "read": "read <channel> <agent> [--wait [--timeout S]] [--verify]: read",
    "channels": "channels: list channels",
    "seed": "seed <name> [--out P]: create an operator keypair",
    "keygen": "keygen [--out P]: generate an Ed25519 keypair",
    "register": "register <name> --pubkey F --as OP --key F: register an agent",
    "agents": "agents: list operators and agents",
    "history": "history <channel> [--after-id N] [--limit M]: past messages",
    "prune": "prune --older-than 7d: delete old messages",
    "agent-card": "agent-card: print the A2A agent card",
    "serve": "serve [port]: run the HTTP server",
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line as a Namespace: `command`, `db`, `server` and the command's own."""
    top = _Parser(
        prog="elipc", description="Inter-agent message queue.",
        epilog="commands:\n  " + "\n  ".join(HELP.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"elipc {__version__}")
    top.add_argument("--db", help="database file (default IPC_DB_PATH, else per-user state)")
    top.add_argument("--server", metavar="URL",
                     help="use this elipc server instead of the database (IPC_SERVER_URL)")
    top.add_argument("command")
    top.add_argument("args", nargs=argparse.REMAINDER)
    first = top.parse_args(argv)
    if first.command not in HELP:
        top.error(f"unknown command {first.command!r}; commands: {', '.join(HELP)}")
    sub = _Parser(prog=f"elipc {first.command}", description=HELP[first.command])
    _define(sub, first.command)
    args = sub.parse_intermixed_args(first.args)
    args.command, args.db, args.server = first.command, first.db, first.server
    return args
