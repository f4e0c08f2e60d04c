"""What the CLI prints, in one place, so the local and remote modes print the same bytes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable


def print_json(value: object, indent: int | None = None) -> None:
    """One JSON document on stdout, flushed (a reader may be waiting on the pipe)."""
    sys.stdout.write(json.dumps(value, indent=indent) + "\n")
    sys.stdout.flush()


def print_messages(messages: list[dict[str, object]]) -> None:
    """Messages as el-ipc's CLI printed them: indented JSON, `[]` when there are none."""
    print_json(messages, indent=2 if messages else None)


def print_sent(message_id: int, channel: str, signed: bool) -> None:
    """The answer to `send`."""
    print_json({"ok": True, "id": message_id, "channel": channel, "signed": signed})


def print_agents(agents: Iterable[dict[str, object]]) -> None:
    """One line per directory entry, as el-ipc's `agents`, with when it was added."""
    listed = False
    for a in agents:
        listed = True
        ident = f" id={a['identity']}" if a["identity"] else ""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(a["created_at"])))  # type: ignore[arg-type]
        by = f" (registered by {a['registered_by']}, {when})" if a["registered_by"] else f" ({when})"
        print(f"  {'[' + str(a['role']) + ']':10s} {a['name']}{ident}{by}")
    if not listed:
        print("No agents registered (open mode — anyone can send)")


def note_more_waiting(channel: str) -> None:
    """Tell a reader (on stderr) that a page was full and more messages wait."""
    print(f"elipc: more messages are waiting on {channel}; read again", file=sys.stderr)
