"""The commands on the local database: each one a function of the run's Context.

They write only through the Context's console and take time only from its clock. Nothing
here imports Twisted; the cryptography library is loaded only when a key is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from elipc import store
from elipc.cli.context import CommandError, Context, explain_refused_send, message_content
from elipc.cli.follow import follow_local
from elipc.cli.inbox import inbox_local
from elipc.cli.migrate import cmd_migrate
from elipc.cli.system import Clock
from elipc.config import parse_duration, prepare_db_location
from elipc.locations import redact
from elipc.model import (
    UNSIGNED,
    Message,
    Rejected,
    Signed,
    StorageError,
    check_channel_for_sending,
    check_identity,
    check_name,
)
from elipc.operations import Policy, accept_message, forget_expired, register, run_retention

if TYPE_CHECKING:  # only for hints: cryptography loads only when a key is involved
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# How often `read --wait` looks for another process's commit (a cheap PRAGMA data_version).
COMMIT_POLL_S = 0.01
PRUNE_BATCH = 10_000
# Commands whose stdout a program (el, a monitor) parses: when stdout is not a terminal they
# write nothing to stderr but a real error, since el merges stderr into the event.
OUTPUT_COMMANDS = ("read", "follow", "history")


def open_database(ctx: Context) -> Any:
    """The run's database, created (0600) and migrated if need be; el-ipc's hint on stderr
    (except from a reading command whose output a program reads: see OUTPUT_COMMANDS)."""
    notice = prepare_db_location(ctx.settings)
    if notice and (ctx.console.terminal or ctx.args.command not in OUTPUT_COMMANDS):
        ctx.console.note(notice)
    try:
        return store.open_database(ctx.settings.database)
    except StorageError as e:
        raise CommandError(f"{redact(ctx.settings.database)}: {e}") from None


# -- messages ------------------------------------------------------------------------------


def cmd_send(ctx: Context) -> None:
    """Store a message; in secure mode it must be signed with the sender's registered key."""
    args = ctx.args
    channel = check_channel_for_sending(args.channel)
    sender = check_name(args.sender, "sender")
    content = message_content(ctx)
    now = ctx.clock.time()
    signed = _sign(args.key, channel, sender, content, int(now)) if args.key else UNSIGNED
    conn = open_database(ctx)
    policy = Policy.from_settings(ctx.settings)
    try:
        accepted = accept_message(conn, channel, sender, content, signed, now, policy)
    except Rejected as e:
        raise CommandError(explain_refused_send(str(e), args.key, sender,
                                                "pass --key <private key file>")) from None
    if signed.nonce:
        forget_expired(conn, now, policy)
    ctx.console.sent(accepted.id, channel, bool(args.key))


def _sign(key_file: str, channel: str, sender: str, content: str, timestamp: int) -> Signed:
    from elipc import identity

    return identity.sign_send(identity.load_private_key(key_file), channel, sender, content,
                              timestamp)


def cmd_read(ctx: Context) -> None:
    """Print unread messages and only then move the watermark; --wait blocks for a first one."""
    args = ctx.args
    channel = check_name(args.channel, "channel")
    agent = check_name(args.agent, "agent")
    conn = open_database(ctx)
    deliver = _verifying_printer(ctx, conn, channel) if args.verify else _printer(ctx)
    deadline = ctx.clock.monotonic() + (args.timeout if args.wait else 0.0)
    while True:
        version = store.data_version(conn)
        page = store.unread_page(conn, channel, agent, args.limit, deliver=deliver)
        if page.messages:
            if page.more:
                ctx.console.more_waiting(channel)
            return
        if not args.wait or not await_commit(ctx.clock, conn, version, deadline):
            break
    ctx.console.messages([])


def _printer(ctx: Context) -> Callable[[list[Message]], None]:
    # Runs inside the read transaction: if printing fails, the watermark does not move.
    def deliver(messages: list[Message]) -> None:
        ctx.console.messages([m.as_json() for m in messages])
    return deliver


def _verifying_printer(ctx: Context, conn: Any,
                       channel: str) -> Callable[[list[Message]], None]:
    from elipc import identity  # loaded before the read transaction starts

    def deliver(messages: list[Message]) -> None:
        ctx.console.messages([identity.marked_verified(channel, m, _public_key(conn, m.sender))
                              for m in messages])
    return deliver


def _public_key(conn: Any, name: str) -> str | None:
    entry = store.get_agent(conn, name)
    return entry.public_key if entry else None


def await_commit(clock: Clock, conn: Any, version: int,
                  deadline: float) -> bool:
    """Sleep until another process commits (True) or the deadline passes (False)."""
    while clock.monotonic() < deadline:
        clock.sleep(min(COMMIT_POLL_S, max(0.0, deadline - clock.monotonic())))
        if store.data_version(conn) != version:
            return True
    return False


def cmd_channels(ctx: Context) -> None:
    """List channels with their message counts, most recently active first."""
    ctx.console.json(store.list_channels(open_database(ctx)), indent=2)


def cmd_history(ctx: Context) -> None:
    """Print a channel's messages after an id, moving no watermark."""
    channel = check_name(ctx.args.channel, "channel")
    page = store.history_page(open_database(ctx), channel, ctx.args.after_id, ctx.args.limit)
    ctx.console.messages([m.as_json() for m in page.messages])
    if page.more:
        ctx.console.more_waiting(channel)


def cmd_prune(ctx: Context) -> None:
    """Delete messages older than --older-than (never anything newer)."""
    age = parse_duration(ctx.args.older_than, "--older-than")
    if age <= 0:
        raise CommandError("--older-than must be more than 0")
    deleted = run_retention(open_database(ctx), ctx.clock.time() - age, PRUNE_BATCH)
    ctx.console.json({"ok": True, "deleted": deleted, "older_than_seconds": age})


# -- identities ----------------------------------------------------------------------------


def cmd_seed(ctx: Context) -> None:
    """Create an operator: store its public key, hand out its private key exactly once."""
    from elipc import identity

    name = check_name(ctx.args.name, "operator name")
    conn = open_database(ctx)
    private, public = identity.generate_keypair()
    if ctx.args.out:
        deliver = _key_writer(ctx, private, public, name)
    else:
        def deliver() -> None:
            ctx.console.raw(private)
    store.add_operator(conn, name, public, ctx.clock.time(), before_commit=deliver)
    ctx.console.note(f"elipc: operator '{name}' seeded; its public key is in the database. "
                     "Keep the private key safe: it cannot be recovered.")


def _key_writer(ctx: Context, private: str, public: str, name: str) -> Callable[[], None]:
    from elipc import identity

    def write() -> None:
        key_file, pub_file = identity.save_keypair(ctx.args.out, private, public,
                                                   ctx.args.force)
        ctx.console.json({"ok": True, "operator": name, "key": key_file,
                          "public_key": pub_file})
    return write


def cmd_keygen(ctx: Context) -> None:
    """Make an Ed25519 keypair: files with --out (key 0600), else both PEMs on stdout."""
    from elipc import identity

    private, public = identity.generate_keypair()
    if ctx.args.out:
        key_file, pub_file = identity.save_keypair(ctx.args.out, private, public,
                                                   ctx.args.force)
        ctx.console.note(f"elipc: private key {key_file} (mode 0600), public key {pub_file}")
        return
    ctx.console.note("--- PRIVATE KEY ---")
    ctx.console.raw(private)
    ctx.console.note("--- PUBLIC KEY ---")
    ctx.console.raw(public)


def cmd_register(ctx: Context) -> None:
    """Register an agent's public key, signed locally with the operator's key file."""
    from elipc import identity

    args = ctx.args
    name = check_name(args.name, "agent name")
    operator = check_name(args.operator, "operator")
    agent_identity = check_identity(args.identity)
    public = identity.load_public_key_text(args.pubkey)
    operator_key = identity.load_private_key(args.key)
    conn = open_database(ctx)
    _check_operator(conn, operator, args.key, operator_key)
    now = ctx.clock.time()
    payload = identity.register_payload(name, agent_identity, int(now), public)
    signed = Signed(identity.sign(operator_key, payload), int(now))
    try:
        register(conn, name, agent_identity, public, operator, signed, now,
                 Policy.from_settings(ctx.settings))
    except Rejected as e:
        raise CommandError(str(e)) from None
    ctx.console.json({"ok": True,
                      "message": f"Agent '{name}' registered by operator '{operator}'"})


def _check_operator(conn: Any, operator: str, key_file: str,
                    key: Ed25519PrivateKey) -> None:
    # Said here in the CLI's words (which file is wrong) before the operation's own check.
    from elipc import identity

    entry = store.get_agent(conn, operator)
    if entry is None:
        raise CommandError(f"operator '{operator}' not found")
    if not entry.is_operator:
        raise CommandError(f"'{operator}' is not an operator (role: {entry.role})")
    if not identity.key_matches(key, entry.public_key):
        raise CommandError(f"{key_file} is not the key of operator '{operator}'")


def cmd_agents(ctx: Context) -> None:
    """List operators and agents, one line each as el-ipc does, with when each was added."""
    ctx.console.agents(a.as_json() for a in store.list_agents(open_database(ctx)))


def cmd_agent_card(ctx: Context) -> None:
    """Print the A2A agent card this database would be served with (with its signatures
    while they match it)."""
    from elipc.agentcard import RESIGN, served_card

    conn = open_database(ctx)
    card, stale = served_card(ctx.settings, store.list_operators(conn),
                              store.card_signatures(conn))
    if stale and ctx.console.terminal:
        ctx.console.note(f"elipc: the stored signature no longer matches this card; {RESIGN}")
    ctx.console.json(card, indent=2)


def cmd_card(ctx: Context) -> None:
    """`card sign --key F`: sign the agent card with an operator's key (locally) and keep
    the signatures in the database."""
    from elipc import identity
    from elipc.agentcard import key_id, served_card, sign_card

    key = identity.load_private_key(ctx.args.key)
    conn = open_database(ctx)
    operators = store.list_operators(conn)
    operator = next((o for o in operators if identity.key_matches(key, o.public_key)), None)
    if operator is None:
        raise CommandError(f"{ctx.args.key} is not the key of an operator here")
    card, _ = served_card(ctx.settings, operators, None)
    store.save_card_signatures(conn, sign_card(card, key, operator.public_key),
                               operator.name, ctx.clock.time())
    ctx.console.json({"ok": True, "signed_by": operator.name,
                      "kid": key_id(operator.public_key)})


def cmd_serve(ctx: Context) -> None:
    """Run the HTTP server in the foreground (the same service as `twist elipc`)."""
    from elipc.server.service import run

    run(port=ctx.args.port, db_path=ctx.args.db)


def cmd_mcp(ctx: Context) -> None:
    """Serve MCP on stdio for one agent (the mcp SDK loads only here)."""
    from elipc.cli.mcp import serve_local

    serve_local(ctx)


COMMANDS: dict[str, Callable[[Context], None]] = {
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
    "card": cmd_card,
    "serve": cmd_serve,
    "follow": follow_local,
    "mcp": cmd_mcp,
    "inbox": inbox_local,
    "migrate": cmd_migrate,
}
