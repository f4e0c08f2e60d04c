"""Settings: environment variables, defaults, and the per-user database location."""

from __future__ import annotations

import os
import stat
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from elipc import config
from elipc.config import ConfigError, Settings, prepare_db_location
from tests.helpers import temp_dir


class SettingsTests(SynchronousTestCase):
    """Settings.load reads el-ipc's variables and keeps every default in one place."""

    def test_el_ipc_variables(self) -> None:
        """Each IPC_* variable el-ipc knew sets its setting."""
        s = Settings.load({
            "IPC_DB_PATH": "/x/ipc.db", "IPC_PORT": "1234", "IPC_API_KEY": "k",
            "IPC_AGENT_NAME": "Herald", "IPC_AGENT_DESC": "d", "IPC_AGENT_URL": "https://h",
        })
        self.assertEqual(
            (s.db_path, s.port, s.api_key, s.agent_name, s.agent_desc, s.agent_url),
            ("/x/ipc.db", 1234, "k", "Herald", "d", "https://h"),
        )
        self.assertFalse(s.db_path_is_default)

    def test_defaults(self) -> None:
        """Without variables: port 9876, bind 127.0.0.1, el-ipc's card name, url on the port."""
        s = Settings.load({"HOME": "/home/u"})
        self.assertEqual(s.port, 9876)
        self.assertEqual(s.listen, "tcp:9876:interface=127.0.0.1:backlog=1024")
        self.assertEqual(s.agent_name, "el-ipc agent")
        self.assertEqual(s.agent_url, "http://localhost:9876")
        self.assertEqual(s.max_content_bytes, 1024 * 1024)
        self.assertEqual(s.api_key, "")

    def test_default_db_path_is_per_user(self) -> None:
        """The database lives under XDG_STATE_HOME, else ~/.local/state, never in /tmp."""
        self.assertEqual(
            Settings.load({"XDG_STATE_HOME": "/s", "HOME": "/h"}).db_path, "/s/elipc/ipc.db"
        )
        s = Settings.load({"HOME": "/h"})
        self.assertEqual(s.db_path, "/h/.local/state/elipc/ipc.db")
        self.assertTrue(s.db_path_is_default)

    def test_overrides_win(self) -> None:
        """Options passed as overrides beat the environment; None means not given."""
        s = Settings.load({"IPC_DB_PATH": "/env.db", "IPC_PORT": "1"}, {"db": "/opt.db",
                                                                         "port": None})
        self.assertEqual((s.db_path, s.port), ("/opt.db", 1))

    def test_bad_numbers(self) -> None:
        """A port or size that is not a positive whole number is a ConfigError naming it."""
        for env in ({"IPC_PORT": "http"}, {"IPC_PORT": "-5"}, {"IPC_MAX_CONTENT_BYTES": "1.5"}):
            with self.assertRaises(ConfigError) as caught:
                Settings.load(env)
            self.assertIn(next(iter(env)), str(caught.exception))


class LocationTests(SynchronousTestCase):
    """prepare_db_location makes the per-user folder private and points el-ipc users home."""

    def setUp(self) -> None:
        self.root = temp_dir(self)
        self.settings = Settings.load({"XDG_STATE_HOME": self.root})

    def test_folder_is_private(self) -> None:
        """The default folder is created with mode 0700."""
        prepare_db_location(self.settings)
        folder = os.path.dirname(self.settings.db_path)
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)

    def test_legacy_notice(self) -> None:
        """With no new file but an el-ipc file in /tmp, the notice says how to keep using it."""
        legacy = os.path.join(self.root, "el-ipc.db")
        open(legacy, "w").close()
        with mock.patch.object(config, "LEGACY_DB_PATH", legacy):
            notice = prepare_db_location(self.settings)
        self.assertIn(f"IPC_DB_PATH={legacy}", notice or "")

    def test_no_notice_without_legacy_file_or_with_explicit_path(self) -> None:
        """No el-ipc file, or a path the user chose, means nothing to say."""
        with mock.patch.object(config, "LEGACY_DB_PATH", os.path.join(self.root, "none")):
            self.assertIsNone(prepare_db_location(self.settings))
        explicit = Settings.load({"IPC_DB_PATH": os.path.join(self.root, "x.db")})
        self.assertIsNone(prepare_db_location(explicit))


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _option_cell(setting: config.Setting) -> str:
    if not setting.option:
        return "(environment only)"
    return f"`--{setting.option}`" + ("" if "server" in setting.fronts or not setting.fronts
                                       else " (CLI)")


class SettingsTableTests(SynchronousTestCase):
    """The README's settings table is the settings table, row for row."""

    def readme_rows(self) -> list[list[str]]:
        with open(README) as f:
            text = f.read()
        table = text.split("## Settings", 1)[1].split("\n\n", 2)[1]
        rows = [[cell.strip() for cell in line.strip("|").split("|")]
                for line in table.splitlines()]
        return rows[2:]  # past the header and its rule

    def test_readme_matches_table(self) -> None:
        """Every setting with a variable has its row: variable, option, default, meaning."""
        expected = [[f"`{s.env}`", _option_cell(s), s.shown_default, s.help]
                    for s in config.TABLE if s.env]
        self.assertEqual(self.readme_rows(), expected)

    def test_every_setting_is_parsed_from_its_variable(self) -> None:
        """Each variable in the table reaches its setting, and a bad value names it."""
        for setting in config.TABLE:
            if setting.env is None or setting.parse is config.parse_text:
                continue
            bad = {config.parse_name: "a\x01b", config.parse_names: "ok,a\x01b",
                   config.parse_urls: "https://ok.example,file:///etc/passwd"}.get(
                setting.parse, "not-a-value")
            with self.assertRaises(ConfigError) as caught:
                Settings.load({setting.env: bad})
            self.assertIn(setting.env, str(caught.exception))

    def test_options_come_from_the_table(self) -> None:
        """The server's options and the CLI's global options are the table's."""
        from elipc.server.service import Options

        server = {row[0] for row in Options.optParameters} | {row[0] for row in Options.optFlags}
        self.assertEqual(server, {s.option for s in config.options_for("server")})
        self.assertEqual({s.option for s in config.options_for("cli")}, {"db", "server"})

    def test_channels_are_a_comma_separated_list(self) -> None:
        """IPC_CHANNELS: names between commas, blanks ignored; IPC_AGENT: one name."""
        settings = Settings.load({"IPC_CHANNELS": " review, ops,,", "IPC_AGENT": " alice "})
        self.assertEqual(settings.channels, ("review", "ops"))
        self.assertEqual(settings.agent, "alice")
        self.assertEqual(Settings.load({}).channels, ())


class RedactTests(SynchronousTestCase):
    """A PostgreSQL password never reaches a log line or an error message."""

    def test_passwords_are_masked(self) -> None:
        from elipc.locations import redact

        for url, shown in [
            ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
            ("postgresql://u@h/db?sslmode=x&password=secret", "postgresql://u@h/db?sslmode=x&password=***"),
            ("postgresql://u:secret@[h/db", "postgresql://***"),  # not a URL urllib can split
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("/var/lib/elipc/ipc.db", "/var/lib/elipc/ipc.db"),
        ]:
            self.assertEqual(redact(url), shown)
            self.assertNotIn("secret", redact(url))

    def test_bad_url_is_not_echoed(self) -> None:
        """A libpq key=value string is refused without repeating it (it holds a password)."""
        with self.assertRaises(ConfigError) as caught:
            Settings.load({"IPC_DB_URL": "host=h password=secret"})
        self.assertNotIn("secret", str(caught.exception))

    def test_db_option_takes_a_url(self) -> None:
        """--db postgresql://... selects PostgreSQL; --db PATH wins over IPC_DB_URL."""
        url = "postgresql://u@h/db"
        self.assertEqual(Settings.load({}, {"db": url}).database, url)
        self.assertEqual(Settings.load({"IPC_DB_URL": url}, {"db": "/x.db"}).database, "/x.db")
        self.assertEqual(Settings.load({"IPC_DB_URL": url, "IPC_DB_PATH": "/y.db"}).database, url)
