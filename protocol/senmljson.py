"""The SenML JSON frames the gateway publishes on ``up`` and ``status`` (docs/protocol.md §7),
read back: by ``fleet update`` and provisioning (a node's status frames), and the testbed.

Each record keeps its value under the key of its kind (``v``, ``vb``, ``vs``); a reader wants
the name and the value, whatever the kind.
"""

from __future__ import annotations

import json

VALUE_KEYS = ("v", "vb", "vs")


def records(payload: bytes) -> list[dict]:
    """The frame's records flattened to {"n", "v", "t"}; ValueError for what is no SenML JSON
    list of records."""
    try:
        data = json.loads(payload)
        return [{"n": r["n"], "v": next((r[k] for k in VALUE_KEYS if k in r), None),
                 "t": r.get("t")} for r in data]
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError("not a SenML JSON frame: %s" % exc) from None


def values(payload: bytes) -> dict[str, object]:
    """name → value of a frame (the last record of a name wins); {} for a malformed frame."""
    try:
        return {r["n"]: r["v"] for r in records(payload)}
    except ValueError:
        return {}
