"""One Settings object built from the environment (IPC_*) and options; every default lives here.

No Twisted import: the CLI's local path loads this module on every call.
"""

from __future__ import annotations

import os

from elipc.model import ElipcError

LEGACY_DB_PATH = "/tmp/el-ipc.db"
DEFAULT_PORT = 9876
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024
DEFAULT_WAIT_TIMEOUT = 30.0
MAX_WAIT_TIMEOUT = 300.0
MAX_LINGER = 30.0
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
DEFAULT_REPLAY_WINDOW = 300.0
MAX_REPLAY_WINDOW = 24 * 3600.0
DEFAULT_AGENT_NAME = "el-ipc agent"
DEFAULT_AGENT_DESC = (
    "Inter-agent message queue: named channels, per-agent read watermarks, "
    "HTTP long-poll and Ed25519-signed messages."
)


class ConfigError(ElipcError, ValueError):
    """A setting from the environment or the command line has an unusable value."""


class Settings:
    """Everything elipc can be told, already parsed; build it with `from_env`."""

    __slots__ = (
        "db_path", "db_path_is_default", "port", "listen", "api_key", "agent_name",
        "agent_desc", "agent_url", "max_content_bytes", "max_body_bytes", "wait_timeout",
        "linger", "replay_window", "strict_signatures", "retention",
    )

    def __init__(self, **values: object) -> None:
        for name in self.__slots__:
            setattr(self, name, values.pop(name))
        if values:
            raise TypeError(f"unknown settings: {sorted(values)}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read IPC_* variables; keyword overrides (from options) win over the environment."""
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        db_path = given.pop("db_path", None) or env.get("IPC_DB_PATH") or ""
        port = _int(given.pop("port", None) or env.get("IPC_PORT") or DEFAULT_PORT, "IPC_PORT")
        values = {
            "db_path": db_path or default_db_path(env),
            "db_path_is_default": not db_path,
            "port": port,
            # A long backlog: bursts of agents (re)connecting must not overflow the accept queue.
            "listen": f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "api_key": env.get("IPC_API_KEY", ""),
            "agent_name": env.get("IPC_AGENT_NAME") or DEFAULT_AGENT_NAME,
            "agent_desc": env.get("IPC_AGENT_DESC") or DEFAULT_AGENT_DESC,
            "agent_url": env.get("IPC_AGENT_URL") or f"http://localhost:{port}",
            "max_content_bytes": _int(
                env.get("IPC_MAX_CONTENT_BYTES") or DEFAULT_MAX_CONTENT_BYTES,
                "IPC_MAX_CONTENT_BYTES",
            ),
            "max_body_bytes": 0,
            "wait_timeout": DEFAULT_WAIT_TIMEOUT,
            "linger": seconds_setting(env.get("IPC_LINGER") or 0, "IPC_LINGER", MAX_LINGER),
            "replay_window": seconds_setting(
                env.get("IPC_REPLAY_WINDOW") or DEFAULT_REPLAY_WINDOW, "IPC_REPLAY_WINDOW",
                MAX_REPLAY_WINDOW,
            ),
            "strict_signatures": _flag(env.get("IPC_STRICT_SIGNATURES", ""),
                                       "IPC_STRICT_SIGNATURES"),
            "retention": parse_duration(env.get("IPC_RETENTION") or "0", "IPC_RETENTION"),
        }
        values.update(given)
        # JSON may escape content to twice its UTF-8 size (é is 2 bytes, \u00e9 is 6).
        values["max_body_bytes"] = _int(
            env.get("IPC_MAX_BODY_BYTES") or 2 * int(values["max_content_bytes"]) + 64 * 1024,
            "IPC_MAX_BODY_BYTES",
        )
        return cls(**values)


def default_db_path(environ: dict[str, str]) -> str:
    """The per-user database: $XDG_STATE_HOME/elipc/ipc.db, else ~/.local/state/elipc/ipc.db."""
    state = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "elipc", "ipc.db")


def prepare_db_location(settings: Settings) -> str | None:
    """Create the default database folder (0700); return a notice if el-ipc's old file is found.

    The notice is returned, not printed, so the CLI and the server each say it their own way.
    """
    if not settings.db_path_is_default or os.path.exists(settings.db_path):
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


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {value!r}")


def _int(value: object, name: str) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, not {number}")
    return number


def seconds_setting(value: object, name: str, maximum: float) -> float:
    """`value` as seconds from 0 to `maximum`, or a ConfigError naming `name`."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} is not a number of seconds: {value!r}") from None
    if not 0 <= number <= maximum:  # also refuses NaN
        raise ConfigError(f"{name} must be between 0 and {maximum:g} seconds")
    return number
