"""The A2A agent card (/.well-known/agent-card.json), built from Settings and the first operator."""

from __future__ import annotations

from elipc.config import Settings


def build_card(settings: Settings, operator_public_key: str | None) -> dict[str, object]:
    """el-ipc's card shape, plus `did` (the first operator's did:key) once an operator exists."""
    card: dict[str, object] = {
        "name": settings.agent_name,
        "description": settings.agent_desc,
        "url": settings.agent_url,
        "version": "1.0.0",
        "capabilities": {"streaming": False, "pushNotifications": False},
        "authentication": {"schemes": ["Ed25519Signature"]},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {
                "id": "ipc",
                "name": "Inter-Agent Messaging",
                "description": (
                    "Send and receive messages on named channels; each agent reads each "
                    "message once, with long-poll and Ed25519-signed senders."
                ),
                "tags": ["ipc", "messaging", "ed25519"],
            }
        ],
    }
    if operator_public_key:
        from elipc.identity import did_key

        card["did"] = did_key(operator_public_key)
    return card
