"""An asynchronous elipc client on treq, for agents that reach the server over HTTP.

    client = Client("https://ipc.example", key=load_private_key("herald.key"), agent="herald")
    await client.send("ops", "deploy done")
    await client.listen("ops", handle_batch)     # forever; acknowledges after each batch

Sends and reads are signed the elipc/2 way when a key is given. Each logical send carries one
idempotency key (and one signature) through all its retries, so a retry after a lost response
is stored once. Reads default to manual acknowledgement: the watermark moves only when `ack`
(or `listen`, after the handler returns) says so, so nothing is lost in transit. Connection
failures and 5xx answers are retried with capped exponential backoff; 4xx raise ClientError.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import treq
from twisted.internet.error import ConnectError, ConnectionClosed, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.logger import Logger

from elipc import identity

log = Logger(namespace="elipc.client")
# A caller's cancellation (CancelledError) is not among them: it ends the call.
RETRYABLE = (ConnectError, ConnectionClosed, ResponseFailed, ResponseNeverReceived,
             TimeoutError)
REQUEST_TIMEOUT_S = 30.0
Handler = Callable[[list[dict[str, Any]]], Awaitable[object] | object]


def _decode(raw: bytes) -> Any:
    # A proxy in front of elipc may answer a 502 in HTML: keep it as an error text.
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode("utf-8", "replace")}


class ClientError(Exception):
    """The server refused the request (4xx): `status` and the server's `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Page:
    """Messages (el-ipc's JSON dicts) and whether more are waiting behind them."""

    def __init__(self, messages: list[dict[str, Any]], more: bool) -> None:
        self.messages = messages
        self.more = more

    def __repr__(self) -> str:
        return f"<Page of {len(self.messages)}{', more' if self.more else ''}>"


class Client:
    """One agent's view of one elipc server."""

    def __init__(self, base_url: str, http: Any = treq, key: Any = None,
                 agent: str | None = None, clock: IReactorTime | None = None,
                 retries: int = 6, backoff: float = 0.2, max_backoff: float = 5.0,
                 api_key: str | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.base_url = base_url.rstrip("/")
        self.http, self.key, self.agent, self.clock = http, key, agent, clock
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._auth = {"Authorization": [f"Bearer {api_key}"]} if api_key else {}

    # -- messages --------------------------------------------------------------------------

    async def send(self, channel: str, content: str, sender: str | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        """Send `content`; returns {"ok", "id"} (plus "duplicate": true for a repeat key)."""
        sender = self._name(sender)
        body: dict[str, Any] = {"channel": channel, "sender": sender, "content": content,
                                "idempotency_key": idempotency_key or identity.new_nonce()}
        if self.key is not None:
            timestamp, nonce = int(self.clock.seconds()), identity.new_nonce()
            payload = identity.send_payload(channel, sender, timestamp, nonce, content)
            body.update(timestamp=timestamp, nonce=nonce,
                        signature=identity.sign(self.key, payload))
        answer, _ = await self._call("POST", "/send", body=body)
        return answer  # type: ignore[no-any-return]

    async def read(self, channel: str, agent: str | None = None, wait: bool = False,
                   timeout: float | None = None, limit: int | None = None,
                   ack: str = "manual", linger: float | None = None) -> Page:
        """Unread messages; with ack="manual" (the default) nothing moves until `ack`."""
        agent = self._name(agent)
        params: dict[str, Any] = {"channel": channel, "agent": agent, "ack": ack}
        if wait:
            params["wait"] = "true"
        for name, value in (("timeout", timeout), ("limit", limit), ("linger", linger)):
            if value is not None:
                params[name] = value
        waiting = (timeout if timeout is not None else 30.0) if wait else 0.0
        answer, more = await self._call(
            "GET", "/messages", params=params, timeout=REQUEST_TIMEOUT_S + waiting,
            headers=lambda: self._read_headers(identity.read_payload, channel, agent))
        return Page(answer, more)

    async def ack(self, channel: str, up_to: int, agent: str | None = None) -> int:
        """Move the watermark past message `up_to`; returns the watermark."""
        agent = self._name(agent)
        answer, _ = await self._call(
            "POST", "/ack", body={"channel": channel, "agent": agent, "up_to": up_to},
            headers=lambda: self._read_headers(
                lambda c, a, t, n: identity.ack_payload(c, a, up_to, t, n), channel, agent))
        return int(answer["watermark"])

    async def history(self, channel: str, after_id: int = 0, limit: int | None = None) -> Page:
        """Messages after `after_id`, moving no watermark."""
        params: dict[str, Any] = {"channel": channel, "after_id": after_id}
        if limit is not None:
            params["limit"] = limit
        answer, more = await self._call("GET", "/messages", params=params)
        return Page(answer, more)

    async def listen(self, channel: str, handler: Handler, agent: str | None = None,
                     limit: int | None = None) -> None:
        """Deliver every batch to `handler` forever, acknowledging it once `handler`
        returns (or its Deferred/coroutine completes); a handler that raises stops here,
        unacknowledged, so the batch comes again."""
        while True:
            page = await self.read(channel, agent, wait=True, limit=limit, ack="manual")
            if page.messages:
                outcome = handler(page.messages)
                if hasattr(outcome, "__await__") or hasattr(outcome, "addCallback"):
                    await outcome  # type: ignore[misc]
                await self.ack(channel, page.messages[-1]["id"], agent)

    # -- the directory and the rest --------------------------------------------------------

    async def channels(self) -> list[dict[str, Any]]:
        """Every channel with its count and last message time."""
        return (await self._call("GET", "/channels"))[0]  # type: ignore[no-any-return]

    async def agents(self) -> list[dict[str, Any]]:
        """The directory, with public keys and did:keys."""
        return (await self._call("GET", "/agents"))[0]  # type: ignore[no-any-return]

    async def health(self, channel: str | None = None,
                     agent: str | None = None) -> dict[str, Any]:
        """Server status (and `agent`'s pending count on `channel`, signed when keyed)."""
        params = {"channel": channel, "agent": agent} if channel and agent else None
        headers = ((lambda: self._read_headers(identity.read_payload, channel, agent))
                   if params else None)
        return (await self._call("GET", "/health", params=params,  # type: ignore[no-any-return]
                                 headers=headers))[0]

    async def agent_card(self) -> dict[str, Any]:
        """The server's A2A agent card."""
        return (await self._call("GET", "/.well-known/agent-card.json"))[0]  # type: ignore

    async def register(self, name: str, public_key: str, operator: str, operator_key: Any,
                       agent_identity: str = "") -> dict[str, Any]:
        """Register `name` with `public_key`, signed here with the operator's private key
        (which never leaves this process)."""
        def body() -> dict[str, Any]:
            timestamp = int(self.clock.seconds())
            payload = identity.register_payload(name, agent_identity, timestamp, public_key)
            return {"name": name, "public_key": public_key, "identity": agent_identity,
                    "operator": operator, "timestamp": timestamp,
                    "operator_signature": identity.sign(operator_key, payload)}
        return (await self._call("POST", "/register", body=body))[0]  # type: ignore

    # -- plumbing ----------------------------------------------------------------------------

    def _name(self, given: str | None) -> str:
        name = given or self.agent
        if not name:
            raise ValueError("no agent name: pass one or create the Client with agent=")
        return name

    def _read_headers(self, payload: Callable[[str, str, int, str], bytes], channel: str,
                      agent: str) -> dict[str, list[str]]:
        if self.key is None:
            return {}
        timestamp, nonce = int(self.clock.seconds()), identity.new_nonce()
        signature = identity.sign(self.key, payload(channel, agent, timestamp, nonce))
        return {"X-Elipc-Timestamp": [str(timestamp)], "X-Elipc-Nonce": [nonce],
                "X-Elipc-Signature": [signature]}

    async def _call(self, method: str, path: str, params: dict[str, Any] | None = None,
                    body: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                    headers: Callable[[], dict[str, list[str]]] | None = None,
                    timeout: float = REQUEST_TIMEOUT_S) -> tuple[Any, bool]:
        """One request with retries. A `body` dict is sent as is on every attempt (a send:
        same signature, same idempotency key); a callable `body`, and `headers`, are rebuilt
        per attempt (fresh timestamps and nonces)."""
        url = self.base_url + path + (("?" + urlencode(params)) if params else "")
        for attempt in range(self.retries + 1):
            data = body() if callable(body) else body
            all_headers = {**self._auth, **(headers() if headers else {})}
            try:
                pending = self.http.request(method, url, json=data, headers=all_headers)
                # addTimeout raises TimeoutError (retried); a caller's cancel stays a cancel.
                response = await pending.addTimeout(timeout, self.clock)
                answer = _decode(await self.http.content(response))
            except RETRYABLE as e:
                failure = f"{type(e).__name__}"
            else:
                if response.code < 500:
                    if response.code >= 400:
                        raise ClientError(response.code, str(answer.get("error", answer)))
                    more = response.headers.getRawHeaders(b"x-elipc-more") == [b"true"]
                    return answer, more
                failure = f"HTTP {response.code}"
            if attempt == self.retries:
                raise ConnectionError(f"{method} {path} failed after {attempt + 1} tries: "
                                      f"{failure}")
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1)
            log.info("{method} {path} failed ({failure}); retry in {delay:.2f} s",
                     method=method, path=path, failure=failure, delay=delay)
            await deferLater(self.clock, delay)
        raise AssertionError("unreachable")
