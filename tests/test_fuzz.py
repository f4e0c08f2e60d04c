"""schemathesis holds a live `twist elipc` to its own OpenAPI description, in open mode and in
secure mode: every default check, a fixed seed, a bounded budget, long-polls pinned short.

The server runs with IPC_MAX_WAIT=1 (its description then says a long-poll lasts at most a
second, so the fuzzer cannot hold one for five minutes) and a 4 KiB content limit (so the
fuzzer reaches it). tests/schemathesis.toml says what the checks are told.
"""

from __future__ import annotations

import os
import subprocess

from tests.clirun import run_cli
from tests.test_e2e import BIN, ServerCase

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis.toml")
SEED = "20261128"
EXAMPLES = "50"
FUZZ_TIMEOUT_S = 300


class FuzzCase(ServerCase):
    """A live server with short long-polls, fuzzed by schemathesis through its description."""

    def fuzz(self) -> None:
        """Run schemathesis against the server; fail with its report if it finds anything."""
        self.twist(IPC_MAX_WAIT="1", IPC_MAX_CONTENT_BYTES="4096")
        done = subprocess.run(
            [os.path.join(BIN, "schemathesis"), "--config-file", CONFIG, "run",
             f"{self.base}/openapi.json", "--seed", SEED, "--max-examples", EXAMPLES,
             "--request-timeout", "10", "--no-color", "--output-sanitize", "false",
             # An event stream never ends by itself, so it cannot be fuzzed request by
             # request: tests/test_stream.py holds it to its description instead.
             "--exclude-path", "/stream"],
            capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S, cwd=self.dir)
        report = done.stdout[-6000:] + done.stderr[-2000:]
        self.assertEqual(done.returncode, 0, report)
        self.assertIn("No issues found", done.stdout, report)


class OpenModeFuzzTests(FuzzCase):
    def test_open_mode(self) -> None:
        """No operator: every send and read is allowed; nothing the fuzzer sends breaks a
        check."""
        self.fuzz()


class SecureModeFuzzTests(FuzzCase):
    def test_secure_mode(self) -> None:
        """An operator and an agent registered: unsigned requests meet 401s and 403s, all
        described."""
        for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "agent"),
                     ("register", "agent", "--pubkey", "agent.pub", "--as", "op", "--key",
                      "op.key")):
            self.assertEqual(run_cli(self.db, *args, cwd=self.dir).code, 0)
        self.fuzz()
