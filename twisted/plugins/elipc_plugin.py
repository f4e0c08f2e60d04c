"""The `twist elipc` / `twistd elipc` plugin (no __init__.py under twisted/, on purpose)."""

from twisted.application.service import ServiceMaker

elipc = ServiceMaker(
    "elipc",
    "elipc.server.service",
    "Inter-agent message queue: SQLite channels, HTTP long-poll, Ed25519 identities.",
    "elipc",
)
