"""Command outcomes (docs/protocol.md §8.6): what became of each downlink command, published on
``<prefix>/<site>/<device>/outcome``.

The gateway publishes them; whoever sent a command (an operator's tool, the fleet) watches
them, so their names and the message's fields are protocol, defined here once.
"""

from __future__ import annotations

import json

QUEUED = "queued"               # stored in the device's queue (the MQTT message is PUBACKed after)
DELIVERED = "delivered"         # sent to the node for the first time
ACKNOWLEDGED = "acknowledged"   # the node's ``ack`` arrived
REJECTED = "rejected"           # the node's ``rej`` arrived
EXPIRED = "expired"             # its ttl_s passed before the node answered it
REFUSED = "refused"             # not queued; ``reason`` says why (no ``id``)
SUPERSEDED = "superseded"       # a newer rule boost replaced it before the node saw it
OUTCOMES = (QUEUED, DELIVERED, ACKNOWLEDGED, REJECTED, EXPIRED, REFUSED, SUPERSEDED)


def payload(device: str, outcome: str, t: float, *, cid: int | None = None,
            name: str | None = None, ref: str | None = None, reason: str | None = None) -> bytes:
    """The outcome message: ``{"device", "outcome", "t", "id", "cmd", "ref", "reason"}``, JSON,
    in that order, without the fields that are None (or an empty reason); ``t`` to the
    millisecond."""
    msg: dict = {"device": device, "outcome": outcome, "t": round(t, 3)}
    if cid is not None:
        msg["id"] = cid
    if name is not None:
        msg["cmd"] = name
    if ref is not None:
        msg["ref"] = ref
    if reason:
        msg["reason"] = reason
    return json.dumps(msg, separators=(",", ":")).encode()
