"""The gateway's MQTT side: one connection, kept up with backoff, QoS-1 publishes.

The gateway's own state topic is retained: "online" once connected, "offline" by the broker's
last will when the gateway vanishes, and "offline" again on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiomqtt

from gateway.config import MqttConfig
from gateway.errors import ForwardError

log = logging.getLogger("gateway.mqtt")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class Forwarder:
    def __init__(self, cfg: MqttConfig, gateway_id: str) -> None:
        self.cfg = cfg
        self.state_topic = "%s/gateway/%s/state" % (cfg.prefix, gateway_id)
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def topic(self, site: str, device: str, leaf: str) -> str:
        return "%s/%s/%s/%s" % (self.cfg.prefix, site, device, leaf)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and return once the broker has acknowledged it (PUBACK)."""
        client = self._client
        if client is None:
            raise ForwardError("not connected to the broker %s" % self.cfg.url)
        try:
            await client.publish(topic, payload, qos=1, retain=retain,
                                 timeout=self.cfg.publish_timeout_s)
        except aiomqtt.MqttError as exc:
            raise ForwardError("publish to %s failed: %s" % (topic, exc)) from None

    async def run(self) -> None:
        """Connect, stay connected, reconnect with jittered exponential backoff. Never returns."""
        backoff = BACKOFF_START_S
        while True:
            try:
                async with aiomqtt.Client(
                    self.cfg.host, self.cfg.port,
                    username=self.cfg.username, password=self.cfg.password,
                    identifier="citytestbed-%s" % self.state_topic.split("/")[-2],
                    will=aiomqtt.Will(self.state_topic, b"offline", qos=1, retain=True),
                    timeout=10,
                ) as client:
                    await client.publish(self.state_topic, b"online", qos=1, retain=True)
                    self._client = client
                    self.connected.set()
                    backoff = BACKOFF_START_S
                    log.info("connected to %s", self.cfg.url)
                    # The message iterator ends with MqttError when the connection drops.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                was_connected = self._client is not None
                self._client = None
                self.connected.clear()
                delay = backoff * random.uniform(0.5, 1.5)
                log.warning("%s %s: %s; retrying in %.1f s",
                            "lost the broker" if was_connected else "cannot reach the broker",
                            self.cfg.url, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def say_offline(self) -> None:
        """On a clean stop the will is not sent, so say it ourselves."""
        if self._client is not None:
            try:
                await self._client.publish(self.state_topic, b"offline", qos=1, retain=True,
                                           timeout=2)
            except aiomqtt.MqttError:
                pass
