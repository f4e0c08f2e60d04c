"""The Claude Code plugin in this repository: its manifest, marketplace, hooks, MCP server,
monitor and skill hold together, and its scripts find the plugin's environment.

(`claude plugin validate .` is run by hand and its output kept in the closing note: the tests
do not depend on Claude Code being installed.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from elipc import __version__
from tests.clirun import process_env
from tests.helpers import temp_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 30


def load(path: str) -> Any:
    """A JSON file of the repository."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return json.load(f)


def plugin_path(relative: str) -> str:
    """A manifest path ("./x") as a path in the repository, refusing any that escapes."""
    assert relative.startswith("./") and ".." not in relative.split("/"), relative
    return os.path.join(REPO, relative[2:])


def commands(hooks: dict[str, Any], event: str) -> list[str]:
    """The command strings of one hook event."""
    return [h["command"] for group in hooks["hooks"][event] for h in group["hooks"]
            if h["type"] == "command"]


def script_of(command: str) -> str:
    """The file a hook's or monitor's command runs, in the repository."""
    match = re.match(r'"\$\{CLAUDE_PLUGIN_ROOT\}/([^"]+)"', command)
    assert match, command
    return os.path.join(REPO, match.group(1))


class ManifestTests(SynchronousTestCase):
    def setUp(self) -> None:
        """The plugin's manifest."""
        self.manifest = load(".claude-plugin/plugin.json")

    def test_manifest(self) -> None:
        """plugin.json: the name, the package's version (Claude Code's cache key), and every
        component path inside the plugin, starting with ./ and present."""
        self.assertEqual(self.manifest["name"], "elipc")
        self.assertEqual(self.manifest["version"], __version__)
        paths = [self.manifest["hooks"], self.manifest["mcpServers"],
                 self.manifest["experimental"]["monitors"], *self.manifest["skills"]]
        for relative in paths:
            self.assertTrue(os.path.exists(plugin_path(relative)), relative)
        self.assertEqual({os.path.dirname(p) for p in paths}, {"./claude"})  # kept together

    def test_marketplace(self) -> None:
        """marketplace.json lists this plugin from the repository's root."""
        market = load(".claude-plugin/marketplace.json")
        self.assertTrue(market["name"] and market["owner"]["name"])
        [entry] = market["plugins"]
        self.assertEqual((entry["name"], entry["source"]), (self.manifest["name"], "./"))
        self.assertTrue(entry["description"])

    def test_hooks(self) -> None:
        """SessionStart builds the environment; Stop asks `elipc inbox --hook stop`; both
        run executable files of the plugin, with timeouts."""
        hooks = load(self.manifest["hooks"][2:])
        self.assertEqual(set(hooks["hooks"]), {"SessionStart", "Stop"})
        [start] = commands(hooks, "SessionStart")
        self.assertEqual(script_of(start), os.path.join(REPO, "claude", "setup.sh"))
        [stop] = commands(hooks, "Stop")
        self.assertTrue(stop.endswith(" inbox --hook stop"), stop)
        for command in (start, stop):
            self.assertTrue(os.access(script_of(command), os.X_OK), command)
        for event in hooks["hooks"].values():
            for group in event:
                self.assertTrue(all(0 < h["timeout"] <= 300 for h in group["hooks"]))

    def test_mcp_server(self) -> None:
        """The MCP server is `elipc mcp`, bound to IPC_AGENT by the environment."""
        servers = load(self.manifest["mcpServers"][2:])["mcpServers"]
        self.assertEqual(servers, {"elipc": {"command": "${CLAUDE_PLUGIN_ROOT}/bin/elipc",
                                             "args": ["mcp"]}})

    def test_monitor(self) -> None:
        """One monitor, `elipc follow --if-configured`, started by the listen skill (never
        always-on: sessions following one agent would share its watermark)."""
        [monitor] = load(self.manifest["experimental"]["monitors"][2:])
        self.assertEqual(set(monitor), {"name", "command", "description", "when"})
        self.assertTrue(monitor["command"].endswith(" follow --if-configured"))
        self.assertTrue(os.access(script_of(monitor["command"]), os.X_OK))
        skill = monitor["when"].removeprefix("on-skill-invoke:")
        self.assertNotEqual(skill, monitor["when"])
        self.assertTrue(os.path.isfile(os.path.join(
            plugin_path(self.manifest["skills"][0]), skill, "SKILL.md")))

    def test_skill(self) -> None:
        """The listen skill's frontmatter names it, describes it, and says how to start the
        watch with arguments (the Monitor tool running elipc follow)."""
        path = os.path.join(plugin_path(self.manifest["skills"][0]), "listen", "SKILL.md")
        with open(path, encoding="utf-8") as f:
            _, front, body = f.read().split("---\n", 2)
        fields = dict(line.split(": ", 1) for line in front.strip().splitlines())
        self.assertEqual(fields["name"], "listen")
        self.assertTrue(fields["description"] and fields["argument-hint"])
        self.assertIn('"${CLAUDE_PLUGIN_ROOT}/bin/elipc" follow CHANNEL... --agent AGENT',
                      body)
        self.assertIn("$ARGUMENTS", body)


class ScriptTests(SynchronousTestCase):
    def setUp(self) -> None:
        """A data folder holding a stand-in for the plugin's environment: its bin/elipc is
        this checkout's CLI."""
        self.data = temp_dir(self)
        bin_dir = os.path.join(self.data, "venv", "bin")
        os.makedirs(bin_dir)
        self.elipc = os.path.join(bin_dir, "elipc")
        with open(self.elipc, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" -m elipc "$@"\n')
        os.chmod(self.elipc, 0o755)

    def run_script(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A plugin script, as Claude Code runs it."""
        environ = process_env(os.path.join(self.data, "ipc.db"), PYTHONPATH=REPO, **env)
        return subprocess.run(list(argv), env=environ, capture_output=True, text=True,
                              timeout=TIMEOUT_S)

    def test_bin_runs_the_environment_s_elipc(self) -> None:
        """bin/elipc runs the CLI of the environment in CLAUDE_PLUGIN_DATA."""
        done = self.run_script(os.path.join(REPO, "bin", "elipc"), "--version",
                               CLAUDE_PLUGIN_DATA=self.data)
        self.assertEqual((done.returncode, done.stdout), (0, f"elipc {__version__}\n"),
                         done.stderr)

    def test_data_folder_of_an_installed_copy(self) -> None:
        """Without CLAUDE_PLUGIN_DATA (the Bash tool), an installed copy finds the folder
        Claude Code derives: <plugins>/data/<plugin>-<market>, odd characters made '-'."""
        root = "/home/u/.claude/plugins/cache/my.market/elipc/0.1.0"
        script = f'root={root}; . "{REPO}/claude/locate.sh"; printf %s "$data"'
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"]}, timeout=TIMEOUT_S)
        self.assertEqual(done.stdout, "/home/u/.claude/plugins/data/elipc-my-market")
        script = f'root=/src/elipc; . "{REPO}/claude/locate.sh"; printf %s "$data"'
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"]}, timeout=TIMEOUT_S)
        self.assertEqual(done.stdout, "/src/elipc/.plugin-data")

    def test_setup_does_nothing_when_current(self) -> None:
        """With the environment built from this pyproject.toml, setup is quiet and quick."""
        shutil.copy(os.path.join(REPO, "pyproject.toml"), self.data)
        done = self.run_script(os.path.join(REPO, "claude", "setup.sh"),
                               CLAUDE_PLUGIN_DATA=self.data, ELIPC_PYTHON="/nonexistent")
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))

    def test_setup_needs_python_3_11(self) -> None:
        """When a build is due and the interpreter is too old (or missing), setup says so
        in one line and fails (a non-blocking error in Claude Code), leaving no stamp."""
        done = self.run_script(os.path.join(REPO, "claude", "setup.sh"),
                               CLAUDE_PLUGIN_DATA=self.data, ELIPC_PYTHON="/nonexistent")
        self.assertEqual(done.returncode, 1)
        self.assertIn("needs Python 3.11 or later", done.stderr)
        self.assertEqual(len(done.stderr.splitlines()), 1)
        self.assertFalse(os.path.exists(os.path.join(self.data, "pyproject.toml")))
