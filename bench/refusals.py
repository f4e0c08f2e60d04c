"""How long secure mode takes to refuse a send, for a registered name and an unknown one.

    .venv/bin/python bench/refusals.py [--pairs N]

In process, on a real SQLite file: each pair refuses one send from a registered sender and
one from an unknown sender (in random order), both carrying a random 64-byte signature, and
the table gives the median of each and of their difference. If the two differ, response
times tell an attacker which names exist.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elipc import identity, operations, store  # noqa: E402

try:
    from elipc.model import Signed
except ImportError:  # elipc before the model held it
    Signed = operations.Signed  # type: ignore[attr-defined,misc]


def refusal_us(conn: object, sender: str, policy: object) -> float:
    """Microseconds to refuse one signed send from `sender`."""
    now = time.time()
    signed = Signed(base64.b64encode(os.urandom(64)).decode(), int(now), identity.new_nonce())
    start = time.perf_counter_ns()
    try:
        operations.accept_message(conn, "c", sender, "hello", signed, now, policy)
    except operations.Rejected:
        pass
    else:
        raise AssertionError("a random signature was accepted")
    return (time.perf_counter_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="elipc-refusals-")
    try:
        conn = store.open_database(os.path.join(folder, "ipc.db"))
        store.add_operator(conn, "op", identity.generate_keypair()[1], time.time())
        store.register_agent(conn, "herald", "", identity.generate_keypair()[1], "op",
                             time.time())
        policy = operations.Policy(300.0, False)
        rng = random.Random(1)
        known, unknown, differences = [], [], []
        for _ in range(args.pairs):
            order = [("herald", known), ("nobody", unknown)]
            rng.shuffle(order)
            pair = {}
            for sender, times in order:
                pair[sender] = refusal_us(conn, sender, policy)
                times.append(pair[sender])
            differences.append(pair["nobody"] - pair["herald"])
        conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = {"refusal, registered sender, median": f"{statistics.median(known):.1f} us",
            "refusal, unknown sender, median": f"{statistics.median(unknown):.1f} us",
            "unknown - registered, median of pairs": f"{statistics.median(differences):+.1f} us"}
    width = max(map(len, rows))
    print(f"{'measure'.ljust(width)}  result ({args.pairs} interleaved pairs)")
    for name, value in rows.items():
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
