"""The MQTT topic names of docs/protocol.md §7: built and read back in one place.

A device's topics are ``<prefix>/<site>/<device>/<leaf>``; the gateway's own are
``<prefix>/gateway/<id>/state`` and ``.../stats``. The gateway publishes on them, subscribes to
the ``down`` leaf of every device, and the fleet, the testbed and the benchmarks subscribe and
read them back: each spells the format through these functions, so that a change of the
contract is one change here (the tests keep literal topics: they pin the contract).

``<site>`` and ``<device>`` come from the registry and never contain ``/``; the prefix may (a
broker shared by several deployments), so a topic is read from the right.
"""

from __future__ import annotations

from typing import NamedTuple

from protocol import wire

# The leaves of a device's topics
UP = "up"              # readings (POST /u), SenML JSON
STATUS = "status"      # status frames (POST /s), SenML JSON
STATE = "state"        # the device's latest status values, retained JSON
OUTCOME = "outcome"    # what became of a command (§8.6)
DOWN = "down"          # commands to the device (§8.1), to the gateway
DEVICE_LEAVES = (UP, STATUS, STATE, OUTCOME, DOWN)
# Leaves that carry a node's frames, one message per accepted frame, and the resource whose
# frames each carries (docs/protocol.md §2, §7).
FRAME_LEAVES = (UP, STATUS)
RESOURCE_LEAF = {wire.UPLINK: UP, wire.STATUS: STATUS}

GATEWAY = "gateway"    # <prefix>/gateway/<id>/...
GATEWAY_STATE = "state"   # retained "online" / "offline" (and the last will)
GATEWAY_STATS = "stats"   # retained JSON counters

ANY = "+"              # MQTT single-level wildcard


class DeviceTopic(NamedTuple):
    site: str
    device: str
    leaf: str


def device(prefix: str, site: str, device_id: str, leaf: str) -> str:
    """``<prefix>/<site>/<device>/<leaf>``."""
    return "%s/%s/%s/%s" % (prefix, site, device_id, leaf)


def device_filter(prefix: str, leaf: str) -> str:
    """The subscription to ``leaf`` of every device: ``<prefix>/+/+/<leaf>``."""
    return device(prefix, ANY, ANY, leaf)


def down_filter(prefix: str) -> str:
    """The gateway's subscription to commands: ``<prefix>/+/+/down``."""
    return device_filter(prefix, DOWN)


def gateway_state(prefix: str, gateway_id: str) -> str:
    return "%s/%s/%s/%s" % (prefix, GATEWAY, gateway_id, GATEWAY_STATE)


def gateway_stats(prefix: str, gateway_id: str) -> str:
    return "%s/%s/%s/%s" % (prefix, GATEWAY, gateway_id, GATEWAY_STATS)


def split(topic: str) -> DeviceTopic | None:
    """(site, device, leaf) of a device topic under any prefix; None for a topic with fewer
    than four levels. Read from the right: the caller that knows its prefix uses ``parse``."""
    parts = topic.rsplit("/", 3)
    if len(parts) != 4:
        return None
    return DeviceTopic(parts[1], parts[2], parts[3])


def parse(prefix: str, topic: str) -> DeviceTopic | None:
    """(site, device, leaf) of ``<prefix>/<site>/<device>/<leaf>``; None for anything else."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) != 3:
        return None
    return DeviceTopic(parts[0], parts[1], parts[2])


def parse_down(prefix: str, topic: str) -> tuple[str, str] | None:
    """(site, device) of a command topic ``<prefix>/<site>/<device>/down``; None otherwise."""
    parsed = parse(prefix, topic)
    if parsed is None or parsed.leaf != DOWN:
        return None
    return parsed.site, parsed.device


def leaf(topic: str) -> str:
    """The last level of a topic (``up``, ``outcome``, ...)."""
    return topic.rpartition("/")[2]
