"""The gateway service: OSCORE-verified CoAP in, durable spool, MQTT out, commands back.

    async with Gateway(config) as gw:
        await gw.stopped()

A reading is answered 2.04 only once it is durable in the spool (gateway/store.py); the spool
is published to MQTT with QoS 1 and a row is deleted only after its PUBACK (gateway/publisher.py).
The resources a node uses (docs/protocol.md §2): ``POST /u`` readings, ``POST /s`` status,
``GET /c`` its commands (observable), ``GET /f/<version>/<file>`` OTA files (block-wise).
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

from gateway import coap, outputs, senml
from gateway.config import GatewayConfig
from gateway.contexts import SPOOLED, ContextStore, DeviceInfo
from gateway.downlink import Downlink, outcome_payload
from gateway.endpoint import RETRY_AFTER_S, Endpoint, Exchange, Reply
from gateway.errors import FrameError, StartError
from gateway.files import FileCache
from gateway.metrics import Metrics, serve_http
from gateway.observe import Observations
from gateway.publisher import Publisher
from gateway.rules import RULE_REF, NeighbourRule
from gateway.store import Batch, GroupCommitter, Store
from protocol import topics
from protocol.vocabulary import CONTROL_NAMES
from registry.db import Registry

log = logging.getLogger("gateway")
# A presence record older than this (drained from the node's queue) boosts no neighbours.
PRESENCE_FRESH_S = 30.0

_LEAVES = topics.RESOURCE_LEAF
_CF_CBOR = [(coap.CONTENT_FORMAT, coap.uint(coap.CF_CBOR))]
_CF_CBOR_ENCODED = coap.encode_options(_CF_CBOR)
_WELL_KNOWN = (b'</u>;ct=112;title="readings",</s>;ct=112;title="status",'
               b'</c>;obs;ct=60;title="commands",</f>;title="OTA files"')
_SOCKET_BUFFER = 4 * 1024 * 1024


def _uint_cbor(n: int) -> bytes:
    if n < 24:
        return bytes((n,))
    if n < 256:
        return bytes((0x18, n))
    if n < 65536:
        return b"\x19" + n.to_bytes(2, "big")
    if n < 2 ** 32:
        return b"\x1a" + n.to_bytes(4, "big")
    return b"\x1b" + n.to_bytes(8, "big")


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
        self.files = FileCache(config.files_dir, config.files.source, config.files.block_size)
        self.rule = NeighbourRule(config.neighbours)
        self._rule_indexed = 0
        self.states: dict[str, outputs.DeviceState] = {}
        self._ha_announced: dict[str, frozenset[str]] = {}
        self._registry: Registry | None = None
        self._http: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._k_accepted: dict[tuple[str, str], tuple] = {}
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
        self.downlink = Downlink(cfg.downlink, self._spool_outcome, lambda: self.committer.batch,
                                 self.metrics)
        self.downlink.load(loaded.commands, loaded.command_ids)
        self._index_rule()
        self.publisher = Publisher(cfg.mqtt, cfg.id, self.committer, self.metrics, self.stats)
        self.publisher.on_command = self._command_in
        self.endpoint = Endpoint(self.contexts, self.committer, self.metrics, self._handle,
                                 self._unprotected)
        self.observations = Observations(self.endpoint, self.metrics,
                                         cfg.downlink.observe_refresh_s, self._envelope)
        self._register_gauges()
        self.endpoint.attach(self._socket(), loop)
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

    # --- requests -------------------------------------------------------------------------

    def _unprotected(self, msg: coap.Message) -> Reply:
        path = coap.uri_path(msg.options)
        if msg.code == coap.GET and path == (".well-known", "core"):
            self.metrics.inc("requests_served_total", resource="well-known")
            return Reply(coap.CONTENT, [(coap.CONTENT_FORMAT, coap.uint(coap.CF_LINK_FORMAT))],
                         _WELL_KNOWN)
        self.metrics.reject("unprotected", "request without OSCORE for /%s" % "/".join(path))
        return Reply(coap.UNAUTHORIZED, payload=b"OSCORE required")

    def _handle(self, ex: Exchange):
        path = ex.path
        who = ex.ctx.info.id
        if len(path) == 1 and path[0] in _LEAVES:
            if ex.code != coap.POST:
                self.metrics.reject("method_not_allowed", "/%s" % path[0], who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            return self._uplink(ex, _LEAVES[path[0]])
        if path == ("c",):
            if ex.code != coap.GET:
                self.metrics.reject("method_not_allowed", "/c", who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            self.metrics.inc("requests_served_total", resource="c")
            return self.observations.handle(ex)
        if path and path[0] == "f":
            if ex.code != coap.GET:
                self.metrics.reject("method_not_allowed", "/f", who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            reply = self.files.serve(path, ex.option(coap.BLOCK2))
            if reply.code == coap.CONTENT:
                self.metrics.inc("file_blocks_total")
                self.metrics.inc("requests_served_total", resource="f")
            else:
                self.metrics.reject("not_found" if reply.code == coap.NOT_FOUND
                                    else "bad_block", "/%s" % "/".join(path), who)
            return reply
        self.metrics.reject("not_found", "/%s" % "/".join(path), who)
        return Reply(coap.NOT_FOUND)

    def _uplink(self, ex: Exchange, leaf: str):
        ctx = ex.ctx
        info = ctx.info
        if ex.repeat and ex.entry[3] == SPOOLED:
            ex.spooled = True
            self.metrics.inc("duplicates_total")
            return lambda: self._changed(info)      # answered again, stored once
        cf = ex.option(coap.CONTENT_FORMAT)
        if cf is not None and coap.decode_uint(cf) != coap.CF_SENML_CBOR:
            self.metrics.reject("bad_content_format", str(coap.decode_uint(cf)), info.id)
            return Reply(coap.UNSUPPORTED_CONTENT_FORMAT)
        now = ex.received
        try:
            records = senml.decode(ex.payload, now)
        except FrameError as exc:
            self.metrics.reject(exc.reason, exc.detail, info.id)
            return Reply(coap.BAD_REQUEST, payload=exc.reason.encode())
        if self.store.full() and self.config.spool.when_full == "reject":
            self.metrics.reject("spool_full", "%d readings spooled" % self.store.rows, info.id)
            return Reply(coap.SERVICE_UNAVAILABLE, [(coap.MAX_AGE, coap.uint(RETRY_AFTER_S))])
        data = [r for r in records if r.name not in CONTROL_NAMES]
        if data:
            self.committer.spool(ctx.kid_int, now,
                                 topics.device(self.config.mqtt.prefix, info.site, info.id, leaf),
                                 senml.to_json(info.id, data))
            self._derived(info, data, leaf, now)
        if len(data) != len(records):
            for r in records:
                if r.name in CONTROL_NAMES:
                    self.downlink.answered(info, r.value, r.name == "ack", now)
        ex.spooled = True
        key = self._k_accepted.get((leaf, info.role))
        if key is None:
            key = self._k_accepted[(leaf, info.role)] = self.metrics.key(
                "frames_accepted_total", resource=leaf, role=info.role)
        self.metrics.counters[key] += 1
        if info.role == "lighting" and self.rule.cfg.enabled:
            for r in data:
                # Presence drained from a node's queue is history: only a fresh one boosts.
                if r.name == "pres" and r.value is True and r.time >= now - PRESENCE_FRESH_S:
                    self._boost_neighbours(info, now)
                    break
        return lambda: self._changed(info)

    def _derived(self, info: DeviceInfo, data: list[senml.Record], leaf: str,
                 now: float) -> None:
        """Device state, Home Assistant discovery, SensorThings: spooled with the frame."""
        out = self.config.outputs
        prefix = self.config.mqtt.prefix
        spool = self.committer.spool
        kid = int.from_bytes(info.kid, "big")
        if out.device_state:
            state = self.states.get(info.id)
            if state is None:
                state = self.states[info.id] = outputs.DeviceState()
            state.update(data, now)
            if leaf == topics.STATUS or \
                    now - state.last_sent >= self.config.mqtt.state_interval_s:
                state.last_sent = now
                spool(kid, now, topics.device(prefix, info.site, info.id, topics.STATE),
                      state.message(info), 1)
        if out.home_assistant:
            names = frozenset(r.name for r in data)
            seen = self._ha_announced.get(info.id, frozenset())
            if not names <= seen:
                for topic, payload in outputs.ha_discovery(prefix, out.home_assistant_prefix,
                                                           info, sorted(names - seen)):
                    spool(kid, now, topic, payload, 1)
                self._ha_announced[info.id] = seen | names
        if out.sensorthings:
            for topic, payload in outputs.sensorthings(out.sensorthings_prefix, info, data):
                spool(kid, now, topic, payload, 0)

    def _envelope(self, info: DeviceInfo, observing: bool) -> bytes:
        """The downlink envelope (protocol.md §2, §8): gateway time, commands, observe flag.
        Commands in it count as delivered."""
        now = time.time()
        cmds = self.downlink.for_envelope(info.id, now) if self.downlink.pending else []
        n = 1 + bool(cmds) + observing
        out = bytes((0xA0 | n,)) + b"\x01" + _uint_cbor(int(now))
        if cmds:
            out += b"\x02" + bytes((0x80 | len(cmds),)) + b"".join(c.wire for c in cmds)
            self.downlink.delivered(info, cmds, now)
            self.committer.kick(urgent=False)
        if observing:
            out += b"\x03\xf5"
        return out

    def _changed(self, info: DeviceInfo) -> Reply:
        observing = self.observations.observing(info.id) if self.observations.by_device \
            else False
        return Reply(coap.CHANGED, _CF_CBOR, self._envelope(info, observing),
                     encoded_options=_CF_CBOR_ENCODED)

    def _committed(self, batch: Batch) -> None:
        """A batch with spool rows is durable: they go to the publisher as they are."""
        self.publisher.committed(batch.rows)
        self.metrics.inc("state_commits_total")
        self.metrics.histograms["commit_seconds"].observe(self.committer.last_commit_s)

    # --- commands -------------------------------------------------------------------------

    def _spool_outcome(self, site: str, device: str, payload: bytes) -> None:
        ctx = self.contexts.by_id.get(device)
        self.committer.spool(ctx.kid_int if ctx else 0, time.time(),
                             topics.device(self.config.mqtt.prefix, site, device, topics.OUTCOME),
                             payload)

    def _command_in(self, site: str, device: str, payload: bytes, done) -> None:
        now = time.time()
        ctx = self.contexts.by_id.get(device)
        if ctx is None or ctx.info.site != site:
            self._spool_outcome(site, device, outcome_payload(
                device, None, "refused", now, reason="no device %s at site %s in the registry"
                % (device, site)))
        else:
            cmd = self.downlink.submit(ctx.info, payload, now)
            if cmd is not None:
                self.observations.push(ctx.info)
        self.endpoint.after_commit(lambda ok: ok and done())

    def _index_rule(self) -> None:
        self.rule.index([c.info for c in self.contexts.by_kid.values()])
        self._rule_indexed = len(self.contexts.by_kid)

    def _boost_neighbours(self, info: DeviceInfo, now: float) -> None:
        nb = self.config.neighbours
        if len(self.contexts.by_kid) != self._rule_indexed:
            self._index_rule()  # a lamp made contact since: it may be a neighbour
        for lamp in self.rule.on_presence(info, now):
            cmd = self.downlink.queue(lamp, "boost", {"level": nb.level, "hold_s": nb.hold_s},
                                      now, float(nb.hold_s), RULE_REF, supersede_ref=RULE_REF)
            if cmd is not None:
                self.metrics.inc("neighbour_boosts_total")
                self.observations.push(lamp)

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
                if self.downlink.pending and self.downlink.expire(now, self._device_info):
                    self.committer.kick(urgent=False)
                if self.observations.by_device:
                    self.observations.refresh()
                if tick % 5 == 0:
                    await self._trim_spool(now)
                if tick % 30 == 0:
                    await self._refresh_registry(full=tick % 600 == 0)
            except Exception:
                log.exception("housekeeping failed; continuing")

    def _device_info(self, device: str) -> DeviceInfo | None:
        ctx = self.contexts.by_id.get(device)
        return ctx.info if ctx is not None else None

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
            self._index_rule()
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
