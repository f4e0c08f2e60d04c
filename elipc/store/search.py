"""Full-text search over message content: SQLite's FTS5, the one place that knows it.

The index is an external-content FTS5 table over `messages.content`, kept by triggers, so
every writer keeps it (the server, the CLI on its own connection, retention's deletes, el's
sidecar) with no code of theirs knowing. A person's search text never reaches FTS5 as
syntax: each word becomes a quoted phrase (a trailing `*` stays a prefix search), so no
input can be an FTS5 syntax error; anything FTS5 still refuses is InvalidInput, not a
storage failure.

On PostgreSQL the same search is its own text search: a GIN index over
to_tsvector('simple', content) (postgres.UPGRADES, version 2), each word a quoted lexeme
in a to_tsquery joined by &, a trailing `*` a prefix (`:*`). 'simple' neither stems nor
drops stop words nor folds accents, where FTS5's unicode61 folds them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from elipc.model import RESERVED_PREFIX, InvalidInput, Message, Page
from elipc.store.connection import DRIVER_ERRORS, guarded, is_postgres

MAX_QUERY_CHARS = 500
MAX_TERMS = 32

# Schema version 5 (schema.UPGRADES): the index, its triggers, and a rebuild that fills it
# from the messages already stored.
FTS_SCHEMA = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, "
    "content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts (messages_fts, rowid, content) "
    "VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages "
    "BEGIN INSERT INTO messages_fts (messages_fts, rowid, content) "
    "VALUES ('delete', old.id, old.content); "
    "INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
)

# What FTS5 says when it refuses a query (rather than the database failing).
_QUERY_ERRORS = ("fts5", "syntax", "unterminated", "MATCH", "unknown special query")

_COLUMNS = ("m.id, m.channel, m.sender, m.content, m.created_at, COALESCE(m.signature, ''), "
            "m.signed_timestamp, m.nonce")


def match_expression(text: str) -> str:
    """`text` as an FTS5 query that means "all these words": each word a quoted phrase
    (quotes doubled), a trailing `*` kept as a prefix search. InvalidInput when empty or
    too long."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"q is longer than {MAX_QUERY_CHARS} characters")
    words = text.replace("\x00", " ").split()  # FTS5 ends a string at NUL
    if not words:
        raise InvalidInput("q: give at least one word to search for")
    if len(words) > MAX_TERMS:
        raise InvalidInput(f"q has more than {MAX_TERMS} words")
    phrases = []
    for word in words:
        stem = word.rstrip("*")
        star = "*" if stem and stem != word else ""
        phrases.append('"' + (stem or word).replace('"', '""') + '"' + star)
    return " ".join(phrases)


# PostgreSQL (see the module's docstring): the expression the GIN index is built on.
PG_DOCUMENT = "to_tsvector('simple', m.content)"
PG_SCHEMA = (
    "CREATE INDEX messages_content_search ON messages "
    "USING GIN (to_tsvector('simple', content))",
)


def tsquery_expression(text: str) -> str:
    """`text` as a PostgreSQL tsquery meaning "all these words" (the same words and limits
    as match_expression): each word a quoted lexeme, a trailing `*` a prefix."""
    match_expression(text)  # the same refusals
    terms = []
    for word in text.replace("\x00", " ").split():
        stem = word.rstrip("*") or word
        quoted = "'" + stem.replace("\\", "\\\\").replace("'", "''") + "'"
        terms.append(quoted + (":*" if stem != word else ""))
    return " & ".join(terms)


@guarded
def search(db: Any, text: str, channel: str | None, sender: str | None, before_id: int,
           limit: int, include_reserved: bool) -> Page:
    """Up to `limit` messages whose content has every word of `text`, newest first, with ids
    below `before_id`, on `channel` and by `sender` when given (the elipc/ channels only
    with `include_reserved`), and whether more match further back."""
    filters = _filters(channel, sender, include_reserved)
    if is_postgres(db):
        return _search_postgres(db, text, before_id, limit, filters)
    where = ["messages_fts MATCH ?", "messages_fts.rowid < ?", *filters[0]]
    args: list[object] = [match_expression(text), before_id, *filters[1]]
    # CROSS JOIN keeps the index as the outer loop: it yields its matches newest first, and
    # each is one primary-key lookup (SQLite would otherwise scan a channel's messages and
    # ask the index about each).
    query = (f"SELECT {_COLUMNS} FROM messages_fts CROSS JOIN messages m "
             f"WHERE m.id = messages_fts.rowid AND {' AND '.join(where)} "
             "ORDER BY messages_fts.rowid DESC LIMIT ?")
    try:
        rows = db.execute(query, (*args, limit + 1)).fetchall()
    except sqlite3.OperationalError as e:
        if not any(word in str(e) for word in _QUERY_ERRORS):
            raise  # busy, I/O: a storage failure after all
        raise InvalidInput(f"q cannot be searched for: {e}") from None
    return Page([Message(*row) for row in rows[:limit]], len(rows) > limit)


Filters = tuple[list[str], list[object]]


def _filters(channel: str | None, sender: str | None, include_reserved: bool) -> Filters:
    # The conditions on the message (`m`) both stores' queries share, and their arguments.
    where: list[str] = []
    args: list[object] = []
    if channel is not None:
        where.append("m.channel = ?")
        args.append(channel)
    if sender is not None:
        where.append("m.sender = ?")
        args.append(sender)
    if not include_reserved:
        where.append("substr(m.channel, 1, ?) <> ?")
        args += [len(RESERVED_PREFIX), RESERVED_PREFIX]
    return where, args


def _search_postgres(db: Any, text: str, before_id: int, limit: int,
                     filters: Filters) -> Page:
    where = [f"{PG_DOCUMENT} @@ to_tsquery('simple', ?)", "m.id < ?", *filters[0]]
    args: list[object] = [tsquery_expression(text), before_id, *filters[1]]
    query = (f"SELECT {_COLUMNS} FROM messages m WHERE {' AND '.join(where)} "
             "ORDER BY m.id DESC LIMIT ?")
    try:
        rows = db.execute(query, (*args, limit + 1)).fetchall()
    except DRIVER_ERRORS as e:
        if "tsquery" not in str(e) and "syntax" not in str(e):
            raise
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise InvalidInput(f"q cannot be searched for: {str(e).splitlines()[0]}") from None
    return Page([Message(*row) for row in rows[:limit]], len(rows) > limit)
