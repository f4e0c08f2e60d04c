"""elipc inside el's sidecar: el-ipc's sidecar routes and drain events, on elipc's own queue.

el's sidecar (a stdlib ThreadingHTTPServer on 0.0.0.0, one per project) loads
`sidecar/plugin.py` from every installed plugin and calls `register(api)`; ours finds this
package and hands over to `register` here. Everything runs under the user's own python3: no
Twisted, only the store, the operations and the settings the CLI uses.

What it keeps of el-ipc's plugin: the routes, bodies, answers and error strings, and the drain
events (`ipc_message`, `security_alert`). What it changes:
- Messages live in elipc's database (IPC_DB_PATH), so the CLI, the server and the sidecar
  share one queue. Messages written by any of them reach the drain for the agent and
  channels the session follows (IPC_AGENT and IPC_CHANNELS), each as it commits, through
  that agent's watermark: at least once, never lost between sidecar restarts.
- A private key is never taken over HTTP (`operator_key` is refused, as the server refuses
  it); registration in open mode is refused on this 0.0.0.0 listener unless
  IPC_SIDECAR_OPEN_REGISTRATION=1; `forward_to` posts only to the URLs listed in
  IPC_SIDECAR_FORWARD (400 otherwise) and follows no redirect.
- In secure mode, a read that moves an agent's watermark must be signed (X-Elipc-* headers),
  as on the server.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from elipc import store, wire
from elipc.config import MAX_PAGE, Settings, prepare_db_location
from elipc.locations import redact
from elipc.model import (
    RESERVED_PREFIX,
    SECURITY_CHANNEL,
    ElipcError,
    InvalidInput,
    Message,
    Rejected,
    Signed,
    StorageError,
    check_channel_for_sending,
    check_content,
    check_identity,
    check_name,
)
from elipc.operations import Policy, accept_message, authorize_read, forget_expired

# How often the drain's follower looks for another process's commit (PRAGMA data_version).
POLL_S = 0.05
FOLLOW_PAGE = 100
FORWARD_TIMEOUT_S = 10.0
# Security events written to the security channel, at most this many a minute.
EVENTS_PER_MINUTE = 60

# el-ipc's alert types for elipc's refusal kinds, and its details for them.
ALERTS = {
    "signature_required": ("unsigned_message", "message sent without signature in secure mode"),
    "unknown_sender": ("unknown_sender", "sender not registered in agent registry"),
    "invalid_signature": ("invalid_signature", "signature verification failed"),
}

Api = Mapping[str, Any]


class Sidecar:
    """The plugin's state: the sidecar's api, the settings, one database connection for the
    request threads (one call at a time) and the follower's own."""

    def __init__(self, api: Api, settings: Settings, clock: Callable[[], float] = time.time,
                 log: Any = None) -> None:
        self.api, self.settings, self.clock = api, settings, clock
        self.log = sys.stderr if log is None else log
        self.policy = Policy.from_settings(settings)
        self.follows = [(channel, settings.agent) for channel in settings.channels
                        if settings.agent]
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._window, self._events = 0.0, 0
        self.stopping = threading.Event()

    # -- plumbing -----------------------------------------------------------------------

    def register(self) -> None:
        """Hand el's sidecar the routes and the drain's follower."""
        add = self.api["register_route"]
        add("POST", "/ipc/send", self.send)
        add("POST", "/ipc/register", self.register_agent)
        add("GET", "/ipc/messages", self.messages)
        add("GET", "/ipc/agents", self.agents)
        add("GET", "/ipc/channels", self.channels)
        add("GET", "/.well-known/agent-card.json", self.agent_card)
        if self.follows:
            self.api["register_poller"]("elipc", self.follow)
        following = ", ".join(f"{c} as {a}" for c, a in self.follows) or "nothing"
        self.say(f"registered on {redact(self.settings.database)}; the drain follows {following}")

    def say(self, text: str) -> None:
        """One line on the sidecar's stderr, as el-ipc's plugin wrote them."""
        self.log.write(f"[elipc] {text}\n")
        self.log.flush()

    def conn(self) -> sqlite3.Connection:
        """The request threads' connection (opened on first use; call with the lock held)."""
        if self._conn is None:
            prepare_db_location(self.settings)
            self._conn = store.open_database(self.settings.database, check_same_thread=False)
        return self._conn

    def answer(self, req: Any, call: Callable[[], object]) -> None:
        """Send `call()`'s answer, or the error it raised as {"error"} with its status."""
        try:
            result = call()
        except ElipcError as e:
            req._send_json({"error": str(e)}, wire.status_of(e))
            return
        req._send_json(result)

    def body(self, req: Any) -> dict[str, Any] | None:
        """The request's JSON object, or None once 400 {"error": "invalid json"} is sent."""
        try:
            data = json.loads(req._read_body())
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            req._send_json({"error": "invalid json"}, 400)
            return None
        return data

    # -- POST /ipc/send -------------------------------------------------------------------

    def send(self, req: Any) -> None:
        """{channel, sender, content, signature?, forward_to?} -> {"ok", "id"[, "forwarded"]}."""
        data = self.body(req)
        if data is None:
            return
        if not all(data.get(field) for field in ("channel", "sender", "content")):
            req._send_json({"error": "channel, sender, and content required"}, 400)
            return
        forward_to = data.get("forward_to") or ""
        if forward_to and forward_to not in self.settings.sidecar_forward:
            req._send_json({"error": f"forward_to {str(forward_to)[:200]!r} is not allowed: "
                                     "list it in IPC_SIDECAR_FORWARD"}, 400)
            return
        self.answer(req, lambda: self._send(data, forward_to))

    def _send(self, data: dict[str, Any], forward_to: str) -> dict[str, object]:
        channel = check_channel_for_sending(data["channel"])
        sender = check_name(data["sender"], "sender")
        content = check_content(data["content"], self.settings.max_content_bytes)
        signed = wire.send_signature(data)
        key = data.get("idempotency_key")
        key = None if key is None else check_name(key, "idempotency key")
        now = self.clock()
        try:
            with self.lock:
                accepted = accept_message(self.conn(), channel, sender, content, signed, now,
                                          self.policy, key)
                if signed.nonce:
                    forget_expired(self.conn(), now, self.policy)
        except Rejected as e:
            self.refused(e, sender, channel)
            raise
        if not accepted.duplicate and channel not in {c for c, _ in self.follows}:
            # A followed channel reaches the drain through the follower (once per agent).
            self.emit(Message(accepted.id, channel, sender, content, now, signed.signature,
                              signed.timestamp, signed.nonce))
        answer: dict[str, object] = {"ok": True, "id": accepted.id}
        if forward_to:
            answer["forwarded"] = self.forward(forward_to, channel, sender, content,
                                               signed.signature)
        return answer

    def forward(self, url: str, channel: str, sender: str, content: str,
                signature: str) -> dict[str, object]:
        """POST the message to an allowed sidecar's /ipc/send, as el-ipc did; no redirect
        is followed (it could lead anywhere)."""
        payload = json.dumps({"channel": channel, "sender": sender, "content": content,
                              "signature": signature}).encode("utf-8")
        request = urllib.request.Request(url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with _NO_REDIRECTS.open(request, timeout=FORWARD_TIMEOUT_S) as response:
                return {"ok": True, "remote_response": json.loads(response.read())}
        except (OSError, ValueError) as e:
            self.say(f"forward to {url} failed: {e}")
            return {"ok": False, "error": str(e)}

    # -- POST /ipc/register ---------------------------------------------------------------

    def register_agent(self, req: Any) -> None:
        """{name, public_key, identity?, operator?, role?} -> {"ok", "message"}: in open mode
        only when allowed; in secure mode an operator's locally signed registration
        (`timestamp`, `operator_signature`, as the server's /register takes it)."""
        data = self.body(req)
        if data is None:
            return
        if "operator_key" in data:
            self.refused(Rejected("a private key was sent to /ipc/register",
                                  "private_key_sent"), str(data.get("operator") or "unknown"),
                         str(data.get("name") or ""))
            req._send_json({"error": "never send a private key: sign the registration "
                                     "locally (elipc register) and send operator_signature "
                                     "instead"}, 400)
            return
        if not data.get("name") or not data.get("public_key"):
            req._send_json({"error": "name and public_key required"}, 400)
            return
        self.answer(req, lambda: self._register(data))

    def _register(self, data: dict[str, Any]) -> dict[str, object]:
        from elipc.operations import register

        name = check_name(data["name"], "name")
        public_key = wire.public_key(data["public_key"])
        agent_identity = check_identity(data.get("identity", ""))
        with self.lock:
            secure = store.is_secure(self.conn())
        if not secure:
            return self._register_open(name, agent_identity, public_key, data)
        if not data.get("operator") or not data.get("operator_signature"):
            error = Rejected("operator and operator_signature required (secure mode active): "
                             "sign with `elipc register` locally", "unauthorized_registration")
            self.refused(error, str(data.get("operator") or "unknown"), name)
            raise error
        operator = check_name(data["operator"], "operator")
        signed = Signed(wire.signature(data["operator_signature"], "operator_signature"),
                        wire.body_timestamp(data.get("timestamp")))
        try:
            with self.lock:
                register(self.conn(), name, agent_identity, public_key, operator, signed,
                         self.clock(), self.policy)
        except Rejected as e:
            self.refused(e, operator, name)
            raise
        return {"ok": True, "message": f"Agent '{name}' registered by operator '{operator}'"}

    def _register_open(self, name: str, agent_identity: str, public_key: str,
                       data: dict[str, Any]) -> dict[str, object]:
        if not self.settings.sidecar_open_registration:
            error = Rejected("open registration is off on the sidecar (it listens on 0.0.0.0): "
                             "register with `elipc register`, or set "
                             "IPC_SIDECAR_OPEN_REGISTRATION=1", "unauthorized_registration")
            self.refused(error, str(data.get("operator") or "unknown"), name)
            raise error
        if data.get("role", "agent") != "agent":
            raise InvalidInput("operators are made locally with `elipc seed`, not registered")
        with self.lock:
            store.register_open(self.conn(), name, agent_identity, public_key, self.clock())
        return {"ok": True, "message": f"Agent '{name}' registered (open mode)"}

    # -- GET routes -----------------------------------------------------------------------

    def messages(self, req: Any, params: Mapping[str, str]) -> None:
        """?channel[&agent][&after_id] -> [{id, sender, content, timestamp, signed?}]; with
        agent, its watermark moves past what is returned (at most MAX_PAGE a call)."""
        if not params.get("channel"):
            req._send_json({"error": "channel param required"}, 400)
            return
        self.answer(req, lambda: self._messages(req, params))

    def _messages(self, req: Any, params: Mapping[str, str]) -> list[dict[str, object]]:
        channel = check_name(params["channel"], "channel")
        agent = check_name(params["agent"], "agent") if params.get("agent") else ""
        after_id = _whole(params.get("after_id", ""))
        with self.lock:
            conn = self.conn()
            if agent:
                signed = wire.read_signature(*(req.headers.get(h) for h in READ_HEADERS))
                authorize_read(conn, channel, agent, signed, self.clock(), self.policy)
                with store.transaction(conn):
                    start = (after_id if after_id is not None
                             else store.watermark(conn, channel, agent))
                    found = store.history(conn, channel, start, MAX_PAGE)
                    if found:
                        store.acknowledge(conn, channel, agent, found[-1].id)
            else:
                if channel.startswith(RESERVED_PREFIX) and store.is_secure(conn):
                    raise Rejected(f"history of {RESERVED_PREFIX} channels is not public in "
                                   "secure mode; read it as an operator", "security_channel")
                found = store.history(conn, channel, after_id or 0, MAX_PAGE)
        return [_el_ipc_shape(m) for m in found]

    def agents(self, req: Any, params: Mapping[str, str]) -> None:
        """The directory, as the server's /agents lists it."""
        def listed() -> list[dict[str, object]]:
            from elipc.identity import did_key

            with self.lock:
                entries = store.list_agents(self.conn())
            return [{**a.as_json(), "did": did_key(a.public_key)} for a in entries]
        self.answer(req, listed)

    def channels(self, req: Any, params: Mapping[str, str]) -> None:
        """Every channel with its count and last message time, as the server lists them."""
        def listed() -> list[dict[str, object]]:
            with self.lock:
                return store.list_channels(self.conn())
        self.answer(req, listed)

    def agent_card(self, req: Any, params: Mapping[str, str]) -> None:
        """The A2A agent card, as `elipc agent-card` prints it."""
        def card() -> dict[str, object]:
            from elipc.agentcard import served_card

            with self.lock:
                operators, stored = store.list_operators(self.conn()), \
                    store.card_signatures(self.conn())
            return served_card(self.settings, operators, stored)[0]
        self.answer(req, card)

    # -- the drain ------------------------------------------------------------------------

    def emit(self, message: Message, agent: str = "") -> None:
        """One message as el-ipc's drain event (`agent` says whose watermark delivered it)."""
        metadata: dict[str, object] = {"sender": message.sender, "channel": message.channel,
                                       "message_id": message.id}
        if message.signature:
            metadata["signature"] = message.signature
        if agent:
            metadata["agent"] = agent
        if self.api["insert_event"](source="ipc", type="ipc_message", text=message.content,
                                    user_id=message.sender, channel=message.channel,
                                    metadata=metadata):
            self.api["notify_waiters"]()

    def refused(self, error: Rejected, sender: str, channel: str) -> None:
        """A refusal as el-ipc's security_alert event, and on the security channel for
        operators (at most EVENTS_PER_MINUTE a minute)."""
        alert, detail = ALERTS.get(error.kind, (error.kind, str(error)))
        text = f"[SECURITY] {alert}: sender={sender}, channel={channel} — {detail}"
        self.say(text)
        self.api["insert_event"](source="ipc", type="security_alert", text=text,
                                 user_id=sender, channel=channel,
                                 metadata={"alert_type": alert, "sender": sender,
                                           "channel": channel, "detail": detail})
        self.api["notify_waiters"]()
        now = self.clock()
        if now - self._window >= 60:
            self._window, self._events = now, 0
        if self._events >= EVENTS_PER_MINUTE:
            return
        self._events += 1
        event = {"kind": error.kind, "reason": str(error), "remote": "el-sidecar", "at": now,
                 "sender": sender, "channel": channel}
        try:
            with self.lock:
                store.insert_message(self.conn(), SECURITY_CHANNEL, "elipc",
                                     json.dumps(event, sort_keys=True), "", now)
        except StorageError as e:
            self.say(f"could not record a security event: {e}")

    def follow(self) -> None:
        """The poller: deliver each followed (channel, agent)'s new messages to the drain as
        they commit, each inserted before the watermark moves past it (at least once)."""
        conn = store.open_database(self.settings.database, check_same_thread=False)
        try:
            while not self.stopping.is_set():
                version = store.data_version(conn)
                delivered = self.follow_once(conn)
                while (not delivered and store.data_version(conn) == version
                       and not self.stopping.wait(POLL_S)):
                    pass
        except StorageError as e:
            self.say(f"the drain's follower stopped: {e}")
        finally:
            conn.close()

    def follow_once(self, conn: sqlite3.Connection) -> int:
        """Deliver what is unread for each followed pair, a page each; return how many."""
        delivered = 0
        for channel, agent in self.follows:
            def deliver(messages: list[Message], agent: str = agent) -> None:
                for message in messages:
                    self.emit(message, agent)
            delivered += len(store.unread_page(conn, channel, agent, FOLLOW_PAGE,
                                               deliver=deliver).messages)
        return delivered


READ_HEADERS = ("X-Elipc-Timestamp", "X-Elipc-Nonce", "X-Elipc-Signature")


class _Refuse(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer is then an error: never followed


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


def _whole(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput("after_id must be a whole number")
    return int(text)


def _el_ipc_shape(message: Message) -> dict[str, object]:
    shape: dict[str, object] = {"id": message.id, "sender": message.sender,
                                "content": message.content, "timestamp": message.created_at}
    if message.signature:
        shape["signed"] = True
    return shape


def register(api: Api, environ: Mapping[str, str] | None = None) -> Sidecar:
    """el's entry point (through sidecar/plugin.py): settings from the environment, routes and
    the follower handed to the sidecar."""
    sidecar = Sidecar(api, Settings.load(environ))
    sidecar.register()
    return sidecar


