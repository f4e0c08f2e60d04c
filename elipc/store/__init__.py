"""All of elipc's SQL: plain functions `f(db, ...)` over a sqlite3 connection or cursor, in
one package, by concern:

- opening: create, configure and migrate a file (above connection and schema);
- schema: the tables and their migrations, keyed on PRAGMA user_version;
- connection: pragmas, transactions, errors, batches, noticing other processes;
- messages: sending, reading, watermarks, acknowledgements, history, retention;
- directory: operators and agents;
- guards: nonces (replay protection) and idempotency keys;
- browse: history backwards and channel activity (the console);
- delivery: each agent's watermark and pending count on a channel (the console);
- search: full-text search (SQLite FTS5: its only home).

The CLI calls them on its own connection; the server calls the same functions through
adbapi's runWithConnection. Connections run in autocommit mode and every write is one explicit
`BEGIN IMMEDIATE ... COMMIT`, so nothing is half-written and writers queue on SQLite's lock.
sqlite3 errors leave as StorageError. No Twisted import anywhere in here.
"""

from elipc.model import Conflict, DatabaseGone, SchemaTooNew, StorageError
from elipc.store.browse import activity, history_before
from elipc.store.connection import (
    BUSY_TIMEOUT_S,
    channels_after,
    configure,
    data_version,
    guarded,
    last_message_id,
    run_batch,
    transaction,
)
from elipc.store.delivery import delivery
from elipc.store.directory import (
    add_operator,
    first_operator,
    get_agent,
    is_secure,
    list_agents,
    card_signatures,
    list_operators,
    register_agent,
    register_open,
    save_card_signatures,
)
from elipc.store.guards import (
    forget_idempotency,
    forget_nonces,
    idempotent_id,
    remember_idempotency,
    remember_nonce,
)
from elipc.store.messages import (
    MessageRow,
    acknowledge,
    acknowledge_through,
    across,
    delete_messages_before,
    history,
    history_page,
    insert_message,
    insert_messages,
    list_channels,
    oldest_message_id,
    pending_count,
    take_across,
    take_for_agents,
    unread_page,
    watermark,
)
from elipc.store.opening import check_same_file, file_identity, open_database, open_uri
from elipc.store.search import search

__all__ = [
    "BUSY_TIMEOUT_S", "Conflict", "DatabaseGone", "MessageRow", "SchemaTooNew", "StorageError",
    "acknowledge", "acknowledge_through", "across", "activity", "add_operator", "delivery",
    "history_before", "search", "card_signatures",
    "channels_after", "check_same_file", "configure", "data_version", "delete_messages_before",
    "file_identity", "first_operator", "forget_idempotency", "forget_nonces", "get_agent",
    "guarded", "history", "history_page", "idempotent_id", "insert_message", "insert_messages",
    "is_secure", "last_message_id", "list_agents", "list_channels", "list_operators",
    "oldest_message_id", "open_database", "open_uri", "pending_count", "register_agent",
    "register_open", "remember_idempotency", "remember_nonce", "run_batch",
    "save_card_signatures", "take_across", "take_for_agents", "transaction", "unread_page",
    "watermark",
]
