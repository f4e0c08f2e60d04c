"""The `elipc` command line: el-ipc's commands on the local database, JSON on stdout.

`main` runs one command in the calling process and writes only to the streams it is given, so
tests run it in process. Start-up time is the product here (agents call this on every step),
so the local path imports neither Twisted nor (unless a key is involved) cryptography.
Errors are one line on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

from elipc.cli.arguments import global_options, parse
from elipc.cli.context import (
    AGENT_COMMANDS,
    CommandError,
    Context,
    message_content,
    resolve_agent,
)
from elipc.cli.output import Console
from elipc.cli.system import Clock, SystemClock
from elipc.config import Settings

if TYPE_CHECKING:  # the transport module loads only in remote mode
    from elipc.cli.transport import Transport
from elipc.model import ElipcError

__all__ = ["CommandError", "main"]

# Commands that never talk to a server, even when one is configured.
LOCAL_ONLY = ("keygen", "serve", "migrate")


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdin: IO[bytes] | None = None, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None, clock: Clock | None = None,
         transport: Transport | None = None) -> int:
    """Run one command; return its exit status. Unset arguments default to the process's
    own (sys.argv, os.environ, standard streams, the system clock)."""
    console = Console(_process_stdin() if stdin is None else stdin,
                      sys.stdout if stdout is None else stdout,
                      sys.stderr if stderr is None else stderr)
    try:
        args = parse(sys.argv[1:] if argv is None else argv, console.stdout, console.stderr)
    except SystemExit as stop:  # help, --version or a usage error, already written
        return stop.code if isinstance(stop.code, int) else 2
    try:
        settings = Settings.load(os.environ if environ is None else environ,
                                 global_options(args))
        ctx = Context(args, settings, console, SystemClock() if clock is None else clock)
        return _run(ctx, transport)
    except ElipcError as e:
        console.note(f"elipc: {e}")
        return 1
    except BrokenPipeError:
        _silence(console.stdout)
        return 1
    except KeyboardInterrupt:
        return 130


def _process_stdin() -> IO[bytes]:
    # A process started with fd 0 closed has no sys.stdin; only `send -` would miss it.
    return sys.stdin.buffer if sys.stdin is not None else io.BytesIO()


def _run(ctx: Context, transport: Transport | None) -> int:
    if ctx.args.command in AGENT_COMMANDS and not resolve_agent(ctx):
        return 0
    if ctx.args.command == "inbox":
        from elipc.cli.inbox import prepare

        if not prepare(ctx):
            return 0
    if ctx.settings.server_url and ctx.args.command not in LOCAL_ONLY:
        return _remote(ctx, transport)
    from elipc.cli.commands import COMMANDS  # the store and sqlite3: local mode only

    COMMANDS[ctx.args.command](ctx)
    return 0


def _remote(ctx: Context, transport: Transport | None) -> int:
    # Only here is the remote module (and with it an HTTP client) imported.
    from elipc.cli.remote import REMOTE_COMMANDS, run_remote

    command = ctx.args.command
    if command not in REMOTE_COMMANDS:
        raise CommandError(f"{command} works on the local database only; "
                           "unset --server / IPC_SERVER_URL")
    content = message_content(ctx) if command == "send" else None
    run_remote(ctx.args, ctx.settings, content, ctx.console, ctx.clock, transport)
    return 0


def _silence(stdout: IO[str]) -> None:
    # The reader went away. For the process's own stdout, point fd 1 at /dev/null so Python's
    # flush at exit does not complain; a stream we were handed is its owner's to close.
    if stdout is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
