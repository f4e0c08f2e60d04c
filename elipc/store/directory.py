"""The agent directory: operators and the agents they registered."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from elipc.model import Agent, Conflict
from elipc.store.connection import WriteTransaction, guarded

_AGENT_COLUMNS = (
    "name, identity, public_key, role, registered_by, created_at, registration_ts, "
    "registration_signature"
)
# An agent's whole entry, replaced (the callers checked it is not an operator's).
_REPLACE_AGENT = (
    "INSERT INTO agents (name, identity, public_key, role, registered_by, created_at, "
    "registration_ts, registration_signature) VALUES (?, ?, ?, 'agent', ?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET identity = excluded.identity, "
    "public_key = excluded.public_key, role = excluded.role, "
    "registered_by = excluded.registered_by, created_at = excluded.created_at, "
    "registration_ts = excluded.registration_ts, "
    "registration_signature = excluded.registration_signature"
)


@guarded
def is_secure(db: Any) -> bool:
    """Secure mode is on once any operator exists (and stays on)."""
    return db.execute("SELECT 1 FROM agents WHERE role = 'operator' LIMIT 1").fetchone() is not None


@guarded
def get_agent(db: Any, name: str) -> Agent | None:
    """The directory entry called `name`, or None."""
    row = db.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE name = ?", (name,)).fetchone()
    return Agent(*row) if row else None


@guarded
def list_agents(db: Any) -> list[Agent]:
    """Every operator and agent, oldest first."""
    rows = db.execute(f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY created_at, name")
    return [Agent(*row) for row in rows.fetchall()]


@guarded
def first_operator(db: Any) -> Agent | None:
    """The operator seeded first (its key is the agent card's did:key), or None."""
    row = db.execute(
        f"SELECT {_AGENT_COLUMNS} FROM agents WHERE role = 'operator' "
        "ORDER BY created_at, name LIMIT 1"
    ).fetchone()
    return Agent(*row) if row else None


@guarded
def add_operator(
    db: Any, name: str, public_key: str, now: float,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Store a new operator (Conflict if the name is taken). `before_commit` runs inside the
    transaction (the CLI hands out the private key there): if it fails, nothing is stored."""
    with WriteTransaction(db):
        if _role(db, name) is not None:
            raise Conflict(f"agent '{name}' already exists")
        db.execute(
            "INSERT INTO agents (name, identity, public_key, role, registered_by, created_at) "
            "VALUES (?, '', ?, 'operator', NULL, ?)",
            (name, public_key, now),
        )
        if before_commit is not None:
            before_commit()


@guarded
def register_agent(
    db: Any, name: str, identity: str, public_key: str, operator: str, now: float,
    registration_ts: int = 0, registration_signature: str = "",
) -> None:
    """Store or replace agent `name`, registered by `operator` (still an operator; the caller
    checked its signature). Never replaces an operator, nor a registration signed later than
    this one (a replayed old registration must not roll a rotated key back)."""
    with WriteTransaction(db):
        if _role(db, operator) != "operator":
            raise Conflict(f"'{operator}' is not an operator")
        current = get_agent(db, name)
        if current is not None and current.is_operator:
            raise Conflict(f"'{name}' is an operator and cannot be registered as an agent")
        if current is not None and registration_ts and current.registration_ts >= registration_ts:
            raise Conflict(f"a registration of '{name}' signed at or after that time exists")
        db.execute(_REPLACE_AGENT, (name, identity, public_key, operator, now, registration_ts,
                                    registration_signature))


@guarded
def register_open(db: Any, name: str, identity: str, public_key: str, now: float) -> None:
    """Store or replace agent `name` in open mode (no operator yet, so nobody to authorize
    it; el's sidecar does this only when its user allows it). Conflict once an operator
    exists, or if `name` is an operator."""
    with WriteTransaction(db):
        if is_secure(db):
            raise Conflict("secure mode active: an operator must sign the registration")
        db.execute(_REPLACE_AGENT, (name, identity, public_key, None, now, 0, ""))


def _role(db: Any, name: str) -> str | None:
    row = db.execute("SELECT role FROM agents WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


@guarded
def save_card_signatures(db: Any, signatures: list[dict[str, str]], operator: str,
                         now: float) -> None:
    """Keep the agent card's signatures (replacing any before), made by `operator`."""
    with WriteTransaction(db):
        db.execute("INSERT INTO card_signatures (id, signatures, signed_by, signed_at) "
                   "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                   "signatures = excluded.signatures, signed_by = excluded.signed_by, "
                   "signed_at = excluded.signed_at", (json.dumps(signatures), operator, now))


@guarded
def card_signatures(db: Any) -> list[dict[str, str]] | None:
    """The agent card's stored signatures, or None."""
    row = db.execute("SELECT signatures FROM card_signatures WHERE id = 1").fetchone()
    return json.loads(row[0]) if row else None


@guarded
def list_operators(db: Any) -> list[Agent]:
    """Every operator, oldest first."""
    rows = db.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE role = 'operator' "
                      "ORDER BY created_at, name").fetchall()
    return [Agent(*row) for row in rows]
