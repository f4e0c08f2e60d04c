"""Every setting elipc has, declared once: its environment variable, its option, its default,
its parser and its help. `Settings` is the frozen result of reading them from (environ, options).

The server's `Options`, the CLI's global options and the README's settings table all come from
TABLE. Nothing outside this module reads IPC_* from the environment. No Twisted import: the
CLI's local path loads this module on every call.
"""


import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from elipc.locations import is_url
from elipc.model import ConfigError, ElipcError

LEGACY_DB_PATH = "/tmp/el-ipc.db"

# Limits and defaults that are not settings (a request, or the CLI, says them per call).
DEFAULT_WAIT_TIMEOUT = 30.0
MAX_WAIT_TIMEOUT = 300.0
MAX_CLI_WAIT = 24 * 3600.0
MAX_LINGER = 30.0
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_REPLAY_WINDOW = 24 * 3600.0
DEFAULT_REPLAY_WINDOW = 300.0
DEFAULT_PORT = 9876
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024
DEFAULT_AGENT_NAME = "el-ipc agent"
DEFAULT_AGENT_DESC = (
    "Inter-agent message queue: named channels, per-agent read watermarks, "
    "HTTP long-poll and Ed25519-signed messages."
)
# A long backlog: bursts of agents (re)connecting must not overflow the accept queue.
LISTEN_BACKLOG = 1024
# Rate limits no well-behaved agent meets: 100 requests a second, 200 at once.
DEFAULT_RATE_LIMIT = 100.0
DEFAULT_RATE_BURST = 200
# How long a remote call may take beyond the long-poll it asked for.
REQUEST_TIMEOUT = 30.0

Values = dict[str, Any]


# -- parsers: (text, the name to blame) -> value ---------------------------------------------


def parse_text(text: str, name: str) -> str:
    """Any text, as given."""
    return text


def parse_positive(text: str, name: str) -> int:
    """A whole number above 0."""
    try:
        number = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, not {number}")
    return number


def parse_name(text: str, name: str) -> str:
    """An agent's name (as check_name has it)."""
    from elipc.model import check_name

    try:
        return check_name(text.strip(), name)
    except ElipcError as e:
        raise ConfigError(str(e)) from None


def parse_names(text: str, name: str) -> tuple[str, ...]:
    """Channel names separated by commas (blanks around them ignored)."""
    return tuple(parse_name(part, name) for part in text.split(",") if part.strip())


def parse_urls(text: str, name: str) -> tuple[str, ...]:
    """http(s) URLs separated by commas, each with a host."""
    from urllib.parse import urlsplit

    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name} must list http(s) URLs, not {url!r}")
    return urls


def parse_rate(text: str, name: str) -> float:
    """A number of requests a second, 0 or more (0: off)."""
    try:
        rate = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of requests a second, not {text!r}") from None
    if not 0 <= rate < float("inf"):
        raise ConfigError(f"{name} must be 0 (off) or more, not {text!r}")
    return rate


def parse_flag(text: str, name: str) -> bool:
    """1/true/yes/on or 0/false/no/off (empty: off)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {text!r}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, name: str) -> float:
    """Seconds from `7d`, `12h`, `30m`, `45s`, `2w` or a plain number of seconds (0: off)."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    try:
        number = float(value[:-1] if unit else value) * (unit or 1)
    except ValueError:
        raise ConfigError(f"{name} must be a duration such as 7d, 12h or 3600, "
                          f"not {text!r}") from None
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{name} must be a positive duration, not {text!r}")
    return number


def seconds_setting(value: str | float, name: str, maximum: float) -> float:
    """`value` as seconds from 0 to `maximum`, or a ConfigError naming `name`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} is not a number of seconds: {value!r}") from None
    if not 0 <= number <= maximum:  # also refuses NaN
        raise ConfigError(f"{name} must be between 0 and {maximum:g} seconds")
    return number


def parse_seconds_up_to(maximum: float) -> Callable[[str, str], float]:
    """A parser for seconds from 0 to `maximum`."""
    return lambda text, name: seconds_setting(text, name, maximum)


def parse_port(text: str, name: str) -> int | None:
    """A port number; from --port, an endpoint string is not one (None: not given)."""
    if name.startswith("--") and not text.isdigit():
        return None
    return parse_positive(text, name)


def parse_listen(text: str, name: str) -> str:
    """A port number (bound to 127.0.0.1) or any Twisted endpoint string, as an endpoint."""
    if text.isdigit():
        return listen_on(parse_positive(text, name))
    if ":" not in text:
        raise ConfigError(f"{name} must be a port number or an endpoint string, not {text!r}")
    return text


def parse_db_url(text: str, name: str) -> str:
    """A PostgreSQL URL (postgresql://... or postgres://...)."""
    if not is_url(text):
        # Not echoed: a libpq "key=value" string would show its password.
        raise ConfigError(f"{name} must be a postgresql:// URL (postgresql://user@host/db)")
    return text


def listen_on(port: int) -> str:
    """The endpoint for a bare port: loopback only, with a long accept queue."""
    return f"tcp:{port}:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"


def default_db_path(environ: Mapping[str, str]) -> str:
    """The per-user database: $XDG_STATE_HOME/elipc/ipc.db, else ~/.local/state/elipc/ipc.db."""
    state = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "elipc", "ipc.db")


# -- the table ---------------------------------------------------------------------------


class Setting(NamedTuple):
    """One setting: where it comes from, how it is parsed, what it is when not given.

    `default` is a value, or a function of (the settings read so far, environ) for defaults
    that depend on others; `shown_default` is how the README and --help say it.
    """

    name: str
    env: str | None
    option: str | None
    parse: Callable[[str, str], Any]
    default: Any
    shown_default: str
    help: str
    fronts: tuple[str, ...] = ("server",)
    flag: bool = False


TABLE: tuple[Setting, ...] = (
    Setting("db_path", "IPC_DB_PATH", "db", parse_text,
            lambda values, environ: default_db_path(environ),
            "`$XDG_STATE_HOME/elipc/ipc.db`, else `~/.local/state/elipc/ipc.db`",
            "the SQLite file (folder 0700, file 0600)", fronts=("server", "cli")),
    # --db takes a URL too; IPC_DB_URL, when set, wins over IPC_DB_PATH (Settings.load).
    Setting("db_url", "IPC_DB_URL", None, parse_db_url, "", "none (SQLite)",
            "a PostgreSQL database (`postgresql://user@host/db`) to use instead of the "
            "SQLite file; `--db` takes one too", fronts=()),
    # --port is the listen setting's option; a bare number there is the port too.
    Setting("port", "IPC_PORT", "port", parse_port, DEFAULT_PORT, f"`{DEFAULT_PORT}`",
            "port (bound to 127.0.0.1); `--port` also takes a Twisted endpoint string",
            fronts=()),
    Setting("listen", None, "port", parse_listen,
            lambda values, environ: listen_on(values["port"]), "`IPC_PORT` on 127.0.0.1",
            "port number (bound to 127.0.0.1) or any Twisted endpoint string "
            "(tcp:9876:interface=0.0.0.0, ssl:..., unix:...)"),
    Setting("api_key", "IPC_API_KEY", None, parse_text, "", "none",
            "require `Authorization: Bearer <key>` on every request (environment only: argv "
            "is visible to every user)", fronts=()),
    Setting("agent_name", "IPC_AGENT_NAME", "agent-name", parse_text, DEFAULT_AGENT_NAME,
            f"`{DEFAULT_AGENT_NAME}`", "name in the agent card"),
    Setting("agent_desc", "IPC_AGENT_DESC", "agent-desc", parse_text, DEFAULT_AGENT_DESC,
            "a generic sentence", "description in the agent card"),
    Setting("agent_url", "IPC_AGENT_URL", "agent-url", parse_text,
            lambda values, environ: f"http://localhost:{values['port']}",
            "`http://localhost:{port}`", "public URL in the agent card"),
    Setting("linger", "IPC_LINGER", "linger", parse_seconds_up_to(MAX_LINGER), 0.0, "`0`",
            "seconds a woken long-poll waits to gather a burst (also `linger=` per request)"),
    Setting("max_content_bytes", "IPC_MAX_CONTENT_BYTES", None, parse_positive,
            DEFAULT_MAX_CONTENT_BYTES, f"`{DEFAULT_MAX_CONTENT_BYTES}`",
            "largest message content (UTF-8 bytes); over it: 413 / exit 1", fronts=()),
    # JSON may escape content to twice its UTF-8 size (é is 2 bytes, \u00e9 is 6).
    Setting("max_body_bytes", "IPC_MAX_BODY_BYTES", None, parse_positive,
            lambda values, environ: 2 * values["max_content_bytes"] + 64 * 1024,
            "twice the content limit + 64 KiB", "largest HTTP request body; over it: 413"),
    Setting("max_wait", "IPC_MAX_WAIT", "max-wait", parse_seconds_up_to(MAX_WAIT_TIMEOUT),
            MAX_WAIT_TIMEOUT, f"`{MAX_WAIT_TIMEOUT:g}`",
            "the longest a long-poll (`timeout=`, `linger=`) may be held; more is a 400"),
    Setting("replay_window", "IPC_REPLAY_WINDOW", "replay-window",
            parse_seconds_up_to(MAX_REPLAY_WINDOW), DEFAULT_REPLAY_WINDOW,
            f"`{DEFAULT_REPLAY_WINDOW:g}`", "seconds a signed timestamp stays valid"),
    Setting("strict_signatures", "IPC_STRICT_SIGNATURES", "strict-signatures", parse_flag,
            False, "`0`", "`1` refuses el-ipc's replayable signatures", flag=True),
    Setting("retention", "IPC_RETENTION", "retention", parse_duration, 0.0, "`0` (keep all)",
            "delete messages older than this (`7d`, `12h`, seconds)"),
    Setting("rate_limit", "IPC_RATE_LIMIT", "rate-limit", parse_rate, DEFAULT_RATE_LIMIT,
            f"`{DEFAULT_RATE_LIMIT:g}`", "requests a second each sender (or agent) may make "
            "from one address, and each address for requests naming nobody; `0` turns rate "
            "limits off; over it: 429 with Retry-After"),
    Setting("rate_burst", "IPC_RATE_BURST", "rate-burst", parse_positive, DEFAULT_RATE_BURST,
            f"`{DEFAULT_RATE_BURST}`", "requests a sender or address may make at once before "
            "the rate applies"),
    Setting("metrics", "IPC_METRICS", None, parse_flag, True, "`1`",
            "`0` turns Prometheus metrics off (`/metrics` then answers 404)", fronts=()),
    Setting("server_url", "IPC_SERVER_URL", "server", parse_text, "", "none",
            "make the CLI a client of this server", fronts=("cli",)),
    # Who a session is, for the commands that act as one agent (mcp, follow, inbox): set once
    # (for example in Claude Code's settings), not repeated on every command line.
    Setting("agent", "IPC_AGENT", None, parse_name, "", "none",
            "the agent `mcp`, `follow` and `inbox` act as when `--agent` is not given",
            fronts=("cli",)),
    Setting("key_file", "IPC_KEY_FILE", None, parse_text, "", "none",
            "IPC_AGENT's private key file (signs its sends and reads in secure mode)",
            fronts=("cli",)),
    Setting("channels", "IPC_CHANNELS", None, parse_names, (), "none",
            "channels (comma-separated) `inbox`, `follow` and the Stop hook look at when none "
            "are named, and that el's sidecar delivers to its drain (as IPC_AGENT)",
            fronts=("cli",)),
    Setting("sidecar_open_registration", "IPC_SIDECAR_OPEN_REGISTRATION", None, parse_flag,
            False, "`0`", "`1` lets el's sidecar register agents in open mode (it listens on "
            "0.0.0.0)", fronts=("sidecar",)),
    Setting("sidecar_forward", "IPC_SIDECAR_FORWARD", None, parse_urls, (), "none",
            "URLs (comma-separated) the sidecar's `forward_to` may post to; any other: 400",
            fronts=("sidecar",)),
)

BY_NAME = {setting.name: setting for setting in TABLE}


class Settings(NamedTuple):
    """Everything elipc can be told, already parsed; build it with `Settings.load`."""

    db_path: str
    db_path_is_default: bool
    db_url: str
    port: int
    listen: str
    api_key: str
    agent_name: str
    agent_desc: str
    agent_url: str
    linger: float
    max_content_bytes: int
    max_body_bytes: int
    max_wait: float
    replay_window: float
    strict_signatures: bool
    retention: float
    rate_limit: float
    rate_burst: int
    metrics: bool
    server_url: str
    agent: str
    key_file: str
    channels: tuple[str, ...]
    sidecar_open_registration: bool
    sidecar_forward: tuple[str, ...]

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None,
             options: Mapping[str, Any] | None = None) -> "Settings":
        """Read each setting from its option (when given), else its IPC_* variable (when
        set and not empty), else its default. Options are keyed by option name."""
        environ = os.environ if environ is None else environ
        options = options or {}
        values: Values = {}
        for setting in TABLE:
            values[setting.name] = _value(setting, environ, options, values)
        given_db = options.get("db") or environ.get("IPC_DB_PATH")
        if given_db and is_url(given_db) and options.get("db"):
            values["db_url"] = given_db  # --db postgresql://...
        elif options.get("db"):
            values["db_url"] = ""  # --db PATH: that file, whatever IPC_DB_URL says
        if is_url(values["db_path"]):
            if not values["db_url"]:
                values["db_url"] = parse_db_url(values["db_path"], "IPC_DB_PATH")
            values["db_path"], given_db = default_db_path(environ), None
        return cls(db_path_is_default=not given_db, **values)

    @property
    def database(self) -> str:
        """Where the store is: the PostgreSQL URL if one is set, else the SQLite file."""
        return self.db_url or self.db_path


def _value(setting: Setting, environ: Mapping[str, str], options: Mapping[str, Any],
           values: Values) -> Any:
    given = options.get(setting.option) if setting.option else None
    if setting.flag:
        given = True if given else None  # an absent flag (0, False) is not "off"
    if given is not None:
        value = True if given is True else setting.parse(str(given), f"--{setting.option}")
        if value is not None:
            return value
    text = environ.get(setting.env) if setting.env else None
    if text:
        return setting.parse(text, setting.env or setting.name)
    return setting.default(values, environ) if callable(setting.default) else setting.default


def options_for(front: str) -> list[Setting]:
    """The settings `front` ("server" or "cli") takes as command-line options."""
    return [s for s in TABLE if front in s.fronts and s.option]


def option_help(setting: Setting) -> str:
    """An option's help: what it is and where its default comes from."""
    source = f"{setting.env}, else " if setting.env else ""
    return f"{setting.help} (default {source}{setting.shown_default.replace('`', '')})"


def prepare_db_location(settings: Settings) -> str | None:
    """Create the default database folder (0700); return a notice if el-ipc's old file is found.

    The notice is returned, not printed, so the CLI and the server each say it their own way.
    """
    if settings.db_url or not settings.db_path_is_default or os.path.exists(settings.db_path):
        return None
    folder = os.path.dirname(settings.db_path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    if os.path.exists(LEGACY_DB_PATH):
        return (
            f"elipc: creating a new database at {settings.db_path}; el-ipc's database "
            f"{LEGACY_DB_PATH} exists: set IPC_DB_PATH={LEGACY_DB_PATH} to keep using it"
        )
    return None
