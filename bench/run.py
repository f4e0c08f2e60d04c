"""elipc's benchmark: starts the real `twist elipc` and CLI on 127.0.0.1 and prints a table.

    make bench            (or: .venv/bin/python bench/run.py [--quick])

Every figure comes from real processes on a free port over loopback; databases live in a
temporary folder removed at the end; servers are stopped by pid. The load generator is a
small asyncio HTTP/1.1 keep-alive client (stdlib only) so it costs the server's CPU little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

BIN = os.path.dirname(sys.executable)
# Processes measured as users run them: with their bytecode cached (an environment that
# forbids writing it would time the compiler instead).
# Load tests are not well-behaved agents: the servers run without rate limits.
BASE_ENV = {**{k: v for k, v in os.environ.items()
               if not k.startswith("IPC_") and k != "PYTHONDONTWRITEBYTECODE"},
            "IPC_RATE_LIMIT": "0"}
START_TIMEOUT_S = 30


# -- a minimal HTTP/1.1 client ---------------------------------------------------------------


class Connection:
    """One keep-alive connection; requests on it are sequential."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/json\r\n\r\n").encode()
        self.writer.write(head + data)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A real `twist elipc` process on a free port."""

    def __init__(self, db_path: str, log_path: str, **environ: str) -> None:
        self.port = free_port()
        self.log = open(log_path, "ab")
        env = {**BASE_ENV, **environ}
        if db_path.startswith("postgresql://"):
            env["IPC_DB_URL"] = db_path
        else:
            env["IPC_DB_PATH"] = db_path
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "twist"), "--log-format=text", "elipc", "--port",
             str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("server did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- the measurements --------------------------------------------------------------------------


def sequential_sends(port: int, count: int) -> dict[str, str]:
    # A blocking socket, so the figure is the server's and not the client's event loop.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    started = time.perf_counter()
    for i in range(count):
        body = b'{"channel": "seq", "sender": "b", "content": "m%d"}' % i
        sock.sendall(b"POST /send HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        while b"\r\n\r\n" not in pending:
            pending += _recv(sock)
        head, _, pending = pending.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(pending) < length:
            pending += _recv(sock)
        pending = pending[length:]
    elapsed = time.perf_counter() - started
    sock.close()
    return {"sequential sends, 1 keep-alive connection": f"{count / elapsed:,.0f} msgs/s"}


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("server closed the connection")
    return chunk


async def concurrent_sends(port: int, connections: int, each: int) -> dict[str, str]:
    latencies: list[float] = []

    async def worker(n: int) -> None:
        conn = await Connection.open(port)
        for i in range(each):
            t = time.perf_counter()
            status, _ = await conn.request(
                "POST", "/send", {"channel": f"conc{n % 4}", "sender": "b", "content": f"m{i}"})
            latencies.append(time.perf_counter() - t)
            assert status == 200
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        f"sends over {connections} connections": f"{len(latencies) / elapsed:,.0f} msgs/s",
        "  latency p50 / p99 / max": " / ".join(
            ms(x) for x in (percentile(latencies, 50), percentile(latencies, 99),
                            max(latencies))),
    }


async def send_rate(port: int | list[int], connections: int, each: int) -> float:
    """Sends per second over `connections` keep-alive connections (spread over the ports,
    when given several servers)."""
    ports = port if isinstance(port, list) else [port]

    async def worker(n: int) -> None:
        conn = await Connection.open(ports[n % len(ports)])
        for i in range(each):
            status, _ = await conn.request(
                "POST", "/send", {"channel": f"ab{n % 4}", "sender": "b", "content": f"m{i}"})
            assert status == 200
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    return connections * each / (time.perf_counter() - started)


def metrics_cost(work: str, rounds: int, each: int) -> dict[str, str]:
    """Interleaved A/B: send throughput at 16 connections with metrics off (A) and on (B),
    alternating rounds on two servers so drift in the machine's load hits both alike."""
    servers = {label: Server(os.path.join(work, f"metrics-{label}.db"),
                             os.path.join(work, f"metrics-{label}.log"), IPC_METRICS=flag)
               for label, flag in (("off", "0"), ("on", "1"))}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for label in order:
                rates[label].append(asyncio.run(send_rate(servers[label].port, 16, each)))
    finally:
        for server in servers.values():
            server.stop()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {f"metrics cost at 16 connections, A/B x{rounds}: off / on (median)":
            f"{off:,.0f} / {on:,.0f} msgs/s ({(on - off) / off:+.1%})"}


async def wake_times(send_port: int, wait_port: int, rounds: int) -> list[float]:
    """Send on one server, long-poll on another (or the same): seconds from each send to
    the waiter's answer."""
    waiter, sender = await Connection.open(wait_port), await Connection.open(send_port)
    latencies = []
    for _ in range(rounds):
        pending = asyncio.ensure_future(
            waiter.request("GET", "/messages?channel=wake&agent=w&wait=true&timeout=10"))
        await asyncio.sleep(0.002)  # let the long-poll reach the server and park
        started = time.perf_counter()
        await sender.request("POST", "/send", {"channel": "wake", "sender": "s", "content": "x"})
        _, messages = await pending
        latencies.append(time.perf_counter() - started)
        assert messages, "woken with nothing"
    waiter.close()
    sender.close()
    return latencies


async def wake_latency(port: int, rounds: int) -> dict[str, str]:
    latencies = await wake_times(port, port, rounds)
    return {"long-poll wake (HTTP send to HTTP waiter) p50 / p99":
            f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))}"}


async def park(port: int, count: int, channel: Callable[[int], str]) -> tuple[list, list]:
    """Open `count` connections each with a pending long-poll; return (conns, futures)."""
    conns = []
    for start in range(0, count, 250):
        conns += await asyncio.gather(*(Connection.open(port)
                                        for _ in range(min(250, count - start))))
    futures = [asyncio.ensure_future(conn.request(
        "GET", f"/messages?channel={channel(i)}&agent=p&wait=true&timeout=120"))
        for i, conn in enumerate(conns)]
    return conns, futures


async def health_under_load(server: Server, pending: int, rounds: int) -> dict[str, str]:
    conns, futures = await park(server.port, pending, lambda i: f"idle{i}")
    await asyncio.sleep(1.0)
    probe = await Connection.open(server.port)
    latencies = []
    for _ in range(rounds):
        t = time.perf_counter()
        await probe.request("GET", "/health")
        latencies.append(time.perf_counter() - t)
    probe.close()
    for conn in conns:
        conn.close()
    await asyncio.gather(*futures, return_exceptions=True)
    return {f"/health with {pending:,} long-polls pending, p50 / p99":
            f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))}"}


async def many_long_polls(server: Server, count: int) -> dict[str, str]:
    before = server.rss_mb()
    conns, futures = await park(server.port, count, lambda i: f"lp{i}")
    await asyncio.sleep(2.0)
    peak = server.rss_mb()
    senders = [await Connection.open(server.port) for _ in range(16)]
    sent_at: dict[int, float] = {}
    delivered: dict[int, float] = {}

    async def send(n: int) -> None:
        for i in range(n, count, len(senders)):
            sent_at[i] = time.perf_counter()
            await senders[n].request("POST", "/send",
                                     {"channel": f"lp{i}", "sender": "s", "content": "x"})

    async def collect(i: int) -> None:
        status, messages = await futures[i]
        if messages:
            delivered[i] = time.perf_counter()

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(send(n) for n in range(len(senders))),
                                              *(collect(i) for i in range(count))), 120)
    except asyncio.TimeoutError:
        pass  # reported below as fewer than `count` delivered
    total = time.perf_counter() - started
    latencies = [t - sent_at[i] for i, t in delivered.items()]
    on_time = sum(1 for x in latencies if x <= 2.0)
    for conn in conns + senders:
        conn.close()
    return {
        f"{count:,} concurrent long-polls: delivered within 2 s": f"{on_time:,} of {count:,}",
        "  send-to-delivery p50 / p99 / max": " / ".join(
            ms(percentile(latencies, p)) for p in (50, 99, 100)) if latencies else "-",
        f"  all {count:,} sent and delivered in": f"{total:.2f} s",
        f"  server memory growth holding {count:,}": f"{peak - before:.0f} MB",
    }


class StreamProtocol(asyncio.Protocol):
    """One GET /stream, as light as a client can be: it notes when its head came and when
    its first event did."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_event: float | None = None
        self.evented: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"GET {self.target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.seen += data
            if b"retry: 3000" in self.seen:
                assert b" 200 " in self.seen.split(b"\r\n", 1)[0], self.seen
                self.opened.set_result(None)
            return
        if self.first_event is None and b"data: " in data:
            self.first_event = time.perf_counter()
            self.evented.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_streams(port: int, targets: list[str]) -> list[StreamProtocol]:
    """Open a stream for each target, 500 at a time; each once its head has come."""
    loop = asyncio.get_running_loop()
    opened: list[StreamProtocol] = []
    for start in range(0, len(targets), 500):
        batch = [StreamProtocol(t) for t in targets[start:start + 500]]
        await asyncio.gather(*(loop.create_connection(lambda p=p: p, "127.0.0.1", port)
                               for p in batch))
        await asyncio.gather(*(p.opened for p in batch))
        opened += batch
    return opened


async def sse_fanout(server: Server, count: int) -> dict[str, str]:
    """`count` agents' streams on one channel, one send: each stream's first event, timed
    from just before the send (its commit comes before its answer)."""
    streams = await open_streams(server.port, [f"/stream?channel=fan&agent=f{i}"
                                               for i in range(count)])
    await asyncio.sleep(0.5)  # every stream parked on its waiter
    sender = await Connection.open(server.port)
    started = time.perf_counter()
    await sender.request("POST", "/send", {"channel": "fan", "sender": "s", "content": "x"})
    await asyncio.wait([p.evented for p in streams], timeout=30)
    delays = [p.first_event - started for p in streams if p.first_event is not None]
    sender.close()
    for stream in streams:
        stream.close()
    return {f"SSE fan-out: {count:,} streams, one send: delivered": f"{len(delays):,} of {count:,}",
            "  send to each stream's event p50 / p99 / max": " / ".join(
                ms(percentile(delays, p)) for p in (50, 99, 100)) if delays else "-"}


async def idle_streams(server: Server, count: int) -> dict[str, str]:
    """`count` open, idle streams: the server's memory growth holding them."""
    before = server.rss_mb()
    streams = await open_streams(server.port, [f"/stream?channel=idle{i}&agent=i{i}"
                                               for i in range(count)])
    await asyncio.sleep(2.0)
    grown = server.rss_mb() - before
    for stream in streams:
        stream.close()
    return {f"{count:,} idle streams: server memory growth": f"{grown:.0f} MB"}


async def fresh_reads(port: int, rounds: int) -> float:
    conn = await Connection.open(port)
    latencies = []
    for i in range(rounds):
        t = time.perf_counter()
        status, messages = await conn.request("GET", f"/messages?channel=small&agent=fresh{i}")
        latencies.append(time.perf_counter() - t)
        assert len(messages) == 10
    conn.close()
    return percentile(latencies, 50)


def preload(db_path: str, big: int) -> None:
    subprocess.run([os.path.join(BIN, "elipc"), "channels"], env={**BASE_ENV,
                   "IPC_DB_PATH": db_path}, check=True, capture_output=True)
    conn = sqlite3.connect(db_path)
    rows = [("big", "s", f"m{i}", 1.0) for i in range(big)] + \
           [("small", "s", f"m{i}", 2.0) for i in range(10)]
    conn.executemany(
        "INSERT INTO messages (channel, sender, content, created_at) VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


async def cli_to_waiter(server: Server, db_path: str, rounds: int) -> dict[str, str]:
    waiter = await Connection.open(server.port)
    latencies = []
    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    for i in range(rounds):
        pending = asyncio.ensure_future(
            waiter.request("GET", "/messages?channel=hybrid&agent=w&wait=true"))
        await asyncio.sleep(0.05)
        proc = await asyncio.create_subprocess_exec(
            os.path.join(BIN, "elipc"), "send", "hybrid", "cli", "x", env=env,
            stdout=asyncio.subprocess.DEVNULL)
        await proc.wait()
        exited = time.perf_counter()
        status, messages = await pending
        latencies.append(time.perf_counter() - exited)
        assert messages
    waiter.close()
    return {"CLI write to HTTP waiter, after the CLI exits, p50 / p99":
            f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))}"}


def cli_wait_wake(db_path: str, rounds: int) -> dict[str, str]:
    """`elipc read --wait` in one process, woken by `elipc send` in another."""
    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    elipc = os.path.join(BIN, "elipc")
    latencies = []
    for _ in range(rounds):
        reader = subprocess.Popen([elipc, "read", "wake", "r", "--wait", "--timeout", "30"],
                                  env=env, stdout=subprocess.PIPE)
        time.sleep(0.15)  # the reader is parked by now
        subprocess.run([elipc, "send", "wake", "w", "x"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        sent = time.perf_counter()
        reader.stdout.readline()  # its first line arrives once it has read the message
        latencies.append(time.perf_counter() - sent)
        reader.wait(timeout=30)
    return {"CLI read --wait woken by another CLI send, after it exits, p50 / max":
            f"{ms(percentile(latencies, 50))} / {ms(max(latencies))}"}


def follow_latency(db_path: str, rounds: int, server: "Server | None" = None) -> dict[str, str]:
    """`elipc follow`: from another connection's commit to the message's line on stdout; with
    `server`, a follower of that server, from the start of a POST /send to the line."""
    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    if server is not None:
        env["IPC_SERVER_URL"] = f"http://127.0.0.1:{server.port}"
    subprocess.run([os.path.join(BIN, "elipc"), "channels"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    follower = subprocess.Popen([os.path.join(BIN, "elipc"), "follow", "followed", "--agent",
                                 "r"], env=env, stdout=subprocess.PIPE)
    conn = sqlite3.connect(db_path, isolation_level=None)
    latencies, pacing = [], random.Random(7)
    try:
        time.sleep(0.5)  # the follower is waiting by now
        for i in range(rounds):
            started = time.perf_counter()
            if server is None:
                conn.execute("INSERT INTO messages (channel, sender, content, created_at) "
                             "VALUES ('followed', 'w', ?, ?)", (f"m{i}", time.time()))
            else:
                post_json(server.port, "/send", {"channel": "followed", "sender": "w",
                                                 "content": f"m{i}"})
            follower.stdout.readline()
            latencies.append(time.perf_counter() - started)
            time.sleep(pacing.uniform(0.005, 0.05))  # irregular, as agents send
    finally:
        conn.close()
        follower.kill()  # by its pid, through its Popen
        follower.wait(timeout=30)
    label = ("CLI follow --server: a POST /send (included) to its line, p50 / p99" if server
             else "CLI follow: another process's commit to its line, p50 / p99")
    return {label: f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))}"}


def post_json(port: int, path: str, body: dict[str, object]) -> None:
    """One blocking POST on a fresh loopback connection, its answer read and checked."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status}")
    finally:
        connection.close()


async def mcp_latency(db_path: str, rounds: int) -> dict[str, str]:
    """`elipc mcp` through the MCP SDK's stdio client: a send's round trip, and a pending
    `wait` woken by another process's commit (the bench's own sqlite3 connection)."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    params = StdioServerParameters(command=os.path.join(BIN, "elipc"),
                                   args=["mcp", "--agent", "r"], env=env)
    sends, wakes = [], []
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for _ in range(rounds):
                    started = time.perf_counter()
                    await session.call_tool("send", {"channel": "bench", "content": "x"})
                    sends.append(time.perf_counter() - started)
                await session.call_tool("read", {"channel": "bench"})
                conn = sqlite3.connect(db_path, isolation_level=None)
                try:
                    for i in range(max(10, rounds // 4)):
                        waiting = asyncio.ensure_future(
                            session.call_tool("wait", {"channel": "woken", "timeout": 30}))
                        await asyncio.sleep(0.05)  # parked by now
                        conn.execute("INSERT INTO messages (channel, sender, content, "
                                     "created_at) VALUES ('woken', 'w', ?, ?)",
                                     (f"m{i}", time.time()))
                        committed = time.perf_counter()
                        await waiting
                        wakes.append(time.perf_counter() - committed)
                finally:
                    conn.close()
    return {"MCP tools/call send round trip, p50 / p99":
            f"{ms(percentile(sends, 50))} / {ms(percentile(sends, 99))}",
            "MCP wait woken by another process's commit, p50 / p99":
            f"{ms(percentile(wakes, 50))} / {ms(percentile(wakes, 99))}"}


def cli_median(argv: list[str], env: dict[str, str], rounds: int) -> float:
    """The median wall time of `elipc ARGV` as a whole process."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([os.path.join(BIN, "elipc"), *argv], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cli_startup(db_path: str, rounds: int) -> dict[str, str]:
    env = {**BASE_ENV, "IPC_DB_PATH": db_path}
    results = {}
    for name, argv in (("send", ["send", "cli", "a", "hello"]), ("read", ["read", "cli", "r"])):
        results[f"CLI `elipc {name}` (local, no server), median"] = ms(
            cli_median(argv, env, rounds))
    return results


def cli_remote_send(server: "Server", local_db: str, rounds: int) -> dict[str, str]:
    """`elipc --server URL send` against local `elipc send`, interleaved, as whole processes."""
    env = dict(BASE_ENV)
    local_env = {**env, "IPC_DB_PATH": local_db}
    remote_env = {**env, "IPC_SERVER_URL": f"http://127.0.0.1:{server.port}"}
    argv = ["send", "remote", "a", "hello"]
    cli_median(argv, local_env, 1)  # warm-up: bytecode written, caches filled
    local, remote = [], []
    for _ in range(rounds):  # A B A B ...: a drifting machine hits both alike
        local.append(cli_median(argv, local_env, 1))
        remote.append(cli_median(argv, remote_env, 1))
    a, b = statistics.median(local), statistics.median(remote)
    return {"CLI `elipc send` remote (--server) / local, median": (
        f"{ms(b)} / {ms(a)} (x{b / a:.2f})")}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--only", choices=("postgresql",),
                        help="run one section: postgresql (SQLite beside PostgreSQL with one "
                             "and two servers)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    raise_fd_limit()
    work = tempfile.mkdtemp(prefix="elipc-bench-")
    rows: dict[str, str] = {}
    try:
        if args.only != "postgresql":
            rows.update(run_all(work, scale))
        from postgres import run_postgres  # bench/postgres.py, beside this file

        rows.update(run_postgres(work, scale))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


def print_table(rows: dict[str, str]) -> None:
    """The measures and their results, one a line, aligned."""
    width = max(len(k) for k in rows)
    print(f"{'measure'.ljust(width)}  result")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows.items():
        print(f"{name.ljust(width)}  {value}")


async def _now(rows: dict[str, str]) -> dict[str, str]:
    return rows


def run_all(work: str, scale: float) -> dict[str, str]:
    rows: dict[str, str] = {}
    n = lambda x: max(10, int(x * scale))  # noqa: E731

    def with_server(db: str, *steps: Callable[[Server], Awaitable[dict[str, str]]]) -> None:
        server = Server(os.path.join(work, db), os.path.join(work, db + ".log"))
        try:
            for step in steps:
                rows.update(asyncio.run(step(server)))
        finally:
            server.stop()

    rows.update(cli_startup(os.path.join(work, "cli.db"), n(30)))
    rows.update(cli_wait_wake(os.path.join(work, "cli.db"), n(20)))
    rows.update(follow_latency(os.path.join(work, "follow.db"), n(200)))
    rows.update(asyncio.run(mcp_latency(os.path.join(work, "mcp.db"), n(200))))
    with_server("sends.db",
                lambda s: _now(cli_remote_send(s, os.path.join(work, "cli.db"), n(30))),
                lambda s: _now(sequential_sends(s.port, n(5000))),
                lambda s: concurrent_sends(s.port, 16, n(1000)),
                lambda s: wake_latency(s.port, n(300)),
                lambda s: health_under_load(s, 1000, n(500)))
    with_server("follow-remote.db", lambda s: _now(follow_latency(
        os.path.join(work, "follow-remote.db"), n(200), s)))
    rows.update(metrics_cost(work, max(4, int(10 * scale)), n(300)))
    with_server("polls.db", lambda s: many_long_polls(s, n(10000)))
    with_server("fanout.db", lambda s: sse_fanout(s, n(1000)))
    with_server("streams.db", lambda s: idle_streams(s, n(10000)))
    empty, full = os.path.join(work, "empty.db"), os.path.join(work, "full.db")
    preload(empty, 0)
    preload(full, 100_000)
    figures = {}
    for label, db in (("empty", "empty.db"), ("full", "full.db")):
        server = Server(os.path.join(work, db), os.path.join(work, db + ".log"))
        try:
            figures[label] = asyncio.run(fresh_reads(server.port, n(500)))
        finally:
            server.stop()
    rows["fresh-agent read, p50: empty DB / 100,000 msgs elsewhere"] = (
        f"{ms(figures['empty'])} / {ms(figures['full'])} "
        f"(x{figures['full'] / figures['empty']:.2f})")
    hybrid = os.path.join(work, "hybrid.db")
    with_server("hybrid.db", lambda s: cli_to_waiter(s, hybrid, n(100)))
    return rows


if __name__ == "__main__":
    main()
