"""el's drop-in source, sources.d/elipc.sh, found and run the way el's dispatcher does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.clirun import process_env, run_cli
from tests.helpers import SUBPROCESS_TIMEOUT_S, temp_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_source(name: str, folders: list[str]) -> str | None:
    """el's lookup: the first executable `<name>.sh` in `folders`, in order."""
    for folder in folders:
        path = os.path.join(folder, f"{name}.sh")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class ElSourceTests(SynchronousTestCase):
    """`event-listen.sh elipc CHANNEL AGENT` blocks for a message and prints pure JSON."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")
        user_folder = os.path.join(self.dir, "sources.d")  # el's user folder, empty here
        os.makedirs(user_folder)
        self.source = find_source("elipc", [user_folder, os.path.join(REPO, "sources.d")])
        self.env = process_env(self.db)
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env["PATH"]

    def run_source(self, *args: str) -> subprocess.Popen[str]:
        assert self.source is not None
        process = subprocess.Popen([self.source, *args], env=self.env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def test_found_by_el(self) -> None:
        """el finds it: an executable file named elipc.sh in a sources.d folder."""
        self.assertEqual(self.source, os.path.join(REPO, "sources.d", "elipc.sh"))

    def test_blocks_then_prints_pure_json(self) -> None:
        """It waits for a message, prints it as JSON on stdout, nothing on stderr, and the
        watermark keeps what came after for the next run."""
        source = self.run_source("ops", "herald")
        time.sleep(0.3)
        self.assertIsNone(source.poll(), "it returned before any message")
        for text in ("one", "two"):
            self.assertEqual(run_cli(self.db, "send", "ops", "a", text).code, 0)
        out, err = source.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual((source.returncode, err), (0, ""))
        seen = [m["content"] for m in json.loads(out)]
        if len(seen) == 1:  # woken by the first send: the second waits for the next run
            again = self.run_source("ops", "herald")
            out, err = again.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            self.assertEqual(err, "")
            seen += [m["content"] for m in json.loads(out)]
        self.assertEqual(seen, ["one", "two"])

    def test_usage(self) -> None:
        """Without a channel and an agent it says how to call it and exits 2."""
        source = self.run_source("ops")
        _, err = source.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        self.assertEqual(source.returncode, 2)
        self.assertIn("usage: elipc.sh CHANNEL AGENT", err)
