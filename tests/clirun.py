"""Running the `elipc` command line in the test's own process: `elipc.cli.main` with its own
environment, streams, working directory and (optionally) clock, in milliseconds instead of a
process start-up each."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from elipc.cli import main
from elipc.cli.system import Clock
from tests.helpers import cli_env


@dataclass(frozen=True)
class CliResult:
    """What one run of `main` did: its exit status and what it wrote."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


class FakeClock:
    """A clock whose sleeps take no real time: they move both of its times forward.

    Its monotonic time stands still between sleeps, so code that waits but sleeps some other
    way would spin forever; after `patience` readings with no sleep in between it fails.
    """

    def __init__(self, now: float = 1_700_000_000.0, patience: int = 50) -> None:
        self.now = now
        self.elapsed = 0.0
        self.slept = 0.0
        self.patience = patience
        self.readings = 0

    def time(self) -> float:
        """The fake wall time."""
        return self.now + self.elapsed

    def monotonic(self) -> float:
        """The fake monotonic time."""
        self.readings += 1
        if self.readings > self.patience:
            raise AssertionError("monotonic time read again and again, never slept on")
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        """Advance at once by `seconds`."""
        self.elapsed += seconds
        self.slept += seconds
        self.readings = 0


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    """Run the body in `path`, then return to where we were."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def process_streams_untouched() -> Iterator[None]:
    """Fail if the body writes to the process's stdout or stderr (main must use its own)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield
    if out.getvalue() or err.getvalue():
        raise AssertionError(f"wrote to the process's streams: {out.getvalue()!r} "
                             f"{err.getvalue()!r}")


class CommittingClock(FakeClock):
    """A fake clock on which another writer commits once `at` seconds have been slept; it
    fails a run that sleeps past `limit` seconds instead of letting it hang."""

    def __init__(self, at: float = float("inf"), commit: Callable[[], None] = lambda: None,
                 limit: float = float("inf")) -> None:
        super().__init__()
        self.at, self.commit, self.limit = at, commit, limit

    def sleep(self, seconds: float) -> None:
        """Advance; commit when `at` is passed; fail past `limit`."""
        super().sleep(seconds)
        if self.at <= self.slept < self.at + seconds:
            self.commit()
        if self.slept > self.limit:
            raise AssertionError(f"slept past {self.limit:g} s of fake time")


class TerminalOutput(io.StringIO):
    """A captured stdout that says it is a terminal, as a person's is."""

    def isatty(self) -> bool:
        """Yes: a person is reading."""
        return True


def run_cli(
    db_path: str | None, *args: str, cwd: str | None = None, stdin: str | bytes | None = None,
    clock: Clock | None = None, transport: object | None = None, terminal: bool = True,
    **env: str,
) -> CliResult:
    """Run `elipc ARGS` in this process against `db_path`, with IPC_* from `env` only; stdout
    is a terminal's unless `terminal` is False (a pipe's, el's)."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else (stdin or b"")
    stdout = TerminalOutput() if terminal else io.StringIO()
    stderr = io.StringIO()
    with working_directory(cwd or os.getcwd()), process_streams_untouched():
        code = main(list(args), environ=cli_env(db_path, **env), stdin=io.BytesIO(data),
                    stdout=stdout, stderr=stderr, clock=clock, transport=transport)
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def process_env(db_path: str | None, **extra: str) -> dict[str, str]:
    """The environment for a real `elipc` process: `cli_env`, with PYTHONPATH made absolute
    so the process imports this checkout whatever its working directory."""
    env = cli_env(db_path, **extra)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(entry) for entry in env["PYTHONPATH"].split(os.pathsep) if entry)
    return env


def elipc_process(*args: str) -> list[str]:
    """The argv of a real `python -m elipc ARGS` process."""
    return [sys.executable, "-m", "elipc", *args]
