"""The gateway service: OSCORE-verified CoAP in, durable spool, MQTT out, commands back.

    async with Gateway(config) as gw:
        await gw.stopped()

This module only wires the parts and runs the periodic work; each step of the path is a module
of its own (docs/gateway.md, "What happens to a frame"):

- gateway/endpoint.py: datagrams in, the CoAP message layer, OSCORE, durable-then-send;
- gateway/resources.py: the request dispatch to ``/u``, ``/s``, ``/c``, ``/f``;
- gateway/uplink.py: the uplink rules (decode, spool, derived outputs, acks, neighbour boosts);
- gateway/store.py: the state file and the group commit (a 2.04 only once the reading is
  durable);
- gateway/publisher.py: the committed spool rows to MQTT (a row deleted only after its PUBACK),
  commands from MQTT in;
- gateway/downlink.py: the command queue and the downlink envelope;
- gateway/observe.py: observations of ``/c`` and their notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import sqlite3
import time

from sqlalchemy.exc import SQLAlchemyError

from gateway.config import GatewayConfig
from gateway.contexts import ContextStore
from gateway.downlink import Downlink
from gateway.endpoint import Endpoint
from gateway.errors import StartError
from gateway.files import FileCache
from gateway.metrics import Metrics, serve_http
from gateway.observe import Observations
from gateway.publisher import Publisher
from gateway.resources import Resources
from gateway.store import Batch, GroupCommitter, Store
from gateway.uplink import Uplink
from registry.db import Registry

log = logging.getLogger("gateway")

_SOCKET_BUFFER = 4 * 1024 * 1024


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started = time.time()
        self.store = Store(config.state_dir / "gateway.sqlite", config.spool)
        self.committer: GroupCommitter | None = None
        self.contexts: ContextStore | None = None
        self.endpoint: Endpoint | None = None
        self.publisher: Publisher | None = None
        self.downlink: Downlink | None = None
        self.observations: Observations | None = None
        self.uplink: Uplink | None = None
        self.resources: Resources | None = None
        self.files = FileCache(config.files_dir, config.files.source, config.files.block_size)
        self._registry: Registry | None = None
        self._http: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._spool_full_since: float | None = None

    # --- start and stop -------------------------------------------------------------------

    async def __aenter__(self) -> "Gateway":
        cfg = self.config
        loop = asyncio.get_running_loop()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            loaded = await loop.run_in_executor(None, self.store.open)
        except (sqlite3.Error, OSError) as exc:
            raise StartError("cannot open the state database %s: %s (is [gateway] state_dir "
                             "writable by this user?)" % (self.store.path, exc)) from None
        self.committer = GroupCommitter(self.store,
                                        gather_s=cfg.spool.commit_delay_ms / 1000)
        self.committer.on_committed = self._committed
        try:
            self._registry = Registry(cfg.registry.url)
            self.contexts = ContextStore(self._registry, self.metrics,
                                         miss_interval_s=cfg.registry.refresh_interval_s)
            count = await loop.run_in_executor(None, self.contexts.load_all, loaded.replay,
                                               loaded.marks)
        except SQLAlchemyError as exc:
            raise StartError("cannot read the registry %s: %s" % (
                cfg.registry.shown, str(exc).splitlines()[0])) from None
        # A reading: endpoint -> resources -> uplink -> the committer's batch -> (durable) the
        # 2.04 back through the endpoint, the rows to the publisher. A command: publisher ->
        # downlink -> the batch -> (durable) PUBACK, a notification through observe.
        self.downlink = Downlink(cfg.downlink, self.committer, cfg.mqtt.prefix, self.contexts,
                                 self.metrics)
        self.downlink.load(loaded.commands, loaded.command_ids)
        self.publisher = Publisher(cfg.mqtt, cfg.id, self.committer, self.metrics, self.stats)
        self.publisher.on_command = self.downlink.command_in
        self.endpoint = Endpoint(self.contexts, self.committer, self.metrics)
        self.observations = Observations(self.endpoint, self.metrics,
                                         cfg.downlink.observe_refresh_s, self.downlink.envelope)
        self.downlink.on_queued = self.observations.push
        self.uplink = Uplink(cfg, self.committer, self.contexts, self.downlink,
                             self.observations, self.metrics)
        self.uplink.index_rule()
        self.resources = Resources(self.uplink, self.observations, self.files, self.metrics)
        self._register_gauges()
        self.endpoint.attach(self._socket(), loop, self.resources.handle,
                             self.resources.unprotected)
        self._tasks.append(asyncio.create_task(self.publisher.run(), name="mqtt"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if cfg.files.source is not None:
            self._tasks.append(asyncio.create_task(self._sync_files(), name="files"))
        if cfg.http.port:
            self._http = await serve_http(self.metrics, cfg.http.bind, cfg.http.port,
                                          self.health)
        log.info("gateway %s listening on coap://%s:%d with %d devices from %s; spool holds "
                 "%d readings", cfg.id, cfg.coap.bind, cfg.coap.port, count, cfg.registry.shown,
                 loaded.spool_rows)
        return self

    def _socket(self) -> socket.socket:
        cfg = self.config.coap
        family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        if family == socket.AF_INET6 and cfg.bind == "::":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((cfg.bind, cfg.port))
        sock.setblocking(False)
        return sock

    async def __aexit__(self, *exc_info) -> None:
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.detach(asyncio.get_running_loop())
        if self._http is not None:
            self._http.close()
        if self.committer is not None:
            await self.committer.flush()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.publisher.say_offline()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.committer is not None:
            await self.committer.flush()
            self.committer.close()
        self.store.close()
        log.info("gateway %s stopped", self.config.id)

    def stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    def _committed(self, batch: Batch) -> None:
        """A batch with spool rows is durable: they go to the publisher as they are."""
        self.publisher.committed(batch.rows)
        self.metrics.inc("state_commits_total")
        self.metrics.histograms["commit_seconds"].observe(self.committer.last_commit_s)

    # --- periodic work --------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Every second: expire commands, refresh observers, watch the spool; every 30 s the
        registry is asked for new devices, every 10 min for moved ones."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                now = time.time()
                if self.downlink.pending and self.downlink.expire(now):
                    self.committer.kick(urgent=False)
                if self.observations.by_device:
                    self.observations.refresh()
                if tick % 5 == 0:
                    await self._trim_spool(now)
                if tick % 30 == 0:
                    await self._refresh_registry(full=tick % 600 == 0)
            except Exception:
                log.exception("housekeeping failed; continuing")

    async def _trim_spool(self, now: float) -> None:
        store = self.store
        make_room = self.config.spool.when_full == "drop_oldest"
        by_age, by_size = await self.committer.run_in_thread(store.trim, now, make_room)
        for reason, n in (("age", by_age), ("full", by_size)):
            if n:
                self.metrics.inc("spool_dropped_total", n, reason=reason)
                log.warning("spool: dropped %d unpublished readings (%s)", n,
                            "older than max_age_s" if reason == "age" else "spool full")
        if store.full():
            if self._spool_full_since is None:
                self._spool_full_since = now
                log.warning("spool full (%d readings, %.1f MB): %s", store.rows,
                            store.bytes / 1e6, "nodes get 5.03 and keep their readings"
                            if not make_room else "the oldest readings make room")
        else:
            self._spool_full_since = None
        await self.committer.run_in_thread(store.refresh_oldest)

    async def _refresh_registry(self, *, full: bool) -> None:
        loop = asyncio.get_running_loop()
        registry = self._registry
        new = await loop.run_in_executor(None, registry.changed_since, self.contexts.max_kid)
        added = [self.contexts.add(d) for d in new if d.kid_bytes not in self.contexts.by_kid]
        if full:
            devices = await loop.run_in_executor(None, registry.devices)
            self.contexts.refresh_from(devices)
        if added or full:
            self.uplink.index_rule()
        if added:
            log.info("registry: %d new device(s) loaded", len(added))

    async def _sync_files(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.files.sync)
            except Exception as exc:     # the next round tries again; the cache keeps serving
                log.warning("release files: sync from the fleet's store failed: %s", exc)
            await asyncio.sleep(self.config.files.sync_interval_s)

    # --- observability --------------------------------------------------------------------

    def _register_gauges(self) -> None:
        g = self.metrics.gauges
        store = self.store
        g["devices_known"] = self.contexts.roles
        g["mqtt_connected"] = lambda: int(self.publisher.connected.is_set())
        g["mqtt_inflight"] = lambda: self.publisher.client.inflight if self.publisher.client \
            else 0
        g["spool_rows"] = lambda: store.rows
        g["spool_bytes"] = lambda: store.bytes
        g["spool_oldest_age_seconds"] = lambda: round(time.time() - store.oldest_at, 3) \
            if store.oldest_at else 0
        g["spool_full"] = lambda: int(store.full())
        g["commands_pending"] = lambda: self.downlink.size()
        g["observers"] = lambda: len(self.observations)
        g["resident_memory_bytes"] = _rss_bytes
        g["uptime_seconds"] = lambda: round(time.time() - self.started, 1)

    def stats(self) -> dict:
        m = self.metrics
        store = self.store
        return {
            "t": round(time.time(), 3),
            "uptime_s": round(time.time() - self.started, 1),
            "frames_in": m.total("frames_in_total"),
            "accepted": m.by_label("frames_accepted_total", "role"),
            "published": m.total("frames_published_total"),
            "duplicates": m.total("duplicates_total"),
            "rejected": m.by_label("frames_rejected_total", "reason"),
            "spool": {"rows": store.rows, "bytes": store.bytes,
                      "oldest_age_s": round(time.time() - store.oldest_at, 1)
                      if store.oldest_at else 0,
                      "dropped": m.by_label("spool_dropped_total", "reason")},
            "devices": {dict(k)["role"]: v for k, v in self.contexts.roles().items()},
            "commands_pending": self.downlink.size(),
            "observers": len(self.observations),
        }

    def health(self) -> tuple[bool, dict]:
        """Healthy while the broker connection is up and the spool accepts readings."""
        store = self.store
        connected = self.publisher.connected.is_set()
        full = store.full() and self.config.spool.when_full == "reject"
        detail = {"mqtt": "connected" if connected else "disconnected",
                  "spool_rows": store.rows,
                  "spool_oldest_age_s": round(time.time() - store.oldest_at, 1)
                  if store.oldest_at else 0,
                  "spool": "full" if full else "ok",
                  "devices": len(self.contexts)}
        if not connected and self.publisher.last_error:
            detail["mqtt_error"] = self.publisher.last_error
        return connected and not full, detail


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
