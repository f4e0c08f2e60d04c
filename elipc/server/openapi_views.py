"""The OpenAPI description of the routes the console reads (server/views.py), built with
openapi.py's helpers; openapi.describe puts them with the others."""

from __future__ import annotations

from elipc.server.openapi import (
    MORE,
    Schema,
    answer,
    errors,
    name,
    operation,
    query,
    read_signature_headers,
    ref,
)


def paths() -> dict[str, Schema]:
    """The routes the console reads (server/views.py); none moves anything."""
    channel = name("the channel")
    whole = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    return {
        "/activity": {"get": operation(
            "What changed since an id",
            "Each channel that gained messages after after_id (at most 50,000 ids looked at a "
            "call: last_id says how far it looked), and the server's health at a glance. "
            "Without after_id: only last_id, where to start.",
            {"200": answer("the activity", ref("Activity")), **errors()},
            [query("after_id", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                   "the last_id of the previous call")])},
        "/delivery": {"get": operation(
            "Delivery state of a channel",
            "Each agent with a watermark on the channel (at most 1,000, by name), how far "
            "it read and how many messages wait for it. Moves nothing. In secure mode not "
            "for the elipc/ channels.",
            {"200": answer("the delivery state", ref("Delivery")), **errors("403")},
            [query("channel", channel, "the channel", required=True)])},
        "/search": {"get": operation(
            "Search messages",
            "Messages whose content holds every word of q (a trailing * matches a prefix), "
            "newest first, content cut at 2,000 characters. In secure mode never the elipc/ "
            "channels.",
            {"200": answer("matching messages, newest first",
                           {"type": "array", "items": ref("Found")},
                           **{"X-Elipc-More": MORE}),
             **errors("403")},
            [query("q", {"type": "string", "minLength": 1, "maxLength": 500},
                   "the words to find (at most 32)", required=True),
             query("channel", channel, "only this channel"),
             query("sender", name("the sender"), "only this sender"),
             query("before_id", whole, "only messages with a lower id (the next page)"),
             query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                   "at most this many (default 50)")])},
        "/security": {"get": operation(
            "Security events",
            "The refusals the server recorded (elipc/security), newest first, and the counts "
            "since it started. Secure mode: an operator's elipc/2 read signature of the "
            "channel elipc/security, as agent.",
            {"200": answer("the events", ref("SecurityEvents")), **errors("403")},
            [query("agent", name("the operator reading"), "secure mode: the operator"),
             query("before_id", whole, "only events with a lower id (the next page)"),
             query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                   "at most this many (default 100)"),
             *read_signature_headers("read")])},
    }


def schemas() -> dict[str, Schema]:
    """The shapes of the console's routes' answers."""
    count = {"type": "integer", "minimum": 0}
    return {
        "Activity": {
            "type": "object",
            "required": ["status", "secure_mode", "long_polls", "streams", "security_events",
                         "last_id", "channels"],
            "properties": {
                "status": {"const": "ok"}, "secure_mode": {"type": "boolean"},
                "long_polls": count, "streams": count,
                "security_events": {"type": "object", "additionalProperties": count},
                "last_id": count,
                "channels": {"type": "array", "items": {
                    "type": "object",
                    "required": ["channel", "added", "last_id", "last_message"],
                    "properties": {"channel": {"type": "string"}, "added": count,
                                   "last_id": count, "last_message": {"type": "number"}}}}}},
        "Delivery": {
            "type": "object", "required": ["channel", "last_id", "count", "agents", "more"],
            "properties": {
                "channel": {"type": "string"}, "last_id": count, "count": count,
                "more": {"type": "boolean"},
                "agents": {"type": "array", "items": {
                    "type": "object", "required": ["agent", "watermark", "pending"],
                    "properties": {"agent": {"type": "string"}, "watermark": count,
                                   "pending": count}}}}},
        "Found": {"allOf": [ref("Message"), {
            "type": "object", "required": ["channel"],
            "properties": {"channel": {"type": "string"}, "truncated": {"const": True},
                           "content_length": count, "full": {"type": "string"}}}]},
        "SecurityEvents": {
            "type": "object", "required": ["secure_mode", "counts", "events", "more"],
            "properties": {
                "secure_mode": {"type": "boolean"},
                "counts": {"type": "object", "additionalProperties": count},
                "more": {"type": "boolean"},
                "events": {"type": "array", "items": {
                    "type": "object", "required": ["id", "timestamp"],
                    "properties": {"id": count, "timestamp": {"type": "number"},
                                   "kind": {"type": "string"}, "reason": {"type": "string"},
                                   "remote": {"type": "string"}}}}}},
    }
