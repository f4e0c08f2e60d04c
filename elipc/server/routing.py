"""The Klein app every route is on, and `route`: how a route declares its method, path and
query parameters (the OpenAPI description and the docs are held to these declarations).

Its own module so the routes can live in more than one (web.py: the agents' API; views.py:
what the console reads) on one app.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from elipc.server import requests

Handler = Callable[[Any, IRequest, dict[str, str]], Awaitable[bytes | IResource]]
H = TypeVar("H", bound=Handler)

APP = Klein()
# Each route's query parameters, as declared (the OpenAPI description is held to these).
QUERY_PARAMS: dict[tuple[str, str], tuple[str, ...]] = {}


class Admitting(Protocol):
    """What a route's object does before its handler runs: charge the rate limit."""

    def admit(self, request: IRequest, name: str | None = None) -> None: ...


def route(path: str, method: str, *params: str, named: bool = False,
          repeated: tuple[str, ...] = ()) -> Callable[[H], H]:
    """Serve `method path`, handing the handler its query parameters (only `params` are
    allowed; any other is a 400). A request is charged to its address's rate limit first,
    unless the route is `named`: its handler charges the name it acts for (HttpApi.admit)."""
    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        def parsed(self: Admitting, request: IRequest) -> Awaitable[bytes | IResource]:
            if not named:
                self.admit(request)
            return handler(self, request, requests.query(request, params, repeated))
        APP.route(path, methods=[method])(parsed)
        QUERY_PARAMS[(method, path)] = params
        return handler
    return decorate
