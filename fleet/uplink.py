"""Waiting for a node's first authenticated uplink, as the site's MQTT broker shows it.

The gateway publishes a node's frames only after they passed OSCORE. The frame waited for is
the status frame a node sends when it boots (``<prefix>/<site>/<device>/status``), because it
carries the node's uptime and so proves *this* boot: readings on ``/up`` could come from
another board still running under the same device id (a board being replaced), and a status
frame from such a board has a long uptime. Retained messages are old news and are ignored;
the watch subscribes before the board is reset, so the boot frame cannot be missed.
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

from fleet.errors import NO_BROKER, NO_UPLINK, FleetError
from protocol import topics

MQTT_CONNECT_TIMEOUT_S = 10.0
UPLINK_TIMEOUT_S = 60.0        # the design's promise: a node reports within a minute
UPTIME_SLACK_S = 5.0           # a node's uptime may run this far ahead of our clock


class UplinkWatch:
    """Subscribed from construction until ``close``; ``wait`` returns the first fresh frame's
    topic."""

    def __init__(self, url: str, prefix: str, site: str, device_id: str, *,
                 connect_timeout_s: float = MQTT_CONNECT_TIMEOUT_S) -> None:
        import paho.mqtt.client as paho

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise FleetError("MQTT URL %r: write it as mqtt://HOST:PORT" % url, NO_BROKER)
        self.url = url
        self.topic = topics.device(prefix, site, device_id, topics.STATUS)
        self._frames: list[tuple[str, bytes, float]] = []    # topic, payload, arrival
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        if parts.username:
            client.username_pw_set(parts.username, parts.password)
        if parts.scheme == "mqtts":
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.on_message = self._on_message
        self._client = client
        try:
            client.connect(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts"
                                                          else 1883))
        except OSError as exc:
            raise FleetError("cannot reach the site's MQTT broker %s (%s): check the site "
                             "profile (`fleet site list`), or provision with --no-wait"
                             % (url, exc.strerror or exc), NO_BROKER) from None
        client.loop_start()
        if not self._subscribed.wait(connect_timeout_s):
            self.close()
            why = self._refused or "no answer in %.0f s" % connect_timeout_s
            raise FleetError("the site's MQTT broker %s did not let us subscribe (%s)"
                             % (url, why), NO_BROKER)

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        client.subscribe(self.topic, 1)

    def _on_message(self, _client, _userdata, msg) -> None:
        if msg.retain:
            return
        with self._cond:
            self._frames.append((msg.topic, bytes(msg.payload), time.monotonic()))
            self._cond.notify_all()

    def wait(self, timeout_s: float = UPLINK_TIMEOUT_S, *, booted_at: float | None = None) -> str:
        """The topic of the first status frame of a node booted at ``booted_at`` (monotonic
        time; None: any fresh frame); FleetError(NO_UPLINK) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for topic, payload, arrived in self._frames:
                    if booted_at is None or _uptime_s(payload) <= (
                            arrived - booted_at + UPTIME_SLACK_S):
                        return topic
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetError(
                        "the node did not report within %.0f s (no status frame from this "
                        "boot on %s): check the node's console for its error (WiFi, gateway "
                        "address), and that the gateway runs" % (timeout_s, self.topic),
                        NO_UPLINK)
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _uptime_s(payload: bytes) -> float:
    """The uptime a SenML status frame reports; 0 when it has none."""
    try:
        records = json.loads(payload)
        return float(next(r["v"] for r in records if r.get("n") == "uptime"))
    except (ValueError, TypeError, KeyError, StopIteration, AttributeError):
        return 0.0
