"""`elipc inbox` and its Claude Code Stop hook: counts that move nothing, a decision that
holds a finishing turn while messages wait, and never a loop."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.clirun import CliResult, run_cli
from tests.helpers import temp_dir
from tests.test_remote_cli import RemoteCase

HOOK_INPUT = {"session_id": "s1", "transcript_path": "/tmp/t.jsonl", "cwd": "/tmp",
              "hook_event_name": "Stop", "stop_hook_active": False}
CONFIGURED = {"IPC_AGENT": "alice", "IPC_CHANNELS": "review,ops"}


class InboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        """A database with two messages on review and one on ops."""
        self.db = os.path.join(temp_dir(self), "ipc.db")
        for channel, content in (("review", "one"), ("review", "two"), ("ops", "three")):
            self.assertEqual(run_cli(self.db, "send", channel, "bob", content).code, 0)

    def inbox(self, *args: str, stdin: str = "", **env: str) -> CliResult:
        """`elipc inbox ARGS` as el or a hook runs it: stdout a pipe."""
        return run_cli(self.db, "inbox", *args, stdin=stdin, terminal=False, **env)

    def hook(self, event: dict[str, object] | None = None, **env: str) -> CliResult:
        """`elipc inbox --hook stop` given Claude Code's hook input."""
        result = self.inbox("--hook", "stop", stdin=json.dumps(event or HOOK_INPUT), **env)
        self.assertEqual((result.code, result.err), (0, ""))
        return result

    def test_counts_move_nothing(self) -> None:
        """The report counts each channel's unread for the agent, and reading still gets
        every message afterwards."""
        result = self.inbox("review", "ops", "quiet", "--agent", "alice")
        self.assertEqual(result.json(), {"agent": "alice", "total": 3,
                                         "unread": {"review": 2, "ops": 1, "quiet": 0}})
        self.assertEqual(len(run_cli(self.db, "read", "review", "alice").json()), 2)
        after = self.inbox("review", "ops", "--agent", "alice").json()
        self.assertEqual(after["unread"], {"review": 0, "ops": 1})

    def test_settings_name_agent_and_channels(self) -> None:
        """IPC_AGENT and IPC_CHANNELS stand in for --agent and the channel list."""
        self.assertEqual(self.inbox(**CONFIGURED).json()["total"], 3)
        self.assertEqual(self.inbox("ops", **CONFIGURED).json()["unread"], {"ops": 1})

    def test_needs_agent_and_channels(self) -> None:
        """Without an agent or channels the plain command says what is missing."""
        for args, env, said in (((), {"IPC_CHANNELS": "review"}, "IPC_AGENT"),
                                (("--agent", "alice"), {}, "IPC_CHANNELS")):
            result = self.inbox(*args, **env)
            self.assertEqual(result.code, 1)
            self.assertIn(said, result.err)
            self.assertEqual(len(result.err.splitlines()), 1)

    def test_hook_blocks_while_messages_wait(self) -> None:
        """As the Stop hook, with messages waiting: a block decision naming them."""
        decision = self.hook(**CONFIGURED).json()
        self.assertEqual(decision["decision"], "block")
        self.assertIn("3 unread elipc messages for alice (2 on review, 1 on ops)",
                      decision["reason"])
        self.assertIn("elipc read review alice", decision["reason"])

    def test_hook_lets_an_empty_inbox_stop(self) -> None:
        """Once everything is read the hook prints nothing: the turn may end."""
        for channel in ("review", "ops"):
            run_cli(self.db, "read", channel, "alice")
        self.assertEqual(self.hook(**CONFIGURED).out, "")

    def test_hook_never_loops(self) -> None:
        """A stop that this hook already continued once (stop_hook_active) is let through,
        messages or not."""
        self.assertEqual(self.hook({**HOOK_INPUT, "stop_hook_active": True}, **CONFIGURED).out,
                         "")

    def test_hook_is_off_until_configured(self) -> None:
        """Installed with the plugin but with no agent or channels set, the hook does
        nothing and says nothing."""
        self.assertEqual(self.hook().out, "")
        self.assertEqual(self.hook(IPC_AGENT="alice").out, "")
        self.assertEqual(self.hook(IPC_CHANNELS="review").out, "")

    def test_hook_refuses_bad_input(self) -> None:
        """Input that is not a JSON object is one line on stderr and exit 1 (a non-blocking
        error to Claude Code: a broken hook never traps a session)."""
        for stdin in ("not json", "[1, 2]"):
            result = self.inbox("--hook", "stop", stdin=stdin, **CONFIGURED)
            self.assertEqual((result.code, result.out), (1, ""))
            self.assertEqual(len(result.err.splitlines()), 1)

    def test_unknown_hook(self) -> None:
        """Only the hooks inbox knows are accepted (a usage error otherwise)."""
        self.assertEqual(self.inbox("--hook", "start", **CONFIGURED).code, 2)


class RemoteInboxTests(RemoteCase):
    def test_counts_through_a_server(self) -> None:
        """Remotely the counts come from the server and match the local ones; in secure mode
        they are signed like a read, so only the agent's key gets them."""
        for content in ("one", "two"):
            self.local("send", "review", "bob", content)
        local = self.local("inbox", "review", "--agent", "alice").out
        self.assertEqual(self.remote("inbox", "review", "--agent", "alice").out, local)
        key = self.registered("alice")
        self.assertIn("signed read required", self.refused("inbox", "review", "--agent",
                                                           "alice"))
        counted = json.loads(self.remote("inbox", "review", "--agent", "alice", "--key",
                                         key).out)
        self.assertEqual(counted["unread"], {"review": 2})
