"""The `elipc` command line: el-ipc's commands on the local database, JSON on stdout.

Start-up time is the product here (agents call this on every step), so the local path imports
neither Twisted nor (unless a key is involved) cryptography. Errors are one line on stderr and
exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable

from elipc import store
from elipc.cli.arguments import parse
from elipc.config import Settings, parse_duration, prepare_db_location
from elipc.model import (
    ElipcError,
    Message,
    check_channel_for_sending,
    check_content,
    check_identity,
    check_name,
)
from elipc.operations import Policy, Rejected, Signed, accept_message, register
from elipc.output import (
    note_more_waiting,
    print_agents,
    print_json,
    print_messages,
    print_sent,
)

# How often `read --wait` looks for another process's commit (a cheap PRAGMA data_version).
COMMIT_POLL_S = 0.01


class CommandError(ElipcError):
    """A command cannot do what was asked; the message says why."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        server = args.server or os.environ.get("IPC_SERVER_URL")
        if server and args.command not in ("keygen", "serve"):
            return _remote(args, server)
        return COMMANDS[args.command](args) or 0
    except ElipcError as e:
        return _fail(str(e))
    except BrokenPipeError:
        # The reader went away; stop quietly (and stop Python complaining at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _remote(args: argparse.Namespace, server: str) -> int:
    from elipc.remote import REMOTE_COMMANDS, run

    if args.command not in REMOTE_COMMANDS:
        raise CommandError(f"{args.command} works on the local database only; "
                           "unset --server / IPC_SERVER_URL")
    content = _message_content(args, _settings(args)) if args.command == "send" else None
    run(args, server, content)
    return 0


def _fail(message: str) -> int:
    print(f"elipc: {message}", file=sys.stderr)
    return 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(db_path=args.db)


def _open(settings: Settings) -> sqlite3.Connection:
    notice = prepare_db_location(settings)
    if notice:
        print(notice, file=sys.stderr)
    try:
        return store.open_database(settings.db_path)
    except store.StorageError as e:
        raise CommandError(f"{settings.db_path}: {e}") from None




# -- messages ------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> None:
    """Store a message; in secure mode it must be signed with the sender's registered key."""
    settings = _settings(args)
    channel = check_channel_for_sending(args.channel)
    sender = check_name(args.sender, "sender")
    content = _message_content(args, settings)
    now = time.time()
    signed = _sign(args.key, channel, sender, content, int(now)) if args.key else Signed("")
    conn = _open(settings)
    policy = Policy.from_settings(settings)
    try:
        message_id = accept_message(conn, channel, sender, content, signed, now, policy).id
    except Rejected as e:
        raise CommandError(_explain_rejection(str(e), args.key, sender)) from None
    if signed.nonce:
        store.forget_nonces(conn, now - 2 * policy.window)
    print_sent(message_id, channel, bool(args.key))


def _sign(key_file: str, channel: str, sender: str, content: str, timestamp: int) -> Signed:
    from elipc import identity

    key = identity.load_private_key(key_file)
    nonce = identity.new_nonce()
    payload = identity.send_payload(channel, sender, timestamp, nonce, content)
    return Signed(identity.sign(key, payload), timestamp, nonce)


def _explain_rejection(reason: str, key_file: str | None, sender: str) -> str:
    if not key_file:
        return f"{reason}: pass --key <private key file>"
    if reason == "invalid signature":
        return f"{reason}: {key_file} is not the registered key of '{sender}'"
    return reason


def _message_content(args: argparse.Namespace, settings: Settings) -> str:
    """The message to send (the words, or stdin for `-`), checked against the limit."""
    limit = settings.max_content_bytes
    return check_content(_content(args.words, limit), limit)


def _content(words: list[str], limit: int) -> str:
    if words != ["-"]:
        return " ".join(words)
    # `-` reads the message from stdin: multi-line text, or more than argv can carry.
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise CommandError(f"content is over the limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("content is not valid UTF-8") from None


def cmd_read(args: argparse.Namespace) -> None:
    """Print unread messages and only then move the watermark; --wait blocks for a first one."""
    channel = check_name(args.channel, "channel")
    agent = check_name(args.agent, "agent")
    conn = _open(_settings(args))
    deliver = _verifying_printer(conn, channel) if args.verify else _print_messages
    deadline = time.monotonic() + (args.timeout if args.wait else 0.0)
    while True:
        version = store.data_version(conn)
        if store.read_unread(conn, channel, agent, deliver=deliver, limit=args.limit):
            if store.peek_unread(conn, channel, agent, 1):
                note_more_waiting(channel)
            return
        if not args.wait or not _await_commit(conn, version, deadline):
            break
    print_messages([])


def _print_messages(messages: list[Message]) -> None:
    # Runs inside the read transaction: if printing fails, the watermark does not move.
    print_messages([m.as_json() for m in messages])


def _verifying_printer(conn: sqlite3.Connection,
                       channel: str) -> Callable[[list[Message]], None]:
    from elipc import identity  # loaded before the read transaction starts

    def deliver(messages: list[Message]) -> None:
        print_messages([identity.marked_verified(channel, m, _public_key(conn, m.sender))
                        for m in messages])
    return deliver


def _public_key(conn: sqlite3.Connection, name: str) -> str | None:
    entry = store.get_agent(conn, name)
    return entry.public_key if entry else None


def _await_commit(conn: sqlite3.Connection, version: int, deadline: float) -> bool:
    """Sleep until another process commits (True) or the deadline passes (False)."""
    while time.monotonic() < deadline:
        time.sleep(min(COMMIT_POLL_S, max(0.0, deadline - time.monotonic())))
        if store.data_version(conn) != version:
            return True
    return False


def cmd_channels(args: argparse.Namespace) -> None:
    """List channels with their message counts, most recently active first."""
    print_json(store.list_channels(_open(_settings(args))), indent=2)


# -- identities ----------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace) -> None:
    """Create an operator: store its public key, hand out its private key exactly once."""
    from elipc import identity

    name = check_name(args.name, "operator name")
    conn = _open(_settings(args))
    private, public = identity.generate_keypair()
    if args.out:
        deliver = _key_writer(args.out, private, public, args.force, name)
    else:
        def deliver() -> None:
            sys.stdout.write(private)
            sys.stdout.flush()
    store.add_operator(conn, name, public, time.time(), before_commit=deliver)
    print(f"elipc: operator '{name}' seeded; its public key is in the database. "
          "Keep the private key safe: it cannot be recovered.", file=sys.stderr)


def _key_writer(prefix: str, private: str, public: str, force: bool,
                name: str) -> Callable[[], None]:
    from elipc import identity

    def write() -> None:
        key_file, pub_file = identity.save_keypair(prefix, private, public, force)
        print_json({"ok": True, "operator": name, "key": key_file, "public_key": pub_file})
    return write


def cmd_keygen(args: argparse.Namespace) -> None:
    """Make an Ed25519 keypair: files with --out (key 0600), else both PEMs on stdout."""
    from elipc import identity

    private, public = identity.generate_keypair()
    if args.out:
        key_file, pub_file = identity.save_keypair(args.out, private, public, args.force)
        print(f"elipc: private key {key_file} (mode 0600), public key {pub_file}",
              file=sys.stderr)
        return
    print("--- PRIVATE KEY ---", file=sys.stderr)
    sys.stdout.write(private)
    sys.stdout.flush()
    print("--- PUBLIC KEY ---", file=sys.stderr)
    sys.stdout.write(public)


def cmd_register(args: argparse.Namespace) -> None:
    """Register an agent's public key, signed locally with the operator's key file."""
    from elipc import identity

    settings = _settings(args)
    name = check_name(args.name, "agent name")
    operator = check_name(args.operator, "operator")
    agent_identity = check_identity(args.identity)
    public = identity.load_public_key_text(args.pubkey)
    operator_key = identity.load_private_key(args.key)
    conn = _open(settings)
    entry = store.get_agent(conn, operator)
    if entry is None:
        raise CommandError(f"operator '{operator}' not found")
    if not entry.is_operator:
        raise CommandError(f"'{operator}' is not an operator (role: {entry.role})")
    if not identity.key_matches(operator_key, entry.public_key):
        raise CommandError(f"{args.key} is not the key of operator '{operator}'")
    now = time.time()
    timestamp = int(now)
    payload = identity.register_payload(name, agent_identity, timestamp, public)
    signed = Signed(identity.sign(operator_key, payload), timestamp)
    try:
        register(conn, name, agent_identity, public, operator, signed, now,
                 Policy.from_settings(settings))
    except Rejected as e:
        raise CommandError(str(e)) from None
    print_json({"ok": True, "message": f"Agent '{name}' registered by operator '{operator}'"})


def cmd_agents(args: argparse.Namespace) -> None:
    """List operators and agents, one line each as el-ipc does, with when each was added."""
    print_agents(a.as_json() for a in store.list_agents(_open(_settings(args))))


def cmd_history(args: argparse.Namespace) -> None:
    """Print a channel's messages after an id, moving no watermark."""
    channel = check_name(args.channel, "channel")
    rows = store.history(_open(_settings(args)), channel, args.after_id, args.limit + 1)
    print_messages([m.as_json() for m in rows[:args.limit]])
    if len(rows) > args.limit:
        note_more_waiting(channel)


def cmd_prune(args: argparse.Namespace) -> None:
    """Delete messages older than --older-than (never anything newer)."""
    age = parse_duration(args.older_than, "--older-than")
    if age <= 0:
        raise CommandError("--older-than must be more than 0")
    conn = _open(_settings(args))
    cutoff, deleted = time.time() - age, 0
    while batch := store.delete_messages_before(conn, cutoff, 10_000):
        deleted += batch
    print_json({"ok": True, "deleted": deleted, "older_than_seconds": age})


def cmd_agent_card(args: argparse.Namespace) -> None:
    """Print the A2A agent card this database would be served with."""
    from elipc.agentcard import build_card

    settings = _settings(args)
    operator = store.first_operator(_open(settings))
    print_json(build_card(settings, operator.public_key if operator else None), indent=2)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server in the foreground (the same service as `twist elipc`)."""
    from elipc.service import run

    run(port=args.port, db_path=args.db)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "send": cmd_send,
    "read": cmd_read,
    "channels": cmd_channels,
    "seed": cmd_seed,
    "keygen": cmd_keygen,
    "register": cmd_register,
    "agents": cmd_agents,
    "history": cmd_history,
    "prune": cmd_prune,
    "agent-card": cmd_agent_card,
    "serve": cmd_serve,
}
