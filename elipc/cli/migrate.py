"""`elipc migrate --from SOURCE --to TARGET`: copy one store into another (an SQLite file
into PostgreSQL, say), keeping message ids, watermarks, agents, nonces, idempotency keys
and the signed card; print what was copied as JSON.

A target that already holds data is refused unless `--force`: then only what it lacks is
added (store/copying.py), which is also what makes a second run, or a run after a failure,
safe. Stop the servers writing to the source first: what they write during the copy may
be missed.
"""

from __future__ import annotations

import os
from typing import Any

from elipc import store
from elipc.cli.context import CommandError, Context
from elipc.locations import is_url, redact
from elipc.model import Conflict, StorageError
from elipc.store import copying

BATCH = 5_000


def cmd_migrate(ctx: Context) -> None:
    """Copy --from into --to; print the counts."""
    source, target = ctx.args.source, ctx.args.target
    if not is_url(source) and not os.path.exists(source):
        raise CommandError(f"no database at {source}")
    if os.path.abspath(source) == os.path.abspath(target) or source == target:
        raise CommandError("--from and --to name the same database")
    src, dst = _open(source), _open(target)
    try:
        held = {table: n for table, n in copying.row_counts(dst).items() if n}
        if held and not ctx.args.force:
            what = ", ".join(f"{n} {table}" for table, n in held.items())
            raise CommandError(f"{redact(target)} already holds data ({what}); pass --force "
                               "to copy into it (rows already there are kept)")
        try:
            copied = {table: _copy(src, dst, table, ctx.args.batch)
                      for table in copying.TABLES}
        except Conflict as e:
            raise CommandError(f"{e} (what was copied before stays)") from None
        found = copying.row_counts(src)
    finally:
        src.close()
        dst.close()
    ctx.console.json({
        "from": redact(source), "to": redact(target),
        "copied": copied,
        "already_there": {table: found[table] - copied[table] for table in copied
                          if table != "watermarks"},
    }, indent=2)


def _open(location: str) -> Any:
    try:
        return store.open_database(location)
    except StorageError as e:
        raise CommandError(f"{redact(location)}: {e}") from None


def _copy(src: Any, dst: Any, table: str, batch: int) -> int:
    copied, offset = 0, 0
    while True:
        rows = copying.read_rows(src, table, offset, batch)
        if not rows:
            return copied
        copied += copying.write_rows(dst, table, rows)
        offset = int(rows[-1][0]) if table == "messages" else offset + len(rows)
