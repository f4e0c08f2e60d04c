"""The OpenAPI 3.1 description of the HTTP API: the one source of truth for machines.

`describe(settings)` is what `GET /openapi.json` serves: its limits are the running server's
(content size, the longest long-poll), and it declares the bearer key only when one is set.
`docs/openapi.json` is the description of a server on default settings, written by
`python -m elipc.server.openapi` and held to this module by the tests, as are the Klein routes
(both ways) and docs/http-api.md. Errors are `{"error": "<what was wrong>"}` everywhere.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from elipc import __version__
from elipc.config import (
    DEFAULT_PAGE,
    DEFAULT_WAIT_TIMEOUT,
    MAX_LINGER,
    MAX_PAGE,
    Settings,
)
from elipc.model import MAX_NAME_CHARS, RESERVED_PREFIX

Schema = dict[str, Any]

# Names: no C0 or C1 control characters, no line or paragraph separator. (Text is also
# refused when it is not UTF-8, as a lone surrogate escaped in JSON is not: a rule of JSON
# text, not said again here.)
NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
PEM_PATTERN = ("^-----BEGIN PUBLIC KEY-----\\r?\\nMCowBQYDK2VwAyEA[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\\r?\\n"
               "-----END PUBLIC KEY-----\\r?\\n?$")
SIGNATURE_PATTERN = "^[A-Za-z0-9+/]{86}==$"
NONCE_PATTERN = "^[A-Za-z0-9_-]{8,64}$"
ETAG = {"description": "the card's entity tag", "required": True, "schema": {"type": "string"}}
CACHE_CONTROL = {"description": "how long the card may be kept", "required": True,
                 "schema": {"type": "string", "pattern": "^max-age=[0-9]+$"}}
RETRY_AFTER = {"description": "whole seconds until a request may pass", "required": True,
               "schema": {"type": "integer", "minimum": 1}}
MORE = {"description": "whether more messages wait behind this page", "required": True,
        "schema": {"enum": ["true", "false"]}}


NULL: Schema = {"type": "null"}
SIGNATURE: Schema = {"type": "string", "minLength": 88, "maxLength": 88,
                     "pattern": SIGNATURE_PATTERN}
TIMESTAMP: Schema = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999}


def name(description: str) -> Schema:
    """A channel, agent or sender name."""
    return {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS,
            "pattern": NAME_PATTERN, "description": description}


def ref(schema: str) -> Schema:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{schema}"}


def json_content(schema: Schema) -> Schema:
    """An application/json body of `schema`."""
    return {"application/json": {"schema": schema}}


def answer(description: str, schema: Schema, **headers: Schema) -> Schema:
    """A JSON answer, with response headers when given."""
    described: Schema = {"description": description, "content": json_content(schema)}
    if headers:
        described["headers"] = headers
    return described


ERRORS = {
    "400": "the request is malformed: a bad field, parameter, name or header (see error)",
    "401": "the bearer key is missing or wrong, or a secure-mode read carries no signature",
    "403": "secure mode refused it (unsigned, unknown sender, bad or stale signature, ...)",
    "409": "already done: a reused nonce or registration, or an ack past the last message",
    "411": "a body with neither Content-Length nor chunked encoding",
    "413": "the body or the message content is over its limit",
    "429": "over the rate limit: wait Retry-After seconds",
    "503": "the database is unavailable (busy, full, or its file replaced); retry later",
}


def errors(*statuses: str) -> dict[str, Schema]:
    """The error answers of an operation: those every request may get, and `statuses`."""
    chosen = {"400", "401", "413", "429", "503", *statuses}
    return {status: {"$ref": f"#/components/responses/E{status}"}
            for status in sorted(chosen)}


def query(param: str, schema: Schema, description: str, required: bool = False) -> Schema:
    """A query parameter."""
    return {"name": param, "in": "query", "required": required, "schema": schema,
            "description": description}


def read_signature_headers(what: str) -> list[Schema]:
    """The three optional headers of a signed read (or ack, health)."""
    return [
        {"name": "X-Elipc-Timestamp", "in": "header", "required": False,
         "schema": {"type": "string", "minLength": 1, "maxLength": 12,
                    "pattern": "^[0-9]{1,12}$"},
         "description": f"secure mode: integer Unix seconds of the {what} signature"},
        {"name": "X-Elipc-Nonce", "in": "header", "required": False,
         "schema": {"type": "string", "minLength": 8, "maxLength": 64,
                    "pattern": NONCE_PATTERN},
         "description": "secure mode: never reused by the agent within the replay window"},
        {"name": "X-Elipc-Signature", "in": "header", "required": False,
         "schema": {"type": "string", "minLength": 86, "maxLength": 88,
                    "pattern": "^[A-Za-z0-9+/]{86}(==)?$"},
         "description": f"secure mode: base64 Ed25519 over the elipc/2 {what} payload "
                        "(its == padding may be left out)"},
    ]


def operation(summary: str, description: str, responses: dict[str, Schema],
              parameters: list[Schema] | None = None, body: Schema | None = None) -> Schema:
    """One operation."""
    described: Schema = {"summary": summary, "description": description,
                         "responses": responses}
    if parameters:
        described["parameters"] = parameters
    if body is not None:
        described["requestBody"] = {"required": True, "content": json_content(body)}
    return described


def schemas(settings: Settings) -> dict[str, Schema]:
    """The component schemas."""
    text = {"type": "string"}
    number = {"type": "number"}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "SendBody": {
            "type": "object", "required": ["channel", "sender", "content"],
            "properties": {
                "channel": {**name("a channel outside the reserved elipc/ space"),
                            "not": {"pattern": f"^{RESERVED_PREFIX}"}},
                "sender": name("who sends it"),
                "content": {"type": "string", "minLength": 1,
                            "maxLength": settings.max_content_bytes,
                            "description": "UTF-8 text of at most "
                                           f"{settings.max_content_bytes} bytes"},
                "signature": {"type": ["string", "null"],
                              "description": "base64 Ed25519 signature (elipc/2 with "
                                             "timestamp and nonce, or el-ipc's alone); empty "
                                             "or null: unsigned"},
                "timestamp": {"type": ["integer", "null"]},
                "nonce": {"type": ["string", "null"]},
                "idempotency_key": {"anyOf": [{"type": "null"},
                                              name("one logical send of this sender")]},
            },
            # Unsigned; el-ipc's signature alone; or elipc/2's signature, timestamp and nonce.
            "anyOf": [
                {"properties": {"signature": {"enum": ["", None]}, "timestamp": NULL,
                                "nonce": NULL}},
                {"required": ["signature"],
                 "properties": {"signature": SIGNATURE, "timestamp": NULL, "nonce": NULL}},
                {"required": ["signature", "timestamp", "nonce"],
                 "properties": {"signature": SIGNATURE, "timestamp": TIMESTAMP,
                                "nonce": {"type": "string", "pattern": NONCE_PATTERN}}},
            ],
        },
        "Accepted": {"type": "object", "required": ["ok", "id"], "properties": {
            "ok": {"const": True}, "id": {"type": "integer", "minimum": 1},
            "duplicate": {"const": True}}},
        "RegisterBody": {
            "type": "object",
            "required": ["name", "public_key", "operator", "timestamp", "operator_signature"],
            "properties": {
                "name": name("the agent"), "operator": name("the authorizing operator"),
                "public_key": {"type": "string", "pattern": PEM_PATTERN,
                               "description": "the agent's Ed25519 public key (PEM)"},
                "identity": {"anyOf": [{"type": "null"}, {"const": ""},
                                       name("a secondary identifier")]},
                "timestamp": TIMESTAMP,
                "operator_signature": SIGNATURE,
            },
            "not": {"required": ["operator_key"]},
        },
        "Registered": {"type": "object", "required": ["ok", "message"], "properties": {
            "ok": {"const": True}, "message": text}},
        "AckBody": {"type": "object", "required": ["channel", "agent", "up_to"], "properties": {
            "channel": name("the channel"), "agent": name("whose watermark moves"),
            "up_to": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}},
        "Acked": {"type": "object", "required": ["ok", "watermark"], "properties": {
            "ok": {"const": True}, "watermark": {"type": "integer", "minimum": 0}}},
        "Message": {
            "type": "object", "required": ["id", "sender", "content", "timestamp"],
            "properties": {
                "id": {"type": "integer", "minimum": 1}, "sender": text, "content": text,
                "timestamp": {**number, "description": "when the server stored it"},
                "signed": {"const": True}, "signature": text,
                "signed_timestamp": {"type": "integer"}, "nonce": text}},
        "Channel": {"type": "object", "required": ["channel", "count", "last_message"],
                    "properties": {"channel": text, "count": {"type": "integer"},
                                   "last_message": number}},
        "Agent": {
            "type": "object",
            "required": ["name", "identity", "role", "registered_by", "created_at",
                         "public_key", "did", "fingerprint"],
            "properties": {
                "name": text, "identity": text, "role": {"enum": ["operator", "agent"]},
                "registered_by": {"type": ["string", "null"]}, "created_at": number,
                "public_key": text, "did": {"type": ["string", "null"]},
                "fingerprint": {"type": ["string", "null"],
                                "description": "SHA256: and the base64 SHA-256 of the raw "
                                               "key, as OpenSSH shows it"}}},
        "Health": {
            "type": "object",
            "required": ["status", "pending", "secure_mode", "security_events", "oldest_id"],
            "properties": {
                "status": {"const": "ok"}, "pending": {"type": "integer", "minimum": 0},
                "secure_mode": {"type": "boolean"},
                "security_events": {"type": "object",
                                    "additionalProperties": {"type": "integer"}},
                "oldest_id": {"type": ["integer", "null"]}}},
        "CardSignatures": {"type": "object", "required": ["signatures"], "properties": {
            "signatures": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
                "type": "object", "required": ["protected", "signature"], "properties": {
                    "protected": text, "signature": text}}}}},
        "CardSigned": {"type": "object", "required": ["ok", "signed_by"], "properties": {
            "ok": {"const": True}, "signed_by": text}},
        "AgentCard": {"type": "object", "required": ["name", "description", "version"],
                      "description": "the A2A agent card (see docs/http-api.md)"},
    }


def paths(settings: Settings) -> dict[str, Schema]:
    """Every route."""
    from elipc.server import openapi_views  # it builds on this module's helpers
    wait_max = settings.max_wait
    linger_max = min(MAX_LINGER, wait_max)
    channel, agent = name("the channel"), name("the reading agent")
    return {
        "/send": {"post": operation(
            "Send a message",
            "Stores the message (once per Idempotency-Key) and wakes the channel's waiters. "
            "Secure mode: signed by the sender's registered key.",
            {"200": answer("stored (on disk)", ref("Accepted")), **errors("403", "409", "411")},
            [{"name": "Idempotency-Key", "in": "header", "required": False,
              "schema": name("one logical send of this sender (24 h)")}],
            ref("SendBody"))},
        "/register": {"post": operation(
            "Register an agent's key",
            "An operator's authorization, signed locally (elipc register). Never send a "
            "private key: a body with operator_key is refused.",
            {"200": answer("registered", ref("Registered")), **errors("403", "409", "411")},
            body=ref("RegisterBody"))},
        "/messages": {"get": operation(
            "Read unread messages",
            "The agent's unread messages, oldest first; wait=true long-polls for a first one. "
            "The watermark moves past them (ack=manual: on POST /ack).",
            {"200": answer("messages, oldest first", {"type": "array", "items": ref("Message")},
                           **{"X-Elipc-More": MORE}),
             **errors("403")},
            [query("channel", channel, "the channel", required=True),
             query("agent", agent, "whose unread messages (its watermark moves)",
                   required=True),
             query("wait", {"enum": ["true", "false"]}, "block until a first message"),
             query("timeout", {"type": "number", "minimum": 0, "maximum": wait_max},
                   f"seconds a wait may last (default {min(DEFAULT_WAIT_TIMEOUT, wait_max):g})"),
             query("linger", {"type": "number", "minimum": 0, "maximum": linger_max},
                   "seconds to gather a burst once something is unread"),
             query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                   f"at most this many (default {DEFAULT_PAGE})"),
             query("ack", {"enum": ["auto", "manual"]},
                   "manual: nothing moves until POST /ack"),
             *read_signature_headers("read")])},
        "/history": {"get": operation(
            "A channel's history",
            "Messages after after_id (or the page just before before_id), oldest first, "
            "moving nothing. In secure mode the elipc/ channels' history is not public.",
            {"200": answer("messages, oldest first", {"type": "array", "items": ref("Message")},
                           **{"X-Elipc-More": MORE}),
             **errors("403")},
            [query("channel", channel, "the channel", required=True),
             query("after_id", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                   "only messages with a higher id (default 0)"),
             query("before_id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                   "the page just before this id, oldest first, none at or below "
                   "after_id (scrolling back; X-Elipc-More: older ones remain)"),
             query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                   f"at most this many (default {DEFAULT_PAGE})")])},
        "/ack": {"post": operation(
            "Acknowledge messages read with ack=manual",
            "Moves the agent's watermark to up_to (never backwards).",
            {"200": answer("the watermark", ref("Acked")), **errors("403", "409", "411")},
            read_signature_headers("ack"), ref("AckBody"))},
        "/stream": {"get": operation(
            "Stream messages as they commit (Server-Sent Events)",
            "One event per message (id: its id, data: its JSON with its channel), in id order "
            "across the channels, a comment every 15 s. With agent: ack=auto moves the "
            "watermarks as events are written, ack=manual on POST /ack or a reconnection with "
            "Last-Event-ID. Without agent: history from after_id (or Last-Event-ID), live, "
            "moving nothing. Secure mode: the agent's elipc/2 stream signature.",
            {"200": {"description": "the event stream (it lasts until either side closes it)",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             **errors("403")},
            [{"name": "channel", "in": "query", "required": True, "style": "form",
              "explode": True, "description": "a channel to follow (repeat for more, at most 64)",
              "schema": {"type": "array", "minItems": 1, "maxItems": 64,
                         "items": name("a channel")}},
             query("agent", agent, "whose unread messages (its watermarks move)"),
             query("ack", {"enum": ["auto", "manual"]}, "with agent: manual moves nothing "
                   "until POST /ack or Last-Event-ID"),
             query("after_id", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                   "without agent: stream the history after this id"),
             {"name": "Last-Event-ID", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
              "description": "the last event received (reconnecting)"},
             *read_signature_headers("stream")])},
        "/channels": {"get": operation(
            "List channels", "Every channel with its count and last message time.",
            {"200": answer("channels, most recently active first",
                           {"type": "array", "items": ref("Channel")}), **errors()})},
        "/agents": {"get": operation(
            "List operators and agents", "The directory, with public keys and did:keys.",
            {"200": answer("the directory, oldest first",
                           {"type": "array", "items": ref("Agent")}), **errors()})},
        "/health": {"get": operation(
            "Status", "With channel and agent, that agent's pending count.",
            {"200": answer("the status", ref("Health")), **errors("403")},
            [query("channel", channel, "with agent: count its unread here"),
             query("agent", agent, "with channel: whose unread to count"),
             *read_signature_headers("read")])},
        "/.well-known/agent-card.json": {"get": operation(
            "The A2A agent card",
            "Who this server is (A2A 1.0, and el-ipc's fields), with a did:key once an operator "
            "exists and the operator's JWS signatures while they match it.",
            {"200": answer("the card", ref("AgentCard"), **{"ETag": ETAG,
                                                            "Cache-Control": CACHE_CONTROL}),
             "304": {"description": "If-None-Match named this card's ETag",
                     "headers": {"ETag": ETAG, "Cache-Control": CACHE_CONTROL}},
             **errors()},
            [{"name": "If-None-Match", "in": "header", "required": False,
              "schema": {"type": "string"}, "description": "an ETag seen before"}])},
        "/card/signatures": {"post": operation(
            "Sign the agent card",
            "An operator's two JWS signatures of the card served now, made locally "
            "(elipc card sign): kept, and served while the card stays the same.",
            {"200": answer("kept", ref("CardSigned")), **errors("403", "411")},
            body=ref("CardSignatures"))},
        "/metrics": {"get": operation(
            "Prometheus metrics",
            "Counters, gauges and histograms of this server, and its process, in Prometheus' "
            "text format (behind the bearer key when one is set).",
            {"200": {"description": "the text exposition, version 0.0.4",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
             "404": answer("metrics are off (IPC_METRICS=0)", ref("Error")),
             **errors()})},
        **openapi_views.paths(),
        "/openapi.json": {"get": operation(
            "This description", "The OpenAPI 3.1 description of this server.",
            {"200": answer("the description", {"type": "object"}), **errors()})},
    }


def describe(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server with `settings`."""
    from elipc.server import openapi_views
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "elipc", "version": __version__,
                 "description": "A message queue between agents. Every error is "
                                "{\"error\": \"<what was wrong>\"}."},
        "servers": [{"url": settings.agent_url}],
        "paths": paths(settings),
        "components": {
            "schemas": {**schemas(settings), **openapi_views.schemas()},
            "responses": {f"E{status}": answer(text, ref("Error"), **(
                {"Retry-After": RETRY_AFTER} if status == "429" else {}))
                          for status, text in ERRORS.items()},
        },
    }
    if settings.api_key:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "IPC_API_KEY, on every request"}}
        document["security"] = [{"bearer": []}]
    return document


def main() -> None:
    """Print the description of a server on default settings (docs/openapi.json)."""
    json.dump(describe(Settings.load({})), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
