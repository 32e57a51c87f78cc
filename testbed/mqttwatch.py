"""An MQTT subscriber in a background thread that keeps what it sees, and readers of those
messages (SenML records and command outcomes per device) for the demo and the tests."""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

import paho.mqtt.client as paho

from protocol import senmljson, topics


class MqttWatch:
    """Subscribes to ``topic`` in a background thread and keeps every message it sees."""

    def __init__(self, url: str, topic: str = "#",
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._on_message = on_message
        self._subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._message
        self._client.connect(host, int(port))
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("could not subscribe to %s on %s" % (topic, url))

    def _message(self, _client, _userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()
        if self._on_message:
            self._on_message(msg.topic, bytes(msg.payload))

    def wait_for(self, predicate: Callable[[str, bytes], bool], timeout: float,
                 count: int = 1) -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages match; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(*m)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("%d of %d matching messages after %.0f s; saw topics %s"
                                       % (len(found), count, timeout,
                                          sorted({t for t, _ in self.messages})))
                self._cond.wait(remaining)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()



def records_of(messages: list[tuple[str, bytes]], device: str,
               leaf: str = topics.UP) -> list[dict]:
    """The SenML records published for ``device`` on ``leaf`` ("up", "status"), in arrival
    order, flattened: each a dict with n, the value under "v" (whatever its kind), t and
    "frame" (the index of the MQTT message it came in)."""
    out = []
    frame = 0
    for topic, payload in list(messages):
        where = topics.split(topic)
        if where is None or (where.device, where.leaf) != (device, leaf):
            continue
        for rec in senmljson.records(payload):
            out.append({**rec, "frame": frame})
        frame += 1
    return out



def outcomes_of(messages: list[tuple[str, bytes]], device: str) -> list[dict]:
    """The gateway's command outcomes (<prefix>/<site>/<device>/outcome) for ``device``."""
    return [json.loads(p) for t, p in list(messages)
            if (where := topics.split(t)) is not None
            and (where.device, where.leaf) == (device, topics.OUTCOME)]


