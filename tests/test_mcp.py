"""`elipc mcp`: the real server in its own process, driven by the MCP SDK's real stdio client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import mock

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from twisted.trial.unittest import SynchronousTestCase

from tests.clirun import process_env, run_cli
from tests.helpers import temp_dir
from tests.test_e2e import ServerCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {"send", "read", "wait", "ack", "history", "channels", "agents"}
TEST_TIMEOUT_S = 20.0

Body = Callable[[ClientSession], Awaitable[None]]


class McpCase(SynchronousTestCase):
    """A temporary database and a way to talk to `elipc mcp` processes on it."""

    server_url = ""
    environ: dict[str, str] = {}

    def setUp(self) -> None:
        """A fresh directory and database for each test."""
        self.dir = temp_dir(self)
        self.db = os.path.join(self.dir, "ipc.db")

    @contextlib.asynccontextmanager
    async def server(self, *args: str) -> AsyncIterator[ClientSession]:
        """An initialized client session with `elipc mcp ARGS` on this test's database (or
        on the server at `self.server_url`, when a test sets one)."""
        extra = {"IPC_SERVER_URL": self.server_url} if self.server_url else {}
        extra.update(self.environ)
        env = process_env(self.db, PYTHONPATH=REPO, **extra)
        params = StdioServerParameters(command=sys.executable, cwd=self.dir, env=env,
                                       args=["-m", "elipc", "mcp", *args])
        with open(os.path.join(self.dir, "server.err"), "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    yield session

    def drive(self, body: Body, *args: str) -> None:
        """Run `body` against `elipc mcp ARGS` (default: for agent herald; only when
        self.environ names the agent may ARGS be empty), failing instead of hanging."""
        if not args and "IPC_AGENT" not in self.environ:
            args = ("--agent", "herald")

        async def run() -> None:
            async with self.server(*args) as session:
                await body(session)
        asyncio.run(asyncio.wait_for(run(), TEST_TIMEOUT_S))

    def cli_read(self, channel: str = "ch", agent: str = "herald") -> list[Any]:
        """What `elipc read CHANNEL AGENT` prints now (moving that agent's watermark)."""
        result = run_cli(self.db, "read", channel, agent)
        self.assertEqual(result.code, 0, result.err)
        messages: list[Any] = result.json()
        return messages


def answer(result: Any) -> Any:
    """A successful tool call's structured answer."""
    assert not result.is_error, result.content
    return result.structured_content


class ToolListTests(McpCase):
    def test_tools(self) -> None:
        """The server offers exactly the seven tools, none taking a sender or agent."""
        async def body(session: ClientSession) -> None:
            tools = (await session.list_tools()).tools
            self.assertEqual({t.name for t in tools}, TOOLS)
            for tool in tools:
                properties = set(tool.input_schema.get("properties", {}))
                self.assertFalse(properties & {"sender", "agent", "from", "as"}, tool.name)
                self.assertTrue(tool.description)
        self.drive(body)

    def test_cli_without_mcp(self) -> None:
        """The CLI's other commands never import the mcp SDK."""
        code = ("import sys, elipc.cli, elipc.cli.commands, elipc.cli.remote; "
                "sys.exit(any(m.split('.')[0] == 'mcp' for m in sys.modules))")
        env = process_env(self.db, PYTHONPATH=REPO)
        self.assertEqual(subprocess.run([sys.executable, "-c", code], env=env,
                                        timeout=TEST_TIMEOUT_S).returncode, 0)

    def test_missing_extra(self) -> None:
        """Without the mcp extra the command fails with one line saying how to install it."""
        gone = {name: None for name in list(sys.modules) if name.split(".")[0] == "mcp"}
        with mock.patch.dict(sys.modules, {"mcp": None, **gone}):
            result = run_cli(self.db, "mcp", "--agent", "herald")
        self.assertEqual(result.code, 1)
        self.assertEqual(result.err.strip().splitlines(),
                         ["elipc: elipc mcp needs the mcp extra: pip install 'elipc[mcp]'"])


class ListingTests(SynchronousTestCase):
    def test_pages_by_name(self) -> None:
        """channels and agents answer pages in name order, under the entry and size limits,
        with `more` until the last page."""
        from elipc.cli import mailbox

        entries = [{"channel": f"c{i:03}", "count": i} for i in range(5)]
        with mock.patch.multiple(mailbox, MAX_LIST_ENTRIES=2):
            first = mailbox.listing("channels", "channel", entries[::-1], "")
            self.assertEqual([e["channel"] for e in first["channels"]], ["c000", "c001"])
            self.assertTrue(first["more"])
            last = mailbox.listing("channels", "channel", entries, "c002")
            self.assertEqual([e["channel"] for e in last["channels"]], ["c003", "c004"])
            self.assertFalse(last["more"])
        big = [{"name": f"a{i}", "public_key": "k" * 25_000} for i in range(4)]
        page = mailbox.listing("agents", "name", big, "")
        self.assertEqual(len(page["agents"]), 2)  # a third would pass MAX_ANSWER_CHARS
        self.assertTrue(page["more"])
        alone = mailbox.listing("agents", "name", [{"name": "x", "k": "k" * 99_000}], "")
        self.assertEqual(len(alone["agents"]), 1)  # one entry is always given


class MessageTests(McpCase):
    def test_send_then_read(self) -> None:
        """send stores a message from the agent; read returns it once and moves the watermark,
        so the CLI's read for the same agent sees nothing more."""
        async def body(session: ClientSession) -> None:
            sent = answer(await session.call_tool("send", {"channel": "ch", "content": "hi"}))
            self.assertEqual(sent["channel"], "ch")
            got = answer(await session.call_tool("read", {"channel": "ch"}))
            self.assertEqual([(m["id"], m["sender"], m["content"]) for m in got["messages"]],
                             [(sent["id"], "herald", "hi")])
            self.assertFalse(got["more"])
            self.assertEqual(self.cli_read(), [])
            again = answer(await session.call_tool("read", {"channel": "ch"}))
            self.assertEqual(again["messages"], [])
        self.drive(body)

    def test_read_pages(self) -> None:
        """read returns at most `limit` messages and says more are unread."""
        for n in range(3):
            run_cli(self.db, "send", "ch", "op", f"m{n}")

        async def body(session: ClientSession) -> None:
            got = answer(await session.call_tool("read", {"channel": "ch", "limit": 2}))
            self.assertEqual([m["content"] for m in got["messages"]], ["m0", "m1"])
            self.assertTrue(got["more"])
            history = answer(await session.call_tool("history", {"channel": "ch"}))
            self.assertEqual(len(history["messages"]), 3)
        self.drive(body)
        self.assertEqual([m["content"] for m in self.cli_read()], ["m2"])


class WaitTests(McpCase):
    def test_returns_at_once(self) -> None:
        """wait returns at once, with the message, when something is unread."""
        run_cli(self.db, "send", "ch", "op", "ready")

        async def body(session: ClientSession) -> None:
            got = answer(await session.call_tool("wait", {"channel": "ch", "timeout": 300},
                                                 read_timeout_seconds=5))
            self.assertEqual([m["content"] for m in got["messages"]], ["ready"])
        self.drive(body)

    def test_timeout(self) -> None:
        """wait with timeout 1 answers no messages (not an error), with progress meanwhile."""
        progress: list[float] = []

        async def note(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async def body(session: ClientSession) -> None:
            result = await session.call_tool("wait", {"channel": "ch", "timeout": 1},
                                             progress_callback=note)
            self.assertEqual(answer(result)["messages"], [])
        self.drive(body)
        self.assertTrue(progress)

    def test_woken_by_another_process(self) -> None:
        """A pending wait is woken by a send from another connection to the database."""
        async def body(session: ClientSession) -> None:
            waiting = asyncio.create_task(session.call_tool("wait", {"channel": "ch"}))
            await asyncio.sleep(0.5)
            self.assertFalse(waiting.done())
            self.assertEqual(run_cli(self.db, "send", "ch", "op", "wake").code, 0)
            got = answer(await asyncio.wait_for(waiting, 5))
            self.assertEqual([m["content"] for m in got["messages"]], ["wake"])
        self.drive(body)
        self.assertEqual(self.cli_read(), [])

    def test_cancelled_moves_nothing(self) -> None:
        """A cancelled wait reads nothing: a message sent after it stays unread."""
        async def body(session: ClientSession) -> None:
            waiting = asyncio.create_task(session.call_tool("wait", {"channel": "ch"}))
            await asyncio.sleep(0.5)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0.3)  # the server hears of the cancel
            self.assertEqual(run_cli(self.db, "send", "ch", "op", "later").code, 0)
            await asyncio.sleep(0.3)  # long enough for a wait still running to take it
            channels = answer(await session.call_tool("channels", {}))
            self.assertEqual([c["channel"] for c in channels["channels"]], ["ch"])
            after = answer(await session.call_tool("channels", {"after": "ch"}))
            self.assertEqual(after, {"channels": [], "more": False})
        self.drive(body)
        self.assertEqual([m["content"] for m in self.cli_read()], ["later"])


class SecureTests(McpCase):
    def setUp(self) -> None:
        """A secure database: operator op, and agent herald registered with its key."""
        super().setUp()
        for args in (("seed", "op", "--out", "op"), ("keygen", "--out", "herald"),
                     ("register", "herald", "--pubkey", "herald.pub", "--as", "op",
                      "--key", "op.key")):
            result = run_cli(self.db, *args, cwd=self.dir)
            self.assertEqual(result.code, 0, result.err)

    def test_send_signs(self) -> None:
        """Bound by IPC_AGENT and IPC_KEY_FILE (as the plugin's .mcp.json binds it), send
        signs as the agent and the secure database accepts it."""
        self.environ = {"IPC_AGENT": "herald",
                        "IPC_KEY_FILE": os.path.join(self.dir, "herald.key")}

        async def body(session: ClientSession) -> None:
            answer(await session.call_tool("send", {"channel": "ch", "content": "signed"}))
            agents = answer(await session.call_tool("agents", {}))["agents"]
            self.assertEqual([a["name"] for a in agents], ["herald", "op"])
            rest = answer(await session.call_tool("agents", {"after": "herald"}))["agents"]
            self.assertEqual([a["name"] for a in rest], ["op"])
        self.drive(body)
        [message] = self.cli_read(agent="reader")
        self.assertEqual((message["sender"], message.get("signed")), ("herald", True))

    def test_send_without_key(self) -> None:
        """Without --key, send in secure mode is a tool error saying to start with --key."""
        async def body(session: ClientSession) -> None:
            result = await session.call_tool("send", {"channel": "ch", "content": "x"})
            self.assertTrue(result.is_error)
            self.assertIn("--key", result.content[0].text)  # type: ignore[union-attr]
        self.drive(body)
        self.assertEqual(self.cli_read(agent="reader"), [])


class RemoteTests(ServerCase, McpCase):
    """`elipc mcp` with a server URL works through the real `twist elipc`."""

    def test_send_read_wait_through_a_server(self) -> None:
        """Sends, reads (moving the server's watermark) and a timed-out wait, over HTTP."""
        self.twist()
        self.server_url = self.base

        async def body(session: ClientSession) -> None:
            sent = answer(await session.call_tool("send", {"channel": "ch", "content": "hi"}))
            self.assertEqual(sent, {"id": 1, "channel": "ch"})
            got = answer(await session.call_tool("read", {"channel": "ch"}))
            self.assertEqual([m["content"] for m in got["messages"]], ["hi"])
            waited = answer(await session.call_tool("wait", {"channel": "ch", "timeout": 1}))
            self.assertEqual(waited["messages"], [])
        self.drive(body)
        self.assertEqual(self.cli_read(), [])
