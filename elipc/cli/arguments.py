"""The CLI's arguments: one parser per command, usage errors as one line (exit 2).

The parsers write help, version and usage errors to the streams they are given, never to the
process's own, so `main` can run in a test's process.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, NoReturn

from elipc import __version__
from elipc.config import (
    DEFAULT_PAGE,
    DEFAULT_WAIT_TIMEOUT,
    MAX_CLI_WAIT,
    MAX_PAGE,
    Setting,
    option_help,
    options_for,
    seconds_setting,
)
from elipc.model import ConfigError

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

# The Claude Code hooks `elipc inbox --hook` answers.
HOOKS = ("stop",)


class _Parser(argparse.ArgumentParser):
    """argparse writing to given streams; a usage error is one line (exit 2), not a dump."""

    def __init__(self, stdout: IO[str], stderr: IO[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stdout, self.stderr = stdout, stderr

    def print_usage(self, file: SupportsWrite[str] | None = None) -> None:
        """The usage line, on our stdout unless told otherwise."""
        super().print_usage(self.stdout if file is None else file)

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """The full help, on our stdout unless told otherwise."""
        super().print_help(self.stdout if file is None else file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Say `message` on our stderr and stop parsing (SystemExit, caught by `main`)."""
        if message:
            self.stderr.write(message)
            self.stderr.flush()
        raise SystemExit(status)

    def error(self, message: str) -> NoReturn:
        """One line naming the problem and where help is (exit 2)."""
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """--version on the parser's own stdout (argparse's writes to sys.stdout)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        """Print `elipc <version>` and stop."""
        assert isinstance(parser, _Parser)
        parser.stdout.write(f"elipc {__version__}\n")
        parser.exit()


def _timeout(text: str) -> float:
    try:
        return seconds_setting(text, "the value", MAX_CLI_WAIT)
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
        add("--timeout", type=_timeout, default=DEFAULT_WAIT_TIMEOUT,
            help=f"seconds --wait waits (default {DEFAULT_WAIT_TIMEOUT:g})")
        add("--verify", action="store_true",
            help="check each signature against the directory; adds \"verified\"")
        add("--limit", type=_page_size, default=DEFAULT_PAGE,
            help=f"at most this many (default {DEFAULT_PAGE})")
        add("--key", help="remote mode: the agent's key, to sign the read (secure mode)")
    elif command == "follow":
        add("channels", nargs="*", metavar="channel",
            help="the channels to follow (default IPC_CHANNELS)")
        add("--agent", help="the agent whose watermarks move (default IPC_AGENT)")
        add("--verify", action="store_true",
            help="check each signature against the directory; adds \"verified\"")
        add("--if-configured", action="store_true",
            help="with no channels or agent given or set, do nothing (exit 0): for a monitor "
                 "installed whether or not the user set IPC_AGENT and IPC_CHANNELS")
        add("--count", type=_page_size, default=0,
            help="stop after this many messages (default: run until stopped)")
        add("--key", help="remote mode: the agent's key, to sign reads and acks "
                          "(default IPC_KEY_FILE, for IPC_AGENT)")
    elif command == "inbox":
        add("channels", nargs="*", metavar="channel",
            help="the channels to count (default IPC_CHANNELS)")
        add("--agent", help="whose unread messages (default IPC_AGENT)")
        add("--hook", choices=HOOKS, help="run as Claude Code's Stop hook: read its JSON on "
                                          "stdin, answer a decision; off until IPC_AGENT and "
                                          "IPC_CHANNELS are set")
        add("--key", help="remote mode, secure: the agent's key, to sign the counts "
                          "(default IPC_KEY_FILE, for IPC_AGENT)")
    elif command == "history":
        add("channel")
        add("--after-id", type=int, default=0, help="only messages with a higher id")
        add("--limit", type=_page_size, default=DEFAULT_PAGE,
            help=f"at most this many (default {DEFAULT_PAGE})")
    elif command == "prune":
        add("--older-than", required=True, help="a duration: 7d, 12h, 30m, or seconds")
    elif command == "migrate":
        add("--from", dest="source", required=True,
            help="the store to copy: an SQLite file or a postgresql:// URL")
        add("--to", dest="target", required=True,
            help="the store to copy into: a postgresql:// URL or an SQLite file")
        add("--force", action="store_true",
            help="copy into a target that holds data already (rows there are kept)")
        add("--batch", type=_page_size, default=5000,
            help="rows per transaction (default 5000)")
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
    elif command == "mcp":
        add("--agent", help="the agent this server is: it sends and reads as it "
                            "(default IPC_AGENT)")
        add("--key", help="the agent's private key file, to sign (required in secure mode; "
                          "default IPC_KEY_FILE, for IPC_AGENT)")
    elif command == "card":
        add("action", choices=("sign",), help="sign: sign the agent card as an operator")
        add("--key", required=True, help="the operator's private key file (read locally)")
    elif command == "serve":
        add("port", nargs="?", help="port number or Twisted endpoint (default IPC_PORT)")


HELP: dict[str, str] = {
    "send": "send <channel> <from> <msg...> [--key F]: send a message",
    "read": "read <channel> <agent> [--wait [--timeout S]] [--verify]: read",
    "follow": "follow [<channel>...] [--agent NAME] [--verify] [--count N]: one JSON line per "
              "new message, until stopped",
    "inbox": "inbox [<channel>...] [--agent NAME] [--hook stop]: unread counts, moving "
             "nothing",
    "channels": "channels: list channels",
    "seed": "seed <name> [--out P]: create an operator keypair",
    "keygen": "keygen [--out P]: generate an Ed25519 keypair",
    "register": "register <name> --pubkey F --as OP --key F: register an agent",
    "agents": "agents: list operators and agents",
    "history": "history <channel> [--after-id N] [--limit M]: past messages",
    "prune": "prune --older-than 7d: delete old messages",
    "migrate": "migrate --from SRC --to DST [--force]: copy a store (SQLite file or "
               "postgresql:// URL) into another, ids kept",
    "agent-card": "agent-card: print the A2A agent card",
    "card": "card sign --key F: sign the agent card (JWS) with an operator's key",
    "serve": "serve [port]: run the HTTP server",
    "mcp": "mcp [--agent NAME] [--key F]: an MCP server on stdio for one agent (the mcp "
           "extra)",
}

GLOBAL_OPTIONS: list[Setting] = options_for("cli")


def _dest(setting: Setting) -> str:
    assert setting.option is not None  # options_for lists only settings with an option
    return setting.option.replace("-", "_")


def _add_global_options(top: argparse.ArgumentParser) -> None:
    for setting in GLOBAL_OPTIONS:
        described = option_help(setting).replace("%", "%%")  # argparse formats help with %
        if setting.flag:
            top.add_argument(f"--{setting.option}", dest=_dest(setting), action="store_true",
                             help=described)
        else:
            top.add_argument(f"--{setting.option}", dest=_dest(setting),
                             metavar=_dest(setting).upper(), help=described)


def global_options(args: argparse.Namespace) -> dict[str, Any]:
    """The global options as given, keyed by option name, for `Settings.load`."""
    return {str(setting.option): getattr(args, _dest(setting)) for setting in GLOBAL_OPTIONS}


def parse(argv: list[str], stdout: IO[str], stderr: IO[str]) -> argparse.Namespace:
    """The command line as a Namespace: `command`, the global options and the command's own.

    Help and --version go to `stdout`, usage errors to `stderr`; both then raise SystemExit.
    """
    top = _Parser(
        stdout, stderr, prog="elipc", description="Inter-agent message queue.",
        epilog="commands:\n  " + "\n  ".join(HELP.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action=_Version)
    _add_global_options(top)
    top.add_argument("command")
    top.add_argument("args", nargs=argparse.REMAINDER)
    first = top.parse_args(argv)
    if first.command not in HELP:
        top.error(f"unknown command {first.command!r}; commands: {', '.join(HELP)}")
    sub = _Parser(stdout, stderr, prog=f"elipc {first.command}",
                  description=HELP[first.command])
    _define(sub, first.command)
    args = sub.parse_intermixed_args(first.args)
    args.command = first.command
    for setting in GLOBAL_OPTIONS:
        setattr(args, _dest(setting), getattr(first, _dest(setting)))
    return args
