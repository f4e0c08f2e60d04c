"""What the CLI prints, in one place, so the local and remote modes print the same bytes.

Every command writes to the streams of the Console it is given (the process's own, or a
test's), never to sys.stdout directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import IO, Any


class Console:
    """The streams one CLI run reads and writes (a plain class: it is made on every run, and
    a dataclass costs start-up time the CLI does not have)."""

    __slots__ = ("stdin", "stdout", "stderr")

    def __init__(self, stdin: IO[bytes], stdout: IO[str], stderr: IO[str]) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def json(self, value: object, indent: int | None = None) -> None:
        """One JSON document on stdout, flushed (a reader may be waiting on the pipe)."""
        self.stdout.write(json.dumps(value, indent=indent) + "\n")
        self.stdout.flush()

    def messages(self, messages: list[dict[str, Any]]) -> None:
        """Messages as el-ipc's CLI printed them: indented JSON, `[]` when there are none."""
        self.json(messages, indent=2 if messages else None)

    def sent(self, message_id: int, channel: str, signed: bool) -> None:
        """The answer to `send`."""
        self.json({"ok": True, "id": message_id, "channel": channel, "signed": signed})

    def agents(self, agents: Iterable[dict[str, Any]]) -> None:
        """One line per directory entry, as el-ipc's `agents`, with when it was added."""
        listed = False
        for a in agents:
            listed = True
            ident = f" id={a['identity']}" if a["identity"] else ""
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(a["created_at"])))
            by = (f" (registered by {a['registered_by']}, {when})" if a["registered_by"]
                  else f" ({when})")
            self.stdout.write(f"  {'[' + str(a['role']) + ']':10s} {a['name']}{ident}{by}\n")
        if not listed:
            self.stdout.write("No agents registered (open mode — anyone can send)\n")
        self.stdout.flush()

    @property
    def terminal(self) -> bool:
        """Whether stdout is a person's terminal (not a pipe, a file, el or a monitor)."""
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())

    def more_waiting(self, channel: str) -> None:
        """Tell a person (on stderr) that a page was full and more messages wait. Said only
        to a terminal: el merges a command's stderr into its event, which must stay pure
        JSON, and a program reading the output simply reads again (the watermark waits)."""
        if self.terminal:
            self.note(f"elipc: more messages are waiting on {channel}; read again")

    def note(self, text: str) -> None:
        """One line on stderr."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def raw(self, text: str) -> None:
        """Text on stdout exactly as given (a key's PEM), flushed."""
        self.stdout.write(text)
        self.stdout.flush()
