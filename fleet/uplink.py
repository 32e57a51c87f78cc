"""Waiting for a node's first authenticated uplink, as the site's MQTT broker shows it.

The gateway publishes a node's frames only after they passed OSCORE. The frame waited for is
the status frame a node sends when it boots (``<prefix>/<site>/<device>/status``), because it
carries the node's uptime and so proves *this* boot: readings on ``/up`` could come from
another board still running under the same device id (a board being replaced), and a status
frame from such a board has a long uptime. Retained messages are old news and are ignored;
the watch subscribes before the board is reset, so the boot frame cannot be missed.
"""

from __future__ import annotations

import time

from fleet.errors import NO_UPLINK, FleetError
from fleet.mqtt import MQTT_CONNECT_TIMEOUT_S, BrokerSession
from protocol import senmljson, topics

UPLINK_TIMEOUT_S = 60.0        # the design's promise: a node reports within a minute
UPTIME_SLACK_S = 5.0           # a node's uptime may run this far ahead of our clock


class UplinkWatch:
    """Subscribed from construction until ``close``; ``wait`` returns the first fresh frame's
    topic."""

    def __init__(self, url: str, prefix: str, site: str, device_id: str, *,
                 connect_timeout_s: float = MQTT_CONNECT_TIMEOUT_S) -> None:
        self.topic = topics.device(prefix, site, device_id, topics.STATUS)
        self._session = BrokerSession(url, [self.topic], hint=", or provision with --no-wait",
                                      connect_timeout_s=connect_timeout_s)

    def wait(self, timeout_s: float = UPLINK_TIMEOUT_S, *, booted_at: float | None = None) -> str:
        """The topic of the first status frame of a node booted at ``booted_at`` (monotonic
        time; None: any fresh frame); FleetError(NO_UPLINK) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for msg in self._session.messages[seen:]:
                if not msg.retained and (booted_at is None or _uptime_s(msg.payload) <= (
                        msg.arrived - booted_at + UPTIME_SLACK_S)):
                    return msg.topic
            seen = len(self._session.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise FleetError(
                    "the node did not report within %.0f s (no status frame from this "
                    "boot on %s): check the node's console for its error (WiFi, gateway "
                    "address), and that the gateway runs" % (timeout_s, self.topic),
                    NO_UPLINK)
            self._session.wait(seen, left)

    def close(self) -> None:
        self._session.close()


def _uptime_s(payload: bytes) -> float:
    """The uptime a SenML status frame reports; 0 when it has none."""
    uptime = senmljson.values(payload).get("uptime")
    return float(uptime) if isinstance(uptime, (int, float)) else 0.0
