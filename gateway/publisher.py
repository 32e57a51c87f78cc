"""The MQTT side: one broker connection kept up, the spool drained into it, commands taken in.

- Connects with a last will (retained "offline" on ``<prefix>/gateway/<id>/state``), publishes
  retained "online", and subscribes to ``<prefix>/+/+/down`` after **every** (re)connect; the
  session is persistent, so the broker also keeps commands sent while the gateway was away.
- Reconnects with exponential backoff and jitter; a PUBACK that does not come within
  ``publish_timeout_s`` counts the connection as dead (a broker that accepts TCP but stalls).
- Spooled rows (``SpoolRow``, gateway/store.py) are published QoS 1 in id order and deleted
  only after their PUBACK. New rows come straight from the committer, as it committed them,
  while the publisher keeps up; after an outage, a restart or
  when the in-memory queue is full it reads them back from the spool in pages. On reconnect every
  row without PUBACK is sent again (at-least-once: a consumer can see a message twice after a
  broker restart or a gateway crash, never zero times).
- A periodic stats message is retained on ``<prefix>/gateway/<id>/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import deque
from typing import Callable

from gateway.config import MqttConfig
from gateway.metrics import Metrics
from gateway.mqtt import MqttClient, MqttError, Will
from gateway.store import GroupCommitter, SpoolRow
from protocol import topics

log = logging.getLogger("gateway.mqtt")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
QUEUE_MAX = 20_000      # rows held in memory for publishing; beyond, they are read back
PAGE = 2000


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if cfg.cert_file is not None:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    return ctx


class Publisher:
    def __init__(self, cfg: MqttConfig, gateway_id: str, committer: GroupCommitter,
                 metrics: Metrics, stats: Callable[[], dict]) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.state_topic = topics.gateway_state(cfg.prefix, gateway_id)
        self.stats_topic = topics.gateway_stats(cfg.prefix, gateway_id)
        self.down_filter = topics.down_filter(cfg.prefix)
        self.committer = committer
        self.metrics = metrics
        self.stats = stats
        self.on_command: Callable[[str, str, bytes, Callable[[], None]], None] | None = None
        self.connected = asyncio.Event()
        self.client: MqttClient | None = None
        self.queue: deque[SpoolRow] = deque()
        self.backlog_from: int | None = 0     # None: live; else read rows with id > this
        self._wake = asyncio.Event()
        self._tls = tls_context(cfg) if cfg.tls else None
        self._latency = metrics.histograms["publish_latency_seconds"]
        self._k_published = {leaf: metrics.key("frames_published_total", resource=leaf)
                             for leaf in topics.FRAME_LEAVES}
        self.last_error = ""
        self._stopping = False

    # --- rows in ----------------------------------------------------------------------------

    def committed(self, rows: list[SpoolRow]) -> None:
        """Rows that just became durable (a committed batch's, called after each commit)."""
        if self.backlog_from is not None:
            return      # they are in the spool; the backlog reader gets them in order
        if len(self.queue) + len(rows) > QUEUE_MAX:
            self.backlog_from = self.queue[-1].id if self.queue else rows[0].id - 1
            return
        self.queue.extend(rows)
        self._wake.set()

    # --- the connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with jittered exponential backoff. Never returns."""
        backoff = BACKOFF_START_S
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._session()
            except MqttError as exc:
                self.last_error = str(exc)
                was_connected = self.connected.is_set()
                self._lost()
                if self._stopping:
                    return
                if was_connected and time.monotonic() - started > 10:
                    backoff = BACKOFF_START_S
                delay = backoff * random.uniform(0.5, 1.5)
                log.warning("%s %s: %s; retrying in %.1f s",
                            "lost the broker" if was_connected else "cannot reach the broker",
                            self.cfg.url, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _lost(self) -> None:
        self.connected.clear()
        client, self.client = self.client, None
        if client is not None:
            client.take_inflight()
        # Everything not acknowledged is read back from the spool, in order.
        self.queue.clear()
        self.backlog_from = 0

    async def _session(self) -> None:
        cfg = self.cfg
        client = MqttClient(max_inflight=cfg.max_inflight)
        # Bound to this session's client: commands the broker kept for us arrive before the
        # subscription returns, and their PUBACK must go on the connection they came on.
        client.on_message = lambda *message: self._message(client, *message)
        await client.connect(cfg.host, cfg.port, "citytestbed-gw-%s" % self.gateway_id,
                             keepalive=cfg.keepalive_s, clean_session=False,
                             will=Will(self.state_topic, b"offline", 1, True),
                             username=cfg.username, password=cfg.password, tls=self._tls)
        client.publish(self.state_topic, b"online", retain=True)
        await client.subscribe([(self.down_filter, 1)])
        # Deletes of rows acknowledged in the last session go in before the spool is re-read.
        await self.committer.flush()
        self.client = client
        self.connected.set()
        self.metrics.inc("mqtt_connects_total")
        log.info("connected to %s; subscribed to %s", cfg.url, self.down_filter)
        tasks = [asyncio.create_task(self._pump(client), name="mqtt-pump"),
                 asyncio.create_task(self._watchdog(client), name="mqtt-watchdog")]
        if cfg.stats_interval_s:
            tasks.append(asyncio.create_task(self._stats(client), name="mqtt-stats"))
        try:
            await client.closed
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await task

    async def _pump(self, client: MqttClient) -> None:
        queue = self.queue
        while not client.closed.done():
            if not queue and self.backlog_from is not None:
                after = self.backlog_from
                rows = await self.committer.run_in_thread(self.committer.store.read_rows,
                                                          after, PAGE)
                if self.backlog_from != after:
                    continue        # the connection was lost and reset meanwhile
                if rows:
                    # How long a row waited in the spool is not publish latency: not measured.
                    queue.extend(row._replace(received_at=0.0) for row in rows)
                    self.backlog_from = rows[-1].id
                else:
                    self.backlog_from = None
                    log.info("spool caught up")
                continue
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if client.inflight >= client.max_inflight:
                client.window.clear()
                await client.window.wait()
                continue
            # Send what the window allows in one go, then let the loop breathe.
            room = client.max_inflight - client.inflight
            for _ in range(min(room, len(queue), 500)):
                row = queue.popleft()
                client.publish(row.topic, row.payload, retain=bool(row.retain),
                               on_ack=lambda row=row: self._acked(row))
            await asyncio.sleep(0)

    def _acked(self, row: SpoolRow) -> None:
        batch = self.committer.batch
        batch.deletes.append(row.id)
        self.committer.kick(urgent=False)
        key = self._k_published.get(topics.leaf(row.topic))
        if key is not None:
            self.metrics.counters[key] += 1
            if row.received_at:
                self._latency.observe(time.time() - row.received_at)

    async def _watchdog(self, client: MqttClient) -> None:
        while not client.closed.done():
            await asyncio.sleep(min(1.0, self.cfg.publish_timeout_s / 2))
            if client.oldest_inflight_age() > self.cfg.publish_timeout_s:
                client._fail(MqttError("no PUBACK within %.1f s" % self.cfg.publish_timeout_s))

    async def _stats(self, client: MqttClient) -> None:
        while not client.closed.done():
            try:
                client.publish(self.stats_topic, json.dumps(self.stats(), sort_keys=True,
                                                            separators=(",", ":")).encode(),
                               retain=True)
            except MqttError:
                return
            await asyncio.sleep(self.cfg.stats_interval_s)

    # --- commands in ----------------------------------------------------------------------

    def _message(self, client: MqttClient, topic: str, payload: bytes, qos: int,
                 pid: int) -> None:
        device = topics.parse_down(self.cfg.prefix, topic)
        if device is None or self.on_command is None:
            if qos:
                client.ack(pid)
            return

        def done() -> None:
            # Acknowledged only once the command is durable in the queue (or refused); on a
            # connection that has gone since, the broker sends it again (ack does nothing).
            if qos:
                client.ack(pid)

        self.on_command(device[0], device[1], payload, done)

    async def say_offline(self) -> None:
        """On a clean stop the will is not sent, so say it ourselves."""
        self._stopping = True
        client = self.client
        if client is not None and not client.closed.done():
            client.publish(self.state_topic, b"offline", retain=True)
            deadline = time.monotonic() + 2
            while client.inflight and time.monotonic() < deadline and not client.closed.done():
                await asyncio.sleep(0.02)
            await client.disconnect()
