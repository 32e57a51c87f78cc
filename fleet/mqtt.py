"""The fleet tools' MQTT client: one connection to a site's broker that subscribes to some
topics and publishes commands, with the errors a user can act on.

Provisioning waits on it for a node's first status frame (fleet/uplink.py); ``fleet update``
publishes the ``ota`` command and follows the nodes' outcomes and status frames through it
(fleet/update.py). Messages are collected in arrival order by paho's network thread and read
by the caller with ``wait``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleet.errors import NO_BROKER, FleetError

MQTT_CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool
    arrived: float           # time.monotonic()


class BrokerSession:
    """Connected and subscribed to ``topics`` from construction until ``close``."""

    def __init__(self, url: str, topics: list[str], *, hint: str = "",
                 connect_timeout_s: float = MQTT_CONNECT_TIMEOUT_S) -> None:
        import paho.mqtt.client as paho

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise FleetError("MQTT URL %r: write it as mqtt://HOST:PORT" % url, NO_BROKER)
        self.url = url
        self.messages: list[Message] = []
        self._topics = topics
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
                             "profile (`fleet site list`)%s"
                             % (url, exc.strerror or exc, hint), NO_BROKER) from None
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
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, _client, _userdata, msg) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                                         time.monotonic()))
            self._cond.notify_all()

    def wait(self, seen: int, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` until more than ``seen`` messages arrived; their count."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) > seen, max(timeout_s, 0.0))
            return len(self.messages)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:
            raise FleetError("the broker %s did not take the message on %s (%s)"
                             % (self.url, topic, exc), NO_BROKER) from None
        if not info.is_published():
            raise FleetError("the broker %s did not acknowledge the message on %s within "
                             "%.0f s" % (self.url, topic, PUBLISH_TIMEOUT_S), NO_BROKER)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
