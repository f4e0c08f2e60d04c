"""The routes the console reads (and any other client may): channel activity, delivery
state, search and security events. Like web.py's, each parses, calls one use case (the
broker's Overview) and renders JSON; none moves anything.

A mixin of HttpApi, on the same Klein app, so the error handling, rate limits and API key
are the same for every route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web.iweb import IRequest

from elipc.model import Page, check_name
from elipc.server import requests
from elipc.server.overview import security_event
from elipc.server.routing import route
from elipc.server.site import json_bytes

if TYPE_CHECKING:
    from elipc.server.broker import Broker
    from elipc.server.streams import EventStream

LAST_ID = 2**63 - 1
DEFAULT_RESULTS, MAX_RESULTS = 50, 200
DEFAULT_EVENTS, MAX_EVENTS = 100, 1000
# A search result shows this much of its content; the channel view shows it whole.
RESULT_CHARS = 2000


class ConsoleViews:
    """The console's routes; HttpApi supplies the broker, the open streams and admit."""

    broker: Broker
    streams: set[EventStream]

    def admit(self, request: IRequest, name: str | None = None) -> None:
        raise NotImplementedError  # HttpApi.admit

    @route("/activity", "GET", "after_id")
    async def activity(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /activity[?after_id] -> {status, secure_mode, long_polls, streams,
        security_events, last_id, channels: [{channel, added, last_id, last_message}]}."""
        after_id = (requests.whole(params, "after_id", 0, LAST_ID) if "after_id" in params
                    else None)
        answer = await self.broker.overview.activity(after_id)
        answer.update(status="ok", long_polls=self.broker.long_polls,
                      streams=len(self.streams),
                      security_events=dict(self.broker.security.counts))
        return json_bytes(request, 200, answer)

    @route("/delivery", "GET", "channel")
    async def delivery(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /delivery?channel -> {channel, last_id, count, agents: [{agent, watermark,
        pending}], more}, moving nothing."""
        channel = check_name(params.get("channel"), "channel")
        return json_bytes(request, 200, await self.broker.overview.delivery(channel))

    @route("/search", "GET", "q", "channel", "sender", "before_id", "limit")
    async def search(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /search?q[&channel&sender&before_id&limit] -> [message with channel, ...],
        newest first; X-Elipc-More says whether older ones match."""
        channel = check_name(params["channel"], "channel") if "channel" in params else None
        sender = check_name(params["sender"], "sender") if "sender" in params else None
        page = await self.broker.overview.search(
            params.get("q", ""), channel, sender,
            requests.whole(params, "before_id", LAST_ID, LAST_ID, minimum=1),
            requests.whole(params, "limit", DEFAULT_RESULTS, MAX_RESULTS, minimum=1))
        return _listed(request, page, [{"channel": m.channel, **m.as_cut_json(RESULT_CHARS)}
                                       for m in page.messages])

    @route("/security", "GET", "agent", "before_id", "limit", named=True)
    async def security(self, request: IRequest, params: dict[str, str]) -> bytes:
        """GET /security[?agent&before_id&limit] -> {secure_mode, counts, events, more}: the
        security events, newest first (secure mode: an operator's signed read)."""
        agent = check_name(params["agent"], "agent") if "agent" in params else None
        self.admit(request, agent)
        signed = requests.read_signature(request)
        secure, page = await self.broker.overview.security_events(
            agent, signed, requests.whole(params, "before_id", LAST_ID, LAST_ID, minimum=1),
            requests.whole(params, "limit", DEFAULT_EVENTS, MAX_EVENTS, minimum=1))
        events = [{**security_event(m.content), "id": m.id, "timestamp": m.created_at}
                  for m in reversed(page.messages)]
        return json_bytes(request, 200, {
            "secure_mode": secure, "counts": dict(self.broker.security.counts),
            "events": events, "more": page.more})


def _listed(request: IRequest, page: Page, shapes: list[dict[str, object]]) -> bytes:
    request.setHeader(b"X-Elipc-More", b"true" if page.more else b"false")
    return json_bytes(request, 200, shapes)
