"""Reading an HTTP request into domain values: query parameters, JSON bodies, signatures,
idempotency keys. Everything wrong with a request becomes an InvalidInput (or TooLarge, or
LengthRequired) saying what; the web layer decides the status.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest

from elipc import wire
from elipc.config import seconds_setting
from elipc.model import InvalidInput, Signed, check_name

READ_HEADERS = (b"x-elipc-timestamp", b"x-elipc-nonce", b"x-elipc-signature")


class LengthRequired(InvalidInput):
    """A body came with neither Content-Length nor chunked framing."""


def query(request: IRequest, known: tuple[str, ...],
          repeated: tuple[str, ...] = ()) -> dict[str, str]:
    """The URL's query parameters, each once (those in `repeated` any number of times,
    their values joined by newlines, which no name may hold) and UTF-8; any other parameter
    is refused.

    Read from the URL itself: Twisted's request.args also holds a form-encoded body's fields,
    and curl -d sends JSON labelled as a form.
    """
    params: dict[str, str] = {}
    raw_query = request.uri.partition(b"?")[2]
    for pair in filter(None, raw_query.split(b"&")):
        raw_name, _, raw_value = pair.partition(b"=")
        name = utf8(_unquote(raw_name), "query parameter name")
        if name not in known:
            raise InvalidInput(f"unknown query parameter: {name!r}")
        value = utf8(_unquote(raw_value), name)
        if name in repeated and "\n" in value:
            raise InvalidInput(f"{name} must not contain control characters")
        if name in params and name not in repeated:
            raise InvalidInput(f"query parameter {name} given more than once")
        params[name] = f"{params[name]}\n{value}" if name in params else value
    return params


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def utf8(raw: bytes, what: str) -> str:
    """`raw` as text, or InvalidInput naming `what`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not valid UTF-8") from None


def flag(value: str, name: str) -> bool:
    """A `true`/`false` query parameter."""
    if value in ("true", "false"):
        return value == "true"
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


def seconds(params: dict[str, str], name: str, default: float, maximum: float) -> float:
    """A number of seconds from 0 to `maximum`, `default` when absent."""
    return seconds_setting(params[name], name, maximum) if name in params else default


def whole(params: dict[str, str], name: str, default: int, maximum: int,
          minimum: int = 0) -> int:
    """A whole number from `minimum` to `maximum`, `default` when absent."""
    if name not in params:
        return default
    text = params[name]
    # Length first: Python refuses to turn over 4,300 digits into an int (a ValueError).
    if (len(text) > 30 or not (text.isascii() and text.isdigit())
            or not minimum <= int(text) <= maximum):
        raise InvalidInput(f"{name} must be a whole number from {minimum} to {maximum}")
    return int(text)


def ack_mode(value: str) -> bool:
    """Whether `ack=` asks for manual acknowledgement."""
    if value not in ("auto", "manual"):
        raise InvalidInput(f"ack must be auto or manual, not {value!r}")
    return value == "manual"


def json_object(request: IRequest) -> dict[str, Any]:
    """The body as a JSON object, or an error saying what is wrong with it."""
    headers = request.requestHeaders
    if not headers.hasHeader(b"content-length") and not headers.hasHeader(b"transfer-encoding"):
        raise LengthRequired("Content-Length required")
    raw = request.content.read()
    if not raw:
        raise InvalidInput("request body is empty; send a JSON object")
    try:
        body = json.loads(utf8(raw, "request body"))
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def idempotency_key(request: IRequest, body: dict[str, Any]) -> str | None:
    """The send's idempotency key: the Idempotency-Key header, else the body's field (which,
    when given, must be a valid key even where the header wins)."""
    header = request.getHeader(b"idempotency-key")
    field = body.get("idempotency_key")
    if field is not None:
        check_name(field, "idempotency_key")
    key = field if header is None else utf8(header, "Idempotency-Key")
    return None if key is None else check_name(key, "idempotency key")


def read_signature(request: IRequest) -> Signed | None:
    """The X-Elipc-* headers of a signed read or ack, or None when there are none."""
    return wire.read_signature(*(_header(request, name) for name in READ_HEADERS))


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("ascii", "replace")


def up_to(body: dict[str, Any]) -> int:
    """An ack's message id."""
    value = wire.whole_number(body.get("up_to"))
    if value is None or not 0 <= value < 2**63:
        raise InvalidInput("up_to must be a message id (a whole number)")
    return value


def last_event_id(request: IRequest) -> int | None:
    """A stream's Last-Event-ID (the id of the last event a reconnecting client got)."""
    value = request.getHeader(b"last-event-id")
    if value is None:
        return None
    text = value.decode("ascii", "replace").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidInput("Last-Event-ID must be a message id")
    return int(text)
